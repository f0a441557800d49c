"""Region partitions of R²T (Tang et al., CVPR 2024) as gather indices.

A partition of a batch is a :class:`Regions`. The batch's real instances are numbered
0..T-1 in row-major (bag, position) order (the "tokens"); R regions of up to P slots
hold them, every slot either a token or empty. Layers gather tokens into slots, attend
inside each region and gather the result back (both directions are row gathers, since
every token sits in exactly one slot). One structure serves every mode:

- official: the reference implementation's file-order grid with its zero padding; pads are real zero tokens that
  take part in attention (``active`` is all True) but are never gathered back;
- default (README, "The R²T stage"): the same grid (``layout="sequence"``) or windows over the patch grid
  (``layout="coords"``); empty slots are inactive (never keys, zero queries) and only
  regions holding at least one instance exist.

Regions of one bag share a size; a batch of bags with different sizes is cut into
``groups`` of consecutive regions of one size, so small bags never pay for the slots of
large ones. Building a partition needs at most one device-to-host transfer (none for the
official grid or an unmasked sequence batch); using it needs none.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import batched_grid_cells, infer_patch_sizes

__all__ = ["Regions", "Chunk", "official_regions", "sequence_regions", "coords_regions", "RegionError"]

_KEY = 1 << 40  # bag stride of the window / cell keys


class RegionError(ValueError):
    """Instances that cannot be placed into regions (e.g. two in one grid cell)."""


class Chunk(NamedTuple):
    """Consecutive regions of one size, attended together: ``idx`` (n * p,) the token of
    each slot (T = empty), ``active`` (n * p,) bool, ``n`` regions of ``p`` slots, ``pos``
    the positions in the chunk of the slots holding a token (None: all of them), ``tok``
    those tokens, ``first`` the chunk's first region."""

    idx: Tensor
    active: Tensor
    n: int
    p: int
    pos: Tensor | None
    tok: Tensor
    first: int


