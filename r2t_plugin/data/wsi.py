"""Whole-slide images through openslide (an optional extra: ``pip install 'r2t-plugin[wsi]'``).

Only what heatmaps, tiling and cohort tables need: the file suffixes of slides, finding a
slide by its id, opening it with errors that name the file, its level-0 size and microns
per pixel, and a thumbnail that covers the whole level-0 image (so thumbnail pixel
``(u, v)`` is level-0 ``(u / scale_x, v / scale_y)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WSI_SUFFIXES", "WSIError", "SlideThumbnail", "find_wsi", "open_wsi", "read_thumbnail"]

WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                ".czi", ".vsi")
"""File suffixes of whole-slide images (lower case), in the order :func:`find_wsi` tries them."""


class WSIError(ValueError):
    """A slide that cannot be opened or does not fit the features drawn on it."""


def _openslide() -> Any:
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise WSIError("reading whole-slide images needs openslide: "
                       f"pip install 'r2t-plugin[wsi]' ({type(exc).__name__}: {exc})") from exc
    return openslide


def find_wsi(wsi_dir: str | os.PathLike, slide_id: str) -> Path | None:
    """``{wsi_dir}/{slide_id}{suffix}`` for a known slide suffix (or the slide id as a file name)."""
    wsi_dir = Path(wsi_dir)
    if (wsi_dir / slide_id).is_file() and Path(slide_id).suffix.lower() in WSI_SUFFIXES:
        return wsi_dir / slide_id
    for suffix in WSI_SUFFIXES:
        if (p := wsi_dir / f"{slide_id}{suffix}").is_file():
            return p
    return None


def open_wsi(path: str | os.PathLike) -> Any:
    """An ``openslide.OpenSlide`` of ``path``; :class:`WSIError` naming the file if it fails."""
    openslide = _openslide()
    path = Path(path)
    if not path.is_file():
        raise WSIError(f"{path}: no such slide file")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise WSIError(f"{path}: unreadable slide ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class SlideThumbnail:
    """A thumbnail of the whole slide and the geometry that places level-0 pixels on it."""

    path: str
    image: np.ndarray  # (h, w, 3) uint8
    level0_size: tuple[int, int]  # (width, height)
    mpp: float | None  # level-0 microns per pixel

    @property
    def scale(self) -> tuple[float, float]:
        """Thumbnail pixels per level-0 pixel along x and y."""
        h, w = self.image.shape[:2]
        return w / self.level0_size[0], h / self.level0_size[1]


def read_thumbnail(path: str | os.PathLike, max_size: int = 2048) -> SlideThumbnail:
    """The slide's thumbnail, at most ``max_size`` pixels on its longer side."""
    slide = open_wsi(path)
    try:
        width, height = (int(v) for v in slide.dimensions)
        try:
            image = np.asarray(slide.get_thumbnail((max_size, max_size)).convert("RGB"), dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - openslide raises several kinds on corrupt tiles
            raise WSIError(f"{path}: cannot read the slide's pixels ({type(exc).__name__}: {exc})") from exc
        mpp = slide.properties.get("openslide.mpp-x")
        return SlideThumbnail(str(path), image, (width, height), float(mpp) if mpp else None)
    finally:
        slide.close()
