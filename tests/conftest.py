"""Suite-wide settings: tests use tiny tensors, where extra threads only add overhead."""
import torch

torch.set_num_threads(1)
