"""Region partitions (R2T_SPEC.md §2 and §7) as gather indices.

A partition of a batch is a :class:`Regions`: R regions of P slots each, every slot either
a token of the flattened (B * N) batch or empty. Layers gather tokens into (R, P, C),
attend inside each region, and scatter the result back. One structure serves every mode:

- official (§2): the file-order grid with its zero padding; pads are real zero tokens that
  take part in attention (``active`` is all True) but are never scattered back;
- default (§7): the same grid (``layout="sequence"``) or windows over the patch grid
  (``layout="coords"``); empty slots are inactive (never keys, zero queries) and only
  regions holding at least one instance exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import grid_cells, infer_patch_size

__all__ = ["Regions", "official_regions", "sequence_regions", "coords_regions", "RegionError"]


class RegionError(ValueError):
    """Instances that cannot be placed into regions (e.g. two in one grid cell)."""


@dataclass
class Regions:
    """A partition of a (B, N) batch into R regions of P slots.

    ``index`` (R, P) long into the flattened batch (B * N); the value B * N marks a slot
    with no instance (it gathers a zero row). ``active`` (R, P) bool: slots that take part
    in attention. ``bag`` (R,) long: the bag each region belongs to. ``n_tokens`` = B * N.
    """

    index: Tensor
    active: Tensor
    bag: Tensor
    n_tokens: int

    @property
    def n_regions(self) -> int:
        return int(self.index.shape[0])

    @property
    def size(self) -> int:
        return int(self.index.shape[1])

    @property
    def real(self) -> Tensor:
        """(R, P) slots that hold an instance of the batch."""
        return self.index < self.n_tokens

    def gather(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (R, P, C); slots without an instance are zero."""
        flat = x.reshape(-1, x.shape[-1])
        flat = torch.cat([flat, flat.new_zeros(1, flat.shape[-1])], dim=0)
        return flat[self.index]

    def scatter(self, y: Tensor, shape: torch.Size) -> Tensor:
        """(R, P, C) -> (B, N, C): each instance's slot is copied back, the rest is zero."""
        c = y.shape[-1]
        real = self.real
        out = y.new_zeros(self.n_tokens, c)
        out = out.index_copy(0, self.index[real], y[real])
        return out.reshape(*shape[:-1], c)


