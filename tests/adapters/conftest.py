"""Shared settings for the adapter tests (tiny widths, small bags)."""
from __future__ import annotations

import io

import torch

STAGE = dict(heads=2, region_num=2, min_region_tokens=2, crmsa_heads=2)


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
