"""Shared settings for the adapter tests (tiny widths, small bags)."""
from __future__ import annotations

import io

import pytest
import torch

STAGE = dict(heads=2, region_num=2, min_region_tokens=2, crmsa_heads=2)
# the paper's replacing stage: unlike the default residual one (zero at the start) it changes
# the outputs from the first call, so tests of the stage's own computation (padding, hooks,
# gradients, state_dict) can fail
REPLACING = dict(STAGE, residual=False)


def roundtrip(module: torch.nn.Module) -> dict:
    """The module's state_dict through torch.save / torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def grads_reach(wrapped: torch.nn.Module) -> tuple[bool, bool]:
    def hit(ps):
        return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in ps)

    return hit(wrapped.stage.parameters()), hit(wrapped.inner.parameters())


@pytest.fixture
def batch():
    """Two bags of 9 and 5 instances (D = 12) padded to 9, on a 3-column grid of 256 px."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 12)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    coords = (torch.stack([torch.arange(9) % 3, torch.arange(9) // 3], 1) * 256.0).expand(2, -1, -1)
    return x, mask, coords
