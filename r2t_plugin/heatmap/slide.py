"""One slide's heatmap from a feature file (and optionally the slide): no re-extraction.

Both ``r2t heatmap --features`` and ``--test-split`` draw each slide through
:func:`draw_slide`, which places the patches with :func:`place` (the one conversion from a
file's micrometres to level-0 pixels) and can write the slide's top-k patches as a CSV.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from ..bag import FeatureBag
from ..data.wsi import SlideThumbnail, WSIError, read_thumbnail
from ..io import atomic_write_text
from ..models import ModelSpec
from .render import CMAP, OVERLAY_ALPHA, Rendered, check_fits, draw_heatmap, percentile_ranks
from .scores import HeatmapError, SlideScores, score_bag, top_k

__all__ = ["Placement", "place", "slide_heatmap", "draw_slide", "check_bag", "top_k_path", "write_top_k"]


@dataclass(frozen=True)
class Placement:
    """Where one slide's patches are drawn, and where they are in its feature file."""

    coords: np.ndarray  # (N, 2) top-left corners, in ``unit``
    patch_size: float  # in ``unit``
    unit: str  # "px" (level-0 pixels) or "um"
    file_coords: np.ndarray  # (N, 2) as in the feature file (after undoing case offsets)
    file_unit: str


def place(coords: np.ndarray, patch_size: float, unit: str, mpp: float | None = None,
          thumbnail: SlideThumbnail | None = None, where: str = "features") -> Placement:
    """Level-0 pixel places of patches whose coordinates are in ``unit`` ("px" or "um").

    Micrometres are divided by the microns per pixel: ``mpp`` (the feature file's or the
    cohort table's) if given, else the slide's. On a slide that gives none this is a
    :class:`WSIError`; without a slide the patches stay in micrometres (and the axes say so).
    """
    coords = np.asarray(coords, dtype=np.float64)
    if unit == "px":
        return Placement(coords, float(patch_size), "px", coords, "px")
    if unit != "um":
        raise HeatmapError(f"{where}: coordinates in unknown unit {unit!r} (expected 'px' or 'um')")
    mpp = mpp or (thumbnail.mpp if thumbnail is not None else None)
    if not mpp:
        if thumbnail is not None:
            raise WSIError(f"{where}: coordinates are in µm and {thumbnail.path} gives no microns per pixel "
                           "to place them on the slide (give the cohort an mpp column)")
        return Placement(coords, float(patch_size), "um", coords, "um")
    return Placement(coords / mpp, float(patch_size) / mpp, "px", coords, "um")


def check_bag(bag: FeatureBag, spec: ModelSpec, where: str) -> None:
    """Raise :class:`HeatmapError` when ``bag`` cannot be scored and placed."""
    if bag.coords is None:
        raise HeatmapError(f"{where}: the feature file has no patch coordinates; heatmaps need them "
                           "(CLAM / TRIDENT / STAMP .h5 files carry them, .pt and .npy do not)")
    if bag.patch_size is None:
        raise HeatmapError(f"{where}: unknown patch size (no patch_size attribute and a single patch)")
    if bag.dim != spec.in_dim:
        raise HeatmapError(f"{where}: features have width {bag.dim}, the model {spec.title!r} takes {spec.in_dim}")


def top_k_path(png: str | os.PathLike, k: int) -> Path:
    """The top-k CSV next to a heatmap PNG: ``slide.png`` -> ``slide_top{k}.csv``."""
    png = Path(png)
    return png.with_name(f"{png.stem}_top{k}.csv")


def write_top_k(path: str | os.PathLike, scores: np.ndarray, placed: Placement, k: int) -> Path:
    """A CSV of the ``k`` highest-scoring patches, highest first (atomic): ``rank``,
    ``patch`` (its row in the feature file), ``x``, ``y`` (level-0 pixels, top-left corner;
    absent when no microns per pixel converts µm), ``x_um``, ``y_um`` (when the file is in
    µm), ``score`` (the raw score drawn) and ``percentile`` (within the slide)."""
    order = top_k(scores, k)
    pct = percentile_ranks(scores)
    header = ["rank", "patch"] + (["x", "y"] if placed.unit == "px" else []) + (
        ["x_um", "y_um"] if placed.file_unit == "um" else []) + ["score", "percentile"]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(header)
    for rank, i in enumerate(order, 1):
        row: list[object] = [rank, int(i)]
        if placed.unit == "px":
            row += [f"{v:.6g}" for v in placed.coords[i]]
        if placed.file_unit == "um":
            row += [f"{v:.6g}" for v in placed.file_coords[i]]
        out.writerow(row + [repr(float(scores[i])), f"{pct[i]:.4f}"])
    return atomic_write_text(path, buf.getvalue())


def draw_slide(spec: ModelSpec, scored: SlideScores, coords: np.ndarray, patch_size: float, slide_id: str,
               out: str | os.PathLike, thumbnail: SlideThumbnail | None = None, *, unit: str = "px",
               mpp: float | None = None, level0_size: tuple[int, int] | None = None, max_size: int = 2048,
               alpha: float = OVERLAY_ALPHA, cmap: str = CMAP, top: int | None = None,
               where: str | None = None) -> Rendered:
    """Draw ``scored`` for the patches of one slide (coordinates as in its file, in ``unit``),
    titled with the model and prediction; with ``top``, also its top-``top`` CSV. ``where``
    names the slide in errors (default: its id)."""
    where = where or f"slide {slide_id!r}"
    placed = place(coords, patch_size, unit, mpp, thumbnail, where)
    if thumbnail is not None:
        check_fits(placed.coords, placed.patch_size, thumbnail, where, level0_size)
    title = f"{spec.title} · {slide_id}\n{scored.prediction_text(spec)} · colour: {scored.row}"
    done = draw_heatmap(out, placed.coords, placed.patch_size, scored.scores, title, thumbnail,
                        max_size=max_size, unit=placed.unit, alpha=alpha, cmap=cmap)
    if top:
        done = replace(done, top_k=write_top_k(top_k_path(done.path, top), scored.scores, placed, top))
    return done


def slide_heatmap(model: nn.Module, spec: ModelSpec, features: str | os.PathLike, out: str | os.PathLike,
                  wsi: str | os.PathLike | None = None, *, max_size: int = 2048, alpha: float = OVERLAY_ALPHA,
                  cmap: str = CMAP, top: int | None = None) -> Rendered:
    """Score the bag of ``features`` with ``model`` and draw it (on ``wsi``'s thumbnail if given)."""
    from ..data.readers import read_bag

    thumb = read_thumbnail(wsi, max_size) if wsi is not None else None
    bag = read_bag(features)
    check_bag(bag, spec, str(features))
    size = None
    if "level0_width" in bag.meta and "level0_height" in bag.meta:
        size = (bag.meta["level0_width"], bag.meta["level0_height"])
    scored = score_bag(model, bag, spec)
    slide_id = bag.slide_ids[0] if bag.slide_ids else Path(features).stem
    return draw_slide(spec, scored, bag.coords.numpy(), bag.patch_size, slide_id, out, thumb,
                      unit=bag.meta.get("coord_unit", "px"), mpp=bag.meta.get("mpp"), level0_size=size,
                      max_size=max_size, alpha=alpha, cmap=cmap, top=top, where=str(features))
