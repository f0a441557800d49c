"""One slide's heatmap from a feature file (and optionally the slide): no re-extraction."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import nn

from ..bag import FeatureBag
from ..data.wsi import SlideThumbnail, WSIError, read_thumbnail
from ..models import ModelSpec
from .render import Rendered, check_fits, draw_heatmap
from .scores import HeatmapError, SlideScores, score_bag

__all__ = ["slide_heatmap", "draw_slide", "check_bag"]


def check_bag(bag: FeatureBag, spec: ModelSpec, where: str) -> None:
    """Raise :class:`HeatmapError` when ``bag`` cannot be scored and placed."""
    if bag.coords is None:
        raise HeatmapError(f"{where}: the feature file has no patch coordinates; heatmaps need them "
                           "(CLAM / TRIDENT / STAMP .h5 files carry them, .pt and .npy do not)")
    if bag.patch_size is None:
        raise HeatmapError(f"{where}: unknown patch size (no patch_size attribute and a single patch)")
    if bag.dim != spec.in_dim:
        raise HeatmapError(f"{where}: features have width {bag.dim}, the model {spec.title!r} takes {spec.in_dim}")


def draw_slide(spec: ModelSpec, scored: SlideScores, coords: np.ndarray, patch_size: float, slide_id: str,
               out: str | os.PathLike, thumbnail: SlideThumbnail | None = None, *, max_size: int = 2048,
               unit: str = "px") -> Rendered:
    """Draw ``scored`` for the patches of one slide, titled with the model and prediction."""
    title = f"{spec.title} · {slide_id}\n{scored.prediction_text(spec)} · colour: {scored.row}"
    return draw_heatmap(out, coords, patch_size, scored.scores, title, thumbnail, max_size=max_size, unit=unit)


def slide_heatmap(model: nn.Module, spec: ModelSpec, features: str | os.PathLike, out: str | os.PathLike,
                  wsi: str | os.PathLike | None = None, *, max_size: int = 2048) -> Rendered:
    """Score the bag of ``features`` with ``model`` and draw it (on ``wsi``'s thumbnail if given)."""
    from ..data.readers import read_bag

    thumb = read_thumbnail(wsi, max_size) if wsi is not None else None
    bag = read_bag(features, mpp=thumb.mpp if thumb is not None else None)
    unit = bag.meta.get("coord_unit", "px")
    if thumb is not None and unit != "px":
        raise WSIError(f"{features}: coordinates are in {unit} and {wsi} gives no microns per pixel "
                       "to place them on the slide")
    check_bag(bag, spec, str(features))
    coords = bag.coords.numpy().astype(np.float64)
    if thumb is not None:
        size = None
        if "level0_width" in bag.meta and "level0_height" in bag.meta:
            size = (bag.meta["level0_width"], bag.meta["level0_height"])
        check_fits(coords, bag.patch_size, thumb, str(features), size)
    scored = score_bag(model, bag, spec)
    slide_id = bag.slide_ids[0] if bag.slide_ids else Path(features).stem
    return draw_slide(spec, scored, coords, bag.patch_size, slide_id, out, thumb,
                      max_size=max_size, unit="µm" if unit == "um" else unit)
