"""Built-in plugin: the ``"r2t"`` and ``"identity"`` stages and the ``"r2t_abmil"`` aggregator."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..hookspecs import Registrar, hookimpl
from .model import R2TABMIL
from .stage import R2T

__all__ = ["IdentityStage", "r2t_stage", "identity_stage", "default_width", "MAX_DEFAULT_WIDTH"]

# the widest stage with_r2t builds unless told a width (see r2t_stage)
MAX_DEFAULT_WIDTH = 128


class IdentityStage(nn.Module):
    """The stage contract with no re-embedding: returns ``x`` unchanged."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None,
                patch_size: Any = None) -> Tensor:
        return x


def identity_stage(in_dim: int | None, out_dim: int | None = None) -> IdentityStage:
    """Identity; ``out_dim`` must equal ``in_dim`` when both are given."""
    if in_dim is not None and out_dim is not None and in_dim != out_dim:
        raise ValueError(f"the identity stage cannot change the width ({in_dim} -> {out_dim})")
    return IdentityStage(in_dim if in_dim is not None else out_dim)


def default_width(in_dim: int | None, out_dim: int | None = None) -> int:
    """The stage's working width when none is given: ``min(in_dim, MAX_DEFAULT_WIDTH)``
    (``out_dim``, then 512, without ``in_dim``)."""
    if in_dim is None:
        return out_dim or 512
    return min(in_dim, MAX_DEFAULT_WIDTH)


def r2t_stage(in_dim: int | None, out_dim: int | None = None, *, dim: int | None = None,
              **options: Any) -> R2T:
    """An :class:`R2T` reading width ``in_dim`` and writing ``out_dim`` (default: ``dim``).

    ``dim`` (the stage's working width) defaults to :func:`default_width`: the width it is
    given (after an aggregator's own projection, as in the paper; no input projection) up to
    128; a wider aggregator gets a 128-wide stage that projects in and back out, so that the
    stage does not dwarf the aggregator (at 512 it would add about 2.1M parameters to a
    116k-parameter ABMIL). With ``dim != in_dim`` the stage projects in first.
    """
    if dim is None:
        dim = default_width(in_dim, out_dim)
    return R2T(None if in_dim in (None, dim) else in_dim, dim,
               None if out_dim in (None, dim) else out_dim, **options)


@hookimpl
def r2t_register_stages(registry: Registrar) -> None:
    """``"r2t"`` and ``"identity"``."""
    registry.add("r2t", r2t_stage)
    registry.add("identity", identity_stage)


@hookimpl
def r2t_register_aggregators(registry: Registrar) -> None:
    """``"r2t_abmil"``: the paper's R²T-MIL."""
    registry.add("r2t_abmil", R2TABMIL)
