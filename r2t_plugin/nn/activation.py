"""Activation modules by name, as the configuration files and constructors spell them."""
from __future__ import annotations

from torch import nn

__all__ = ["make_activation"]

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    """``"relu"``, ``"gelu"`` or ``"tanh"`` as a module."""
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTS)}")
    return _ACTS[name]()
