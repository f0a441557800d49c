"""Patch geometry from level-0 coordinates, in plain torch: patch size, grid cells, graphs.

One bag (``coords`` (N, 2)) or a padded batch (``coords`` (B, N, 2) with a (B, N) mask,
as in :class:`~r2t_plugin.bag.BagBatch`); the single-bag functions are the batched ones
on a batch of one, so R²T's coordinate regions, the readers and the graph aggregators
all place a patch in the same cell. Coordinates are (x, y) top-left corners; a cell is
(row, col) = floor((coord - bag minimum) / patch size), row from y, column from x. For
patches extracted with overlap the "patch size" given here is the stride between them (a
bag's ``cell_size``: its ``grid_step``), so neighbours land in neighbouring cells.

Dtype rule: arithmetic on coordinates is float32 (exact for integer pixel positions
up to 2**24, far beyond any slide), whatever their input dtype; cells and edges are int64.
No torch-cluster / torch-scatter: graphs are built here.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CELL_TOLERANCE", "infer_patch_size", "infer_patch_sizes", "grid_cells", "batched_grid_cells",
           "grid_edges", "knn_edges"]

CELL_TOLERANCE = 1e-3
"""Fraction of a patch added before flooring, so that 2 * 256 / 256 never floors to 1.999..."""


def _float(coords: Tensor) -> Tensor:
    if isinstance(coords, Tensor):
        return coords.to(torch.float32)  # stays on its own device
    return torch.as_tensor(coords, dtype=torch.float32)


def infer_patch_sizes(coords: Tensor, mask: Tensor | None = None) -> Tensor:
    """(B,) float32: for each bag, the smallest positive gap between its coordinates along x or y.

    ``coords`` (B, N, 2); ``mask`` (B, N) bool, True = real instance (padding ignored).
    A bag whose instances all sit at one position gets 1.0. Computed on ``coords``' device.
    """
    c = _float(coords)
    inf = torch.tensor(float("inf"), device=c.device)
    best = torch.full(c.shape[:1], float("inf"), device=c.device)
    for axis in range(2):
        v = c[..., axis] if mask is None else torch.where(mask, c[..., axis], inf)
        v = v.sort(dim=1).values
        gap = v[:, 1:] - v[:, :-1]
        if gap.shape[1]:
            gap = torch.where(torch.isfinite(gap) & (gap > 0), gap, inf)
            best = torch.minimum(best, gap.amin(dim=1))
    return torch.where(torch.isfinite(best), best, torch.ones_like(best))


def infer_patch_size(coords: Tensor) -> float:
    """The level-0 patch size of one bag (``coords`` (N, 2)); see :func:`infer_patch_sizes`."""
    return float(infer_patch_sizes(_float(coords)[None])[0])


def batched_grid_cells(coords: Tensor, mask: Tensor | None = None,
                       patch_size: float | Tensor | None = None) -> Tensor:
    """(B, N, 2) long grid cells (row, col) of every bag; 0 at padded positions.

    ``coords`` (B, N, 2); ``mask`` (B, N) bool or None; ``patch_size`` a float, a (B,)
    tensor, or None (inferred per bag).
    """
    c = _float(coords)
    b = c.shape[0]
    if patch_size is None:
        ps = infer_patch_sizes(c, mask)
    else:
        ps = torch.as_tensor(patch_size, dtype=torch.float32, device=c.device).reshape(-1).expand(b)
    if mask is None:
        cmin = c.amin(dim=1)
    else:
        cmin = torch.where(mask[..., None], c, torch.tensor(float("inf"), device=c.device)).amin(dim=1)
    rel = (c - cmin[:, None, :]) / ps[:, None, None]
    cells = torch.floor(rel + CELL_TOLERANCE).clamp(min=0).long()
    if mask is not None:
        cells = cells.where(mask[..., None], 0)
    return cells.flip(-1)


def grid_cells(coords: Tensor, patch_size: float | None = None) -> Tensor:
    """(N, 2) long grid cells (row, col) of one bag; ``patch_size`` inferred when None."""
    return batched_grid_cells(_float(coords)[None], None, patch_size)[0]


def grid_edges(coords: Tensor, patch_size: float | None = None) -> Tensor:
    """(2, E) edges joining patches that are 8-neighbours on the patch grid (no self loops)."""
    cells = grid_cells(coords, patch_size)
    n = cells.shape[0]
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=cells.device)
    width = int(cells[:, 1].max()) + 3
    key = (cells[:, 0] + 1) * width + (cells[:, 1] + 1)
    order = torch.argsort(key)
    sorted_key = key[order]
    src, dst = [], []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            target = key + dr * width + dc
            pos = torch.searchsorted(sorted_key, target).clamp(max=n - 1)
            hit = sorted_key[pos] == target
            src.append(torch.nonzero(hit).flatten())
            dst.append(order[pos[hit]])
    return torch.stack([torch.cat(src), torch.cat(dst)])


def knn_edges(coords: Tensor, k: int = 8, chunk: int = 4096) -> Tensor:
    """(2, E) edges from every patch to its ``k`` nearest other patches (Euclidean)."""
    n = coords.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(2, 0, dtype=torch.long, device=coords.device)
    c = _float(coords)
    src, dst = [], []
    for start in range(0, n, chunk):
        block = c[start : start + chunk]
        d = torch.cdist(block, c)
        idx = torch.arange(start, start + block.shape[0], device=c.device)
        d[torch.arange(block.shape[0], device=c.device), idx] = float("inf")
        nn_idx = d.topk(k, dim=1, largest=False).indices
        src.append(idx.repeat_interleave(k))
        dst.append(nn_idx.flatten())
    return torch.stack([torch.cat(src), torch.cat(dst)])
