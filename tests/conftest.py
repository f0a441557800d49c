"""Suite-wide settings (the only place that sets them).

Tests use tiny tensors, where extra threads only add overhead and contention. Helpers
shared by the tests of one folder live in that folder's ``conftest.py`` (or a sibling
module) and are imported relatively (``from .conftest import ...``), which pytest's
``--import-mode=importlib`` supports from pytest 8.2 on; no test touches ``sys.path``.
"""
import torch

torch.set_num_threads(1)
