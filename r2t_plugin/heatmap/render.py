"""Draw instance scores as patch-sized squares at their level-0 coordinates.

Scores are normalised to their percentile within the slide (rank / (N - 1); robust to
the heavy tails of attention weights), coloured with a colour map (``turbo`` by default,
any matplotlib name) and painted onto a canvas: the slide thumbnail, where only the tissue
under a patch is coloured and blended at opacity ``alpha`` (0.4 by default, so the
morphology stays visible and the glass stays clean), or a white background covering the
patches (full colour). The canvas is placed unresampled in the figure (one canvas pixel =
one PNG pixel), with axes in the unit of the coordinates drawn (level-0 pixels, or µm
when nothing converts them), a colour bar whose ticks give the percentile and the raw
score there, and a title. PNGs are written atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..data.wsi import SlideThumbnail, WSIError
from .scores import HeatmapError

__all__ = ["Canvas", "Rendered", "percentile_ranks", "slide_canvas", "blank_canvas", "rasterise",
           "tissue_region", "check_fits", "check_style", "draw_heatmap", "CMAP", "OVERLAY_ALPHA"]

CMAP = "turbo"
"""The default colour map."""
OVERLAY_ALPHA = 0.4
"""The default opacity of the colours over the slide."""
_UNIT_LABEL = {"px": "level-0 px", "um": "µm"}
_DPI = 100
_MARGINS = {"left": 80, "right": 190, "top": 80, "bottom": 60}  # PNG pixels around the canvas
_MIN_WIDTH = 720
_BLANK_PATCH_PX = 32


@dataclass(frozen=True)
class Canvas:
    """An RGB background and where level-0 coordinates fall on it."""

    background: np.ndarray  # (h, w, 3) uint8
    origin: tuple[float, float]  # level-0 (x, y) of the canvas's top-left corner
    scale: tuple[float, float]  # canvas pixels per level-0 pixel along x and y
    alpha: float  # opacity of the colour squares
    tissue: np.ndarray | None = None  # (h, w) bool: the pixels that may be coloured (None: all)

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) -> canvas (column, row), as floats."""
        return (np.asarray(xy, dtype=np.float64) - self.origin) * self.scale


@dataclass(frozen=True)
class Rendered:
    """A written heatmap: its file, where the canvas lies in the PNG, its top-k CSV if written."""

    path: Path
    canvas: Canvas
    box: tuple[int, int, int, int]  # (left, top, width, height) of the canvas in PNG pixels
    top_k: Path | None = None


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Each score's percentile within ``scores`` in [0, 1] (ties share their mean rank)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 1:
        return np.ones(1)
    return (rankdata(s, method="average") - 1.0) / (s.size - 1)


def tissue_region(rgb: np.ndarray) -> np.ndarray:
    """(h, w) bool: the tissue of a slide image (stained, so saturated: the tiling's
    threshold), small gaps closed and enclosed holes such as lumens filled."""
    from scipy import ndimage

    from ..data.tiling import tissue_mask

    closed = ndimage.binary_closing(tissue_mask(rgb), structure=np.ones((3, 3), bool), iterations=2)
    return ndimage.binary_fill_holes(closed)


def slide_canvas(thumb: SlideThumbnail, alpha: float = OVERLAY_ALPHA) -> Canvas:
    """The whole slide's thumbnail as canvas; only its tissue gets colour, at opacity ``alpha``."""
    return Canvas(thumb.image, (0.0, 0.0), thumb.scale, alpha, tissue_region(thumb.image))


def blank_canvas(coords: np.ndarray, patch_size: float, max_size: int = 2048) -> Canvas:
    """A white canvas over the patches (one patch of margin): patches at most
    ``_BLANK_PATCH_PX`` pixels, the canvas at most ``max_size`` pixels."""
    lo = coords.min(axis=0) - patch_size
    hi = coords.max(axis=0) + 2 * patch_size
    scale = min(1.0, max_size / float((hi - lo).max()), _BLANK_PATCH_PX / patch_size)
    w, h = (int(np.ceil(v)) for v in (hi - lo) * scale)
    return Canvas(np.full((h, w, 3), 255, np.uint8), (float(lo[0]), float(lo[1])), (scale, scale), 1.0)


