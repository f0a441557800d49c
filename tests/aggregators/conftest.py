"""Small bags shared by the aggregator tests."""
from __future__ import annotations

import pytest
import torch

D = 16


def grid_coords(n: int, side: int = 6, patch: float = 256.0) -> torch.Tensor:
    idx = torch.arange(n)
    return torch.stack([idx % side, idx // side], dim=1).float() * patch


@pytest.fixture
def padded():
    """Two bags (13 and 7 instances) padded to 13, with coords; and the short bag alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, D, generator=g)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 7:] = False
    x[1, 7:] = 0
    coords = torch.stack([grid_coords(13), grid_coords(13)])
    return x, mask, coords
