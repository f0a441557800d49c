"""The base of every built-in aggregator, R2TABMIL included: one input normalisation.

The aggregator contract (README, "Feature-bag contract"): ``agg(x | BagBatch, mask=None,
coords=None) -> {"logits": (B, n_out), "instance_scores": (B, N) or (B, n_branches, N), ...}``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..bag import BagBatch

__all__ = ["Aggregator"]


class Aggregator(nn.Module):
    """Base class: :meth:`forward` normalises the inputs once, subclasses implement
    :meth:`aggregate` on a padded batch.

    ``forward(x, mask=None, coords=None, patch_size=None, label=None)``: ``x`` a (B, N, D)
    or (N, D) tensor or a :class:`~r2t_plugin.bag.BagBatch` (which brings its own mask,
    coordinates and grid steps); ``mask`` (B, N) bool, True = real instance; ``coords``
    (B, N, 2) level-0 pixels; ``patch_size`` a number or (B,): the side of a grid cell (the
    patch size, or the stride of overlapping patches); ``label`` (B,), used only by
    models with an auxiliary loss (returned as ``"aux_loss"``, to be added to the bag loss).
    Returns a dict with ``"logits"`` (B, n_out) and ``"instance_scores"`` (B, N) or
    (B, n_branches, N); padded positions score 0. A single (N, D) bag gives B = 1. Every
    tensor made here is on the features' device.

    Every built-in starts with a ``Linear → activation → Dropout`` projection of the
    instances (``self.proj``; CLAM: ``attention_net[:3]``), where
    :func:`r2t_plugin.with_r2t` inserts the stage by default.

    Args:
        in_dim: width D of the instance features.
        n_out: number of outputs (classes, or hazard bins for survival).
    """

    def __init__(self, in_dim: int, n_out: int) -> None:
        super().__init__()
        if in_dim < 1 or n_out < 1:
            raise ValueError(f"in_dim and n_out must be >= 1, got {in_dim} and {n_out}")
        self.in_dim, self.n_out = in_dim, n_out

    def forward(self, x: Tensor | BagBatch, mask: Tensor | None = None, coords: Tensor | None = None,
                patch_size: float | Tensor | None = None, label: Tensor | None = None) -> dict[str, Tensor]:
        if isinstance(x, BagBatch):
            x, mask, coords, patch_size = x.features, x.mask, x.coords, x.grid_step
        if x.dim() == 2:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
            coords = None if coords is None else coords.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.in_dim or x.shape[1] == 0:
            raise ValueError(f"{type(self).__name__} expects features (B, N, {self.in_dim}) or "
                             f"(N, {self.in_dim}) with N >= 1, got shape {tuple(x.shape)}")
        padded = mask is not None
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        elif mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        elif not bool(mask.any(dim=1).all()):
            raise ValueError("a bag in the batch has no real instance (mask all False)")
        if coords is not None and coords.shape[:2] != x.shape[:2]:
            raise ValueError(f"coords must be {tuple(x.shape[:2]) + (2,)}, got {tuple(coords.shape)}")
        if label is not None:
            label = torch.as_tensor(label, device=x.device).reshape(-1).long()
            if label.shape[0] != x.shape[0]:
                raise ValueError(f"label must have one entry per bag ({x.shape[0]}), got {tuple(label.shape)}")
        if isinstance(patch_size, (int, float)):
            patch_size = torch.full((x.shape[0],), float(patch_size), device=x.device)
        elif patch_size is not None:
            patch_size = patch_size.to(x.device)
        return self.aggregate(x, mask, coords=coords, patch_size=patch_size, label=label, padded=padded)

    def aggregate(self, x: Tensor, mask: Tensor, *, coords: Tensor | None, patch_size: Tensor | None,
                  label: Tensor | None, padded: bool) -> dict[str, Tensor]:
        """The model on ``x`` (B, N, D) with ``mask`` (B, N) bool (never None here).

        ``coords`` (B, N, 2) or None, ``patch_size`` (B,) or None, ``label`` (B,) long or
        None; ``padded`` is False when the caller gave no mask (every position is real),
        which spares R²T a device-to-host transfer.
        """
        raise NotImplementedError
