"""The instance projection every built-in aggregator starts with."""
from __future__ import annotations

from torch import nn

from .activation import make_activation

__all__ = ["projection"]


def projection(in_dim: int, dim: int, act: str = "relu", dropout: float = 0.25) -> nn.Sequential:
    """``Linear(in_dim, dim) → activation → Dropout``: the block after which
    :func:`r2t_plugin.with_r2t` inserts R²T by default (as in the R²T paper's ABMIL)."""
    return nn.Sequential(nn.Linear(in_dim, dim), make_activation(act), nn.Dropout(dropout))