def rasterise(canvas: Canvas, coords: np.ndarray, patch_size: float, values: np.ndarray) -> np.ndarray:
    """(h, w) mean value of the squares covering each canvas pixel; NaN where none does."""
    h, w = canvas.background.shape[:2]
    total = np.zeros((h, w))
    count = np.zeros((h, w), dtype=np.int32)
    start = np.rint(canvas.to_pixels(coords)).astype(np.int64)
    end = np.rint(canvas.to_pixels(coords + patch_size)).astype(np.int64)
    end = np.maximum(end, start + 1)  # a patch smaller than a pixel still shows
    for (u0, v0), (u1, v1), value in zip(np.clip(start, 0, [w, h]), np.clip(end, 0, [w, h]), values):
        total[v0:v1, u0:u1] += value
        count[v0:v1, u0:u1] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def check_fits(coords: np.ndarray, patch_size: float, thumb: SlideThumbnail, features: str,
               level0_size: tuple[int, int] | None = None) -> None:
    """Raise :class:`WSIError` when the patches cannot come from this slide's level 0."""
    width, height = thumb.level0_size
    if level0_size is not None and tuple(int(v) for v in level0_size) != (width, height):
        raise WSIError(f"{features} was extracted from a slide of {level0_size[0]} x {level0_size[1]} px, "
                       f"but {thumb.path} is {width} x {height} px at level 0")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    if lo[0] < 0 or lo[1] < 0 or hi[0] >= width or hi[1] >= height:
        raise WSIError(f"{features}: patch corners span x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f} "
                       f"(patch {patch_size:.0f} px) but {thumb.path} is {width} x {height} px at level 0: "
                       "these features do not belong to this slide (or are not in level-0 pixels)")


def check_style(alpha: float, cmap: str) -> None:
    """Raise :class:`HeatmapError` for an opacity outside (0, 1] or an unknown colour map."""
    from difflib import get_close_matches

    from matplotlib import colormaps

    if not 0.0 < alpha <= 1.0:
        raise HeatmapError(f"opacity (alpha) must be in (0, 1], got {alpha:g}")
    if cmap not in colormaps:
        near = get_close_matches(cmap, list(colormaps), n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "e.g. turbo, viridis, inferno, magma, coolwarm"
        raise HeatmapError(f"unknown colour map {cmap!r} ({hint}; any matplotlib colormap name)")


def _compose(canvas: Canvas, value_image: np.ndarray, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    covered = ~np.isnan(value_image)
    if canvas.tissue is not None:
        covered &= canvas.tissue
    colours = colormaps[cmap](np.nan_to_num(value_image))[..., :3] * 255.0
    bg = canvas.background.astype(np.float64)
    a = canvas.alpha
    out = np.where(covered[..., None], (1 - a) * bg + a * colours, bg)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _figure(rgb: np.ndarray, canvas: Canvas, scores: np.ndarray, title: str, unit: str, cmap: str):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    h, w = rgb.shape[:2]
    m = _MARGINS
    width = max(w + m["left"] + m["right"], _MIN_WIDTH)
    height = h + m["top"] + m["bottom"]
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    fig.figimage(rgb, xo=m["left"], yo=m["bottom"], origin="upper")
    ax = fig.add_axes((m["left"] / width, m["bottom"] / height, w / width, h / height))
    (x0, y0), (sx, sy) = canvas.origin, canvas.scale
    ax.set_xlim(x0, x0 + w / sx)
    ax.set_ylim(y0 + h / sy, y0)
    ax.patch.set_alpha(0.0)
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"x ({_UNIT_LABEL.get(unit, unit)})", fontsize=8)
    ax.set_ylabel(f"y ({_UNIT_LABEL.get(unit, unit)})", fontsize=8)
    cax = fig.add_axes(((m["left"] + w + 16) / width, m["bottom"] / height, 16 / width, h / height))
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[cmap]), cax=cax)
    qs = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    raw = np.quantile(scores, qs)
    bar.set_ticks(qs, labels=[f"{int(q * 100)}%: {v:.3g}" for q, v in zip(qs, raw)], fontsize=7)
    bar.set_label("percentile within the slide (tick: raw score)", fontsize=8)
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=10, wrap=True)
    return fig, (m["left"], m["top"], w, h)


def draw_heatmap(out: str | os.PathLike, coords: np.ndarray, patch_size: float, scores: np.ndarray,
                 title: str, thumbnail: SlideThumbnail | None = None, *, max_size: int = 2048,
                 unit: str = "px", alpha: float = OVERLAY_ALPHA, cmap: str = CMAP) -> Rendered:
    """Draw ``scores`` (N,) of patches at ``coords`` (N, 2) and write the PNG ``out``.

    ``coords`` and ``patch_size`` are level-0 pixels when ``thumbnail`` is given; without it,
    in ``unit`` (``"px"`` or ``"um"``, which the axes say)."""
    from ..io import atomic_write

    coords = np.asarray(coords, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if coords.ndim != 2 or coords.shape != (scores.size, 2):
        raise HeatmapError(f"coords must be ({scores.size}, 2) for {scores.size} scores, got {coords.shape}")
    if not patch_size or patch_size <= 0:
        raise HeatmapError(f"patch size must be > 0, got {patch_size}")
    check_style(alpha, cmap)
    canvas = slide_canvas(thumbnail, alpha) if thumbnail is not None else blank_canvas(coords, patch_size, max_size)
    rgb = _compose(canvas, rasterise(canvas, coords, patch_size, percentile_ranks(scores)), cmap)
    fig, box = _figure(rgb, canvas, scores, title, unit, cmap)
    path = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))
    return Rendered(path, canvas, box)
