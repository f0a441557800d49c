"""Patch geometry in plain torch: grid cells from coordinates, and patch graphs.

No torch-cluster / torch-scatter: graphs are built from level-0 coordinates here.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["infer_patch_size", "grid_cells", "grid_edges", "knn_edges"]


def infer_patch_size(coords: Tensor) -> float:
    """Smallest positive gap between coordinates along x or y (the level-0 patch size).

    ``coords`` (N, 2). Returns 1.0 when every instance sits at one position.
    """
    best = None
    for axis in range(2):
        v = torch.unique(coords[:, axis].double())
        if v.numel() > 1:
            gap = float((v[1:] - v[:-1]).min())
            best = gap if best is None else min(best, gap)
    return 1.0 if best is None else best


def grid_cells(coords: Tensor, patch_size: float | None = None) -> Tensor:
    """(N, 2) long grid cells (row, col): floor((coord - min coord) / patch_size).

    Row from y, column from x; ``patch_size`` inferred when None.
    """
    if patch_size is None:
        patch_size = infer_patch_size(coords)
    c = coords.double()
    rel = (c - c.min(dim=0).values) / float(patch_size)
    # a tiny tolerance so that 2 * 256.0 / 256.0 never floors to 1.999...
    cells = torch.floor(rel + 1e-6).long()
    return torch.stack([cells[:, 1], cells[:, 0]], dim=1)


def grid_edges(coords: Tensor, patch_size: float | None = None) -> Tensor:
    """(2, E) edges joining patches that are 8-neighbours on the patch grid (no self loops)."""
    cells = grid_cells(coords, patch_size)
    n = cells.shape[0]
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=coords.device)
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
    return torch.stack([torch.cat(src), torch.cat(dst)]).to(coords.device)


def knn_edges(coords: Tensor, k: int = 8, chunk: int = 4096) -> Tensor:
    """(2, E) edges from every patch to its ``k`` nearest other patches (Euclidean)."""
    n = coords.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(2, 0, dtype=torch.long, device=coords.device)
    c = coords.float()
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