@dataclass(eq=False)
class Regions:
    """A partition of a batch's T tokens into R regions of at most P slots.

    ``index`` (R, P) long into the tokens; the value T (``n_tokens``) marks an empty slot.
    ``active`` (R, P) bool: slots that take part in attention. ``bag`` (R,) long: the bag
    of each region (regions are ordered by bag). ``tokens`` (T,) long: the position of each
    token in the flattened (B * N) batch, or None when every position is a token.
    ``groups``: (first region, end, slots used) for runs of regions of one size.
    ``bag_regions``: the number of regions of each bag. ``pads_active``: the official
    mode, where every slot is active and an empty slot is a zero token (known on the host).
    ``fill``: the number of tokens in each region (known on the host; lets the layers skip
    empty slots wherever their work does not depend on them).
    """

    index: Tensor
    active: Tensor
    bag: Tensor
    n_tokens: int
    tokens: Tensor | None = None
    groups: tuple[tuple[int, int, int], ...] = ()
    bag_regions: tuple[int, ...] = field(default=())
    pads_active: bool = False
    fill: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = ((0, self.n_regions, self.size),)
        if len(self.fill) != self.n_regions:
            raise ValueError(f"fill must give the tokens of each of the {self.n_regions} regions, got {len(self.fill)}")

    @property
    def n_regions(self) -> int:
        return int(self.index.shape[0])

    @property
    def size(self) -> int:
        return int(self.index.shape[1])

    @property
    def real(self) -> Tensor:
        """(R, P) slots that hold a token."""
        return self.index < self.n_tokens

    @cached_property
    def slots(self) -> Tensor:
        """(M,) the token of every used slot, groups concatenated (T = empty)."""
        return torch.cat([self.index[s:e, :p].reshape(-1) for s, e, p in self.groups])

    @cached_property
    def slot_active(self) -> Tensor:
        """(M,) bool, ``active`` in the order of :attr:`slots`."""
        return torch.cat([self.active[s:e, :p].reshape(-1) for s, e, p in self.groups])

    @cached_property
    def slot_of_token(self) -> Tensor:
        """(T,) the position in :attr:`slots` of every token."""
        m = self.slots.numel()
        inv = torch.full((self.n_tokens + 1,), m, dtype=torch.long, device=self.index.device)
        inv.scatter_(0, self.slots, torch.arange(m, device=inv.device))
        return inv[: self.n_tokens]

    @cached_property
    def real_slots(self) -> Tensor:
        """(T,) the positions in :attr:`slots` of the slots holding a token, ascending (so
        the tokens of regions r0..r1 are entries ``fill_offsets[r0]:fill_offsets[r1]``)."""
        return self.slot_of_token.sort().values

    @cached_property
    def fill_offsets(self) -> list[int]:
        """Tokens in the regions before each region (R + 1 entries, host)."""
        out = [0]
        for f in self.fill:
            out.append(out[-1] + f)
        return out

    def chunks(self, chunk_tokens: int) -> Iterator[Chunk]:
        """The regions in order, cut into chunks of at most ``chunk_tokens`` slots (at least one region)."""
        slots, active, at = self.slots, self.slot_active, self.fill_offsets
        for (s, e, p), off in zip(self.groups, self.offsets()):
            step = max(1, chunk_tokens // p)
            for r0 in range(s, e, step):
                n = min(step, e - r0)
                a, b = off + (r0 - s) * p, off + (r0 - s + n) * p
                idx = slots[a:b]
                if at[r0 + n] - at[r0] == n * p:
                    yield Chunk(idx, active[a:b], n, p, None, idx, r0)
                else:
                    real = self.real_slots[at[r0] : at[r0 + n]]
                    yield Chunk(idx, active[a:b], n, p, real - a, slots[real], r0)

    def offsets(self) -> list[int]:
        """Start of each group in :attr:`slots`."""
        out, at = [], 0
        for s, e, p in self.groups:
            out.append(at)
            at += (e - s) * p
        return out


def _grid_side(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def _min_side(min_region_tokens: int) -> int:
    return max(1, math.ceil(math.sqrt(max(1, min_region_tokens))))


def _block_slots(side: int, window: int, n_regions: int, device) -> Tensor:
    """(n_regions, window²) file positions of the first regions of a side x side grid cut
    into window x window blocks; regions row-major over the grid, slots row-major inside."""
    per_side = side // window
    r = torch.arange(n_regions, device=device)
    first = (r // per_side) * window * side + (r % per_side) * window
    s = torch.arange(window * window, device=device)
    return first[:, None] + ((s // window) * side + s % window)[None, :]


def _grid_fill(n: int, side: int, window: int, n_regions: int) -> list[int]:
    """Instances in each of the first regions of :func:`_block_slots`'s grid when the first
    ``n`` file positions hold one (host arithmetic)."""
    per_side = side // window
    out = []
    for r in range(n_regions):
        first = (r // per_side) * window * side + (r % per_side) * window
        out.append(sum(min(window, max(0, n - first - i * side)) for i in range(window)))
    return out


def _merge_groups(sizes: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """(regions, slots) per bag -> groups of consecutive regions with one size."""
    groups: list[list[int]] = []
    at = 0
    for n_reg, p in sizes:
        if groups and groups[-1][2] == p:
            groups[-1][1] += n_reg
        else:
            groups.append([at, at + n_reg, p])
        at += n_reg
    return tuple(tuple(g) for g in groups if g[1] > g[0])


def official_regions(b: int, n: int, region_num: int, device=None) -> Regions:
    """The reference partition: L x L regions over a zero-padded file-order grid.

    The H*H - N pads are zero tokens that take part in attention like any other.
    """
    side = math.ceil(_grid_side(n) / region_num) * region_num
    window = side // region_num
    pos = _block_slots(side, window, region_num * region_num, device)
    offset = torch.arange(b, device=device)[:, None, None] * n
    index = torch.where(pos < n, pos + offset, b * n).reshape(-1, window * window)
    bag = torch.arange(b, device=device).repeat_interleave(region_num * region_num)
    fill = tuple(_grid_fill(n, side, window, region_num * region_num)) * b
    return Regions(index=index, active=torch.ones_like(index, dtype=torch.bool), bag=bag, n_tokens=b * n,
                   bag_regions=(region_num * region_num,) * b, pads_active=True, fill=fill)


def _compact(mask: Tensor, n_real: int) -> Tensor:
    """(T,) positions of the True entries of a (B, N) mask in the flattened batch (no sync)."""
    flat = mask.reshape(-1)
    target = torch.where(flat, torch.cumsum(flat, 0) - 1, n_real)
    out = torch.empty(n_real + 1, dtype=torch.long, device=mask.device)
    out.scatter_(0, target, torch.arange(flat.numel(), device=mask.device))
    return out[:n_real]


def _sequence_grid(nb: int, region_num: int | None, region_size: int | None, m_min: int) -> tuple[int, int]:
    """Grid side and region side of a bag of ``nb`` instances in the sequence layout."""
    h0 = _grid_side(nb)
    if region_size is not None:
        window = max(region_size, m_min)
        return math.ceil(h0 / window) * window, window
    per_side = max(1, min(region_num, h0 // m_min))
    side = math.ceil(h0 / per_side) * per_side
    return side, side // per_side


def sequence_regions(mask: Tensor, *, region_num: int | None, region_size: int | None,
                     min_region_tokens: int, lengths: list[int] | None = None) -> Regions:
    """Default-mode file-order grid: real instances only, empty slots inactive.

    With ``region_num`` L the grid side is rounded up to a multiple of L (as in the
    paper); with ``region_size`` S each region is S x S and their number grows with N.
    Regions never have fewer than ``min_region_tokens`` slots unless the whole bag is
    smaller; regions without an instance are dropped (they are a suffix of the grid).
    ``lengths`` (instances per bag) spares the one host transfer when the caller knows it.
    """
    b, n = mask.shape
    device = mask.device
    if lengths is None:
        lengths = [int(v) for v in mask.sum(dim=1).tolist()]
    total = sum(lengths)
    tokens = None if total == b * n else _compact(mask, total)
    m_min = _min_side(min_region_tokens)
    grids = [_sequence_grid(nb, region_num, region_size, m_min) for nb in lengths]
    width = max(w for _, w in grids)
    parts, sizes, fill = [], [], []
    start = 0
    for nb, (side, window) in zip(lengths, grids):
        # a region is used iff its first slot holds an instance; those form a prefix
        per_side = side // window
        n_reg = sum(min(per_side, math.ceil((nb - br * window * side) / window))
                    for br in range(per_side) if nb > br * window * side)
        pos = _block_slots(side, window, n_reg, device)
        index = torch.where(pos < nb, pos + start, total)
        parts.append(F.pad(index, (0, width * width - window * window), value=total))
        sizes.append((n_reg, window * window))
        fill += _grid_fill(nb, side, window, n_reg)
        start += nb
    index = torch.cat(parts)
    counts = [r for r, _ in sizes]
    bag = torch.arange(b, device=device).repeat_interleave(torch.tensor(counts, device=device),
                                                           output_size=sum(counts))
    return Regions(index=index, active=index < total, bag=bag, n_tokens=total, tokens=tokens,
                   groups=_merge_groups(sizes), bag_regions=tuple(counts), fill=tuple(fill))


def coords_regions(mask: Tensor, coords: Tensor, patch_size: Tensor | None, *,
                   region_num: int | None, region_size: int | None, min_region_tokens: int,
                   bag_names: list[str] | None = None) -> Regions:
    """Default-mode regions from patch coordinates (``layout="coords"``).

    Grid cells as in :func:`r2t_plugin.geometry.batched_grid_cells` (row from y, column from x).
    Windows of S x S cells (with ``region_num`` L: S = ceil(max(grid h, grid w) / L));
    only windows holding an instance exist; slots row-major inside a window. Everything
    is computed on the batch's device (float32 coordinates, int64 cells), with one host transfer.
    """
    b, n = mask.shape
    device = mask.device
    m_min = _min_side(min_region_tokens)
    ps = infer_patch_sizes(coords, mask) if patch_size is None else patch_size.to(device, torch.float32)
    cells = batched_grid_cells(coords, mask, ps)
    row, col = cells[..., 0], cells[..., 1]
    gh, gw = row.amax(dim=1) + 1, col.amax(dim=1) + 1  # (B,)
    if region_size is not None:
        s = torch.full_like(gh, max(region_size, m_min))
    else:
        s = torch.clamp(torch.div(torch.maximum(gh, gw) + region_num - 1, region_num, rounding_mode="floor"),
                        min=m_min)
    per_w = torch.div(gw + s - 1, s, rounding_mode="floor")
    bag = torch.arange(b, device=device)[:, None].expand(b, n)
    sb = s[:, None]
    wkey = bag * _KEY + (row // sb) * per_w[:, None] + col // sb
    wkey = torch.where(mask, wkey, torch.iinfo(torch.long).max).reshape(-1)
    ckey = torch.where(mask, bag * _KEY + row * gw[:, None] + col, torch.iinfo(torch.long).max).reshape(-1)
    sorted_c = ckey.sort().values
    dup = ((sorted_c[1:] == sorted_c[:-1]) & (sorted_c[1:] != torch.iinfo(torch.long).max)).any()
    wsorted, order = wkey.sort(stable=True)
    new = torch.ones_like(wsorted, dtype=torch.bool)
    new[1:] = wsorted[1:] != wsorted[:-1]
    new &= wsorted != torch.iinfo(torch.long).max
    region_sorted = torch.cumsum(new, 0) - 1
    region = torch.empty_like(region_sorted).scatter_(0, order, region_sorted)
    bag_of_new = torch.where(new, wsorted // _KEY, b)
    per_bag = torch.bincount(bag_of_new, minlength=b + 1)[:b]
    lengths = mask.sum(dim=1)
    # instances per region, in a vector sized by the batch (the number of regions is not known yet)
    fill = torch.zeros(b * n + 1, dtype=torch.long, device=device).scatter_add_(
        0, torch.where(mask.reshape(-1), region, b * n), torch.ones_like(region))[: b * n]
    stats = torch.cat([dup.reshape(1).long(), lengths, s, per_bag, fill]).tolist()  # the one transfer
    if stats[0]:
        _raise_duplicate(mask, cells, coords, ps, bag_names)
    lengths, sides, per_bag = stats[1 : 1 + b], stats[1 + b : 1 + 2 * b], stats[1 + 2 * b : 1 + 3 * b]
    total, n_reg = sum(lengths), sum(per_bag)
    fill = tuple(stats[1 + 3 * b : 1 + 3 * b + n_reg])
    width = max(sides)
    tok = torch.cumsum(mask.reshape(-1), 0) - 1
    slot = ((row % sb) * sb + col % sb).reshape(-1)
    flat_mask = mask.reshape(-1)
    target = torch.where(flat_mask, region * (width * width) + slot, n_reg * width * width)
    index = torch.full((n_reg * width * width + 1,), total, dtype=torch.long, device=device)
    index.scatter_(0, target, torch.where(flat_mask, tok, total))
    index = index[:-1].reshape(n_reg, width * width)
    bag_of_region = torch.arange(b, device=device).repeat_interleave(
        torch.tensor(per_bag, device=device), output_size=n_reg)
    tokens = None if total == b * n else _compact(mask, total)
    return Regions(index=index, active=index < total, bag=bag_of_region, n_tokens=total, tokens=tokens,
                   groups=_merge_groups([(r, w * w) for r, w in zip(per_bag, sides)]),
                   bag_regions=tuple(per_bag), fill=fill)


def _raise_duplicate(mask: Tensor, cells: Tensor, coords: Tensor, ps: Tensor,
                     bag_names: list[str] | None) -> None:
    """Name the first bag and pair of instances that share a grid cell (error path)."""
    for i in range(mask.shape[0]):
        positions = torch.nonzero(mask[i]).flatten()
        cl = cells[i][positions]
        key = cl[:, 0] * (int(cl[:, 1].max()) + 1) + cl[:, 1]
        order = torch.argsort(key, stable=True)
        k = key[order]
        same = torch.nonzero(k[1:] == k[:-1]).flatten()
        if same.numel():
            a, c = int(positions[order[same[0]]]), int(positions[order[same[0] + 1]])
            name = bag_names[i] if bag_names else f"bag {i} of the batch"
            raise RegionError(
                f"{name}: two instances fall into one grid cell (instances {a} at {coords[i, a].tolist()} "
                f"and {c} at {coords[i, c].tolist()}) with grid cell {float(ps[i]):g}; check the "
                "coordinates and the patch size (coords must be level-0 top-left corners; for overlapping "
                "patches the cell is the stride: FeatureBag.grid_step)"
            )
