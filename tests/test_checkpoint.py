"""checkpoint.py: last.pt restores every random state a resumed run draws from."""
from __future__ import annotations

import torch
from torch import nn

from r2t_plugin.checkpoint import Progress, load_resume, save_resume


def test_resume_restores_the_cuda_generators_too(tmp_path, monkeypatch):
    """Dropout and DTFD's pseudo-bags draw from the GPU's generator on CUDA: a resumed run
    continues it (checked with stand-ins for the CUDA calls; no GPU needed)."""
    gpu = {"state": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [gpu["state"].clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: gpu.update(state=states[0].clone()))
    model = nn.Linear(2, 1)
    path = tmp_path / "last.pt"
    save_resume(path, {"model": model}, Progress(next_epoch=3), {"run": 1})
    gpu["state"] = torch.tensor([9, 9, 9], dtype=torch.uint8)  # the generator moved on
    cpu_before = torch.get_rng_state()
    torch.rand(5)
    progress = load_resume(path, {"model": model}, {"run": 1})
    assert progress.next_epoch == 3
    assert torch.equal(gpu["state"], torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert torch.equal(torch.get_rng_state(), cpu_before)