def _grid_side(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def _build(parts: list[tuple[Tensor, Tensor, Tensor, int, int]], n_tokens: int,
           active_all: bool, device) -> Regions:
    """Assemble per-bag (token index, region id, slot, n regions, slots) into one Regions.

    Bags may have regions of different sizes; smaller ones get trailing empty slots, which
    changes nothing (empty slots are zero queries and never keys).
    """
    size = max(p[4] for p in parts)
    idx_parts, bag_parts = [], []
    for b, (tok, reg, slot, n_reg, _) in enumerate(parts):
        index = torch.full((n_reg, size), n_tokens, dtype=torch.long, device=device)
        index[reg, slot] = tok
        idx_parts.append(index)
        bag_parts.append(torch.full((n_reg,), b, dtype=torch.long, device=device))
    index = torch.cat(idx_parts)
    active = torch.ones_like(index, dtype=torch.bool) if active_all else index < n_tokens
    return Regions(index=index, active=active, bag=torch.cat(bag_parts), n_tokens=n_tokens)


def _grid(t: Tensor, side: int, window: int) -> tuple[Tensor, Tensor, int]:
    """Region id and slot of file positions ``t`` on a side x side grid of window blocks."""
    row, col = t // side, t % side
    per_side = side // window
    reg = (row // window) * per_side + (col // window)
    slot = (row % window) * window + (col % window)
    return reg, slot, per_side * per_side


def _compact(tok: Tensor, reg: Tensor, slot: Tensor, size: int) -> tuple:
    """Keep only regions that hold an instance, renumbered in their original order."""
    used, new_reg = torch.unique(reg, sorted=True, return_inverse=True)
    return tok, new_reg, slot, int(used.numel()), size


def official_regions(b: int, n: int, region_num: int, device=None) -> Regions:
    """The reference partition (§2): L x L regions over a zero-padded file-order grid.

    The H*H - N pads are zero tokens that take part in attention like any other.
    """
    side = math.ceil(_grid_side(n) / region_num) * region_num
    window = side // region_num
    t = torch.arange(side * side, device=device)
    reg, slot, n_reg = _grid(t, side, window)
    parts = []
    for i in range(b):
        tok = torch.where(t < n, t + i * n, torch.full_like(t, b * n))
        parts.append((tok, reg, slot, n_reg, window * window))
    return _build(parts, b * n, active_all=True, device=device)


def _min_side(min_region_tokens: int) -> int:
    return max(1, math.ceil(math.sqrt(max(1, min_region_tokens))))


def sequence_regions(mask: Tensor, *, region_num: int | None, region_size: int | None,
                     min_region_tokens: int) -> Regions:
    """Default-mode file-order grid (§7): real instances only, empty slots inactive.

    With ``region_num`` L the grid side is rounded up to a multiple of L (as in the
    paper); with ``region_size`` S each region is S x S and their number grows with N.
    Regions never have fewer than ``min_region_tokens`` slots unless the whole bag is
    smaller; regions without an instance are dropped.
    """
    b, n = mask.shape
    device = mask.device
    m_min = _min_side(min_region_tokens)
    lengths = mask.sum(dim=1).tolist()
    parts = []
    for i in range(b):
        nb = int(lengths[i])
        positions = torch.nonzero(mask[i]).flatten() + i * n
        h0 = _grid_side(nb)
        if region_size is not None:
            window = max(region_size, m_min)
            side = math.ceil(h0 / window) * window
        else:
            per_side = max(1, min(region_num, h0 // m_min))
            side = math.ceil(h0 / per_side) * per_side
            window = side // per_side
        reg, slot, _ = _grid(torch.arange(nb, device=device), side, window)
        parts.append(_compact(positions, reg, slot, window * window))
    return _build(parts, b * n, active_all=False, device=device)


def coords_regions(mask: Tensor, coords: Tensor, patch_size: Tensor | None, *,
                   region_num: int | None, region_size: int | None, min_region_tokens: int,
                   bag_names: list[str] | None = None) -> Regions:
    """Default-mode regions from patch coordinates (§7).

    Grid cell = floor((coord - bag minimum) / patch_size), row from y, column from x.
    Windows of S x S cells (with ``region_num`` L: S = ceil(max(grid h, grid w) / L));
    only windows holding an instance exist; slots row-major inside a window.
    """
    b, n = mask.shape
    device = mask.device
    m_min = _min_side(min_region_tokens)
    parts = []
    for i in range(b):
        positions = torch.nonzero(mask[i]).flatten()
        c = coords[i][positions]
        ps = None if patch_size is None else float(patch_size[i])
        if ps is None:
            ps = infer_patch_size(c)
        cells = grid_cells(c, ps)
        gh, gw = int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1
        key = cells[:, 0] * gw + cells[:, 1]
        if torch.unique(key).numel() != key.numel():
            name = bag_names[i] if bag_names else f"bag {i} of the batch"
            dup = _first_duplicate(key, c)
            raise RegionError(
                f"{name}: two instances fall into one grid cell ({dup}) with patch_size {ps:g}; "
                "check the coordinates and the patch size (coords must be level-0 top-left corners)"
            )
        if region_size is not None:
            s = max(region_size, m_min)
        else:
            s = max(math.ceil(max(gh, gw) / region_num), m_min)
        per_w = math.ceil(gw / s)
        reg = (cells[:, 0] // s) * per_w + (cells[:, 1] // s)
        slot = (cells[:, 0] % s) * s + (cells[:, 1] % s)
        parts.append(_compact(positions + i * n, reg, slot, s * s))
    return _build(parts, b * n, active_all=False, device=device)


def _first_duplicate(key: Tensor, coords: Tensor) -> str:
    order = torch.argsort(key, stable=True)
    k = key[order]
    same = torch.nonzero(k[1:] == k[:-1]).flatten()
    a, b = int(order[same[0]]), int(order[same[0] + 1])
    return (f"instances {a} at {coords[a].tolist()} and {b} at {coords[b].tolist()}")
