"""Tile a whole-slide image and write CLAM-format features, without a deep encoder.

For tests, demos and people without a feature extractor: tissue is found by a threshold
on HSV saturation (stained tissue is coloured, glass is grey or white) of a thumbnail;
every level-0 grid tile of ``patch_size`` pixels that lies wholly inside the slide and is
at least ``min_tissue`` tissue is kept; tiles are encoded by a deterministic encoder (by
default :class:`RandomProjectionEncoder`: a fixed random projection of the downsampled
pixels) and written as CLAM's ``h5`` (:func:`r2t_plugin.data.readers.write_clam_h5`).

Needs openslide (``pip install 'r2t-plugin[wsi]'``). Command line::

    python -m r2t_plugin.data.tiling SLIDE.svs OUT.h5 [--patch-size 224]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .readers import write_clam_h5
from .wsi import WSIError, open_wsi, read_thumbnail

__all__ = ["saturation", "tissue_mask", "tile_coords", "RandomProjectionEncoder", "extract_features"]

Encoder = Callable[[np.ndarray], np.ndarray]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an (h, w, 3) uint8 image."""
    x = rgb.astype(np.float32)
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)


def tissue_mask(rgb: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """(h, w) bool: pixels whose saturation exceeds ``threshold``."""
    return saturation(rgb) > threshold


def tile_coords(level0_size: tuple[int, int], mask: np.ndarray, patch_size: int,
                min_tissue: float = 0.5) -> np.ndarray:
    """(N, 2) int64 level-0 top-left corners (x, y) of the grid tiles kept, row by row.

    ``mask`` is a tissue mask of the whole slide at any scale (its shape fixes the scale).
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    width, height = level0_size
    mh, mw = mask.shape
    sx, sy = mw / width, mh / height
    keep = []
    for y in range(0, height - patch_size + 1, patch_size):
        for x in range(0, width - patch_size + 1, patch_size):
            u0, u1 = int(x * sx), max(int(x * sx) + 1, int(round((x + patch_size) * sx)))
            v0, v1 = int(y * sy), max(int(y * sy) + 1, int(round((y + patch_size) * sy)))
            if mask[v0:v1, u0:u1].mean() >= min_tissue:
                keep.append((x, y))
    return np.asarray(keep, dtype=np.int64).reshape(-1, 2)


class RandomProjectionEncoder:
    """A fixed random projection of tiles downsampled to ``pixels`` x ``pixels`` RGB.

    ``encoder(tiles (n, h, w, 3) uint8) -> (n, dim) float32``; the same ``seed`` gives the
    same projection on every machine (NumPy's PCG64).
    """

    def __init__(self, dim: int = 64, pixels: int = 8, seed: int = 0) -> None:
        if dim < 1 or pixels < 1:
            raise ValueError(f"dim and pixels must be >= 1, got {dim} and {pixels}")
        self.dim, self.pixels = dim, pixels
        rng = np.random.default_rng(seed)
        width = pixels * pixels * 3
        self.weight = (rng.standard_normal((width, dim)) / np.sqrt(width)).astype(np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        n, h, w, _ = tiles.shape
        p = self.pixels
        if h % p or w % p:
            raise ValueError(f"tile size {h} x {w} is not a multiple of {p} pixels")
        small = tiles.astype(np.float32).reshape(n, p, h // p, p, w // p, 3).mean(axis=(2, 4))
        return (small.reshape(n, -1) / 255.0 - 0.5) @ self.weight


def extract_features(wsi: str | os.PathLike, out: str | os.PathLike, patch_size: int = 224, *,
                     encoder: Encoder | None = None, min_tissue: float = 0.5,
                     saturation_threshold: float = 0.1, batch: int = 64) -> Path:
    """Tile ``wsi`` at level 0, encode the tissue tiles and write a CLAM ``h5`` to ``out``."""
    thumb = read_thumbnail(wsi, max_size=1024)
    coords = tile_coords(thumb.level0_size, tissue_mask(thumb.image, saturation_threshold),
                         patch_size, min_tissue)
    if len(coords) == 0:
        raise WSIError(f"{wsi}: no tile of {patch_size} px is {min_tissue:.0%} tissue")
    encoder = encoder or RandomProjectionEncoder()
    slide = open_wsi(wsi)
    parts = []
    try:
        for start in range(0, len(coords), batch):
            tiles = np.stack([np.asarray(slide.read_region((int(x), int(y)), 0, (patch_size, patch_size))
                                         .convert("RGB")) for x, y in coords[start:start + batch]])
            parts.append(np.asarray(encoder(tiles), dtype=np.float32))
    finally:
        slide.close()
    return write_clam_h5(out, np.concatenate(parts), coords, patch_size)


def main(argv: list[str] | None = None) -> int:
    """``python -m r2t_plugin.data.tiling SLIDE OUT.h5``."""
    p = argparse.ArgumentParser(prog="python -m r2t_plugin.data.tiling", description=__doc__.split("\n\n")[0])
    p.add_argument("wsi", help="whole-slide image (any format openslide reads)")
    p.add_argument("out", help="CLAM-format .h5 to write")
    p.add_argument("--patch-size", type=int, default=224, help="level-0 tile side in pixels (default 224)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="least tissue fraction of a kept tile")
    args = p.parse_args(argv)
    path = extract_features(args.wsi, args.out, args.patch_size, min_tissue=args.min_tissue)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
