"""Shared fixtures: the real slide (skipped when absent), its tiled features, PNG decoding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SVS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wsi" / "cmu_small_region.svs"


@pytest.fixture(scope="session")
def openslide():
    return pytest.importorskip("openslide", reason="openslide-python + openslide-bin not installed "
                                                   "(pip install 'r2t-plugin[wsi]')")


@pytest.fixture(scope="session")
def svs(openslide) -> Path:
    if not SVS.is_file():
        pytest.skip(f"real slide {SVS} absent (../shared/data is not checked out here)")
    return SVS.resolve()


@pytest.fixture(scope="session")
def cmu_h5(svs, tmp_path_factory) -> Path:
    from r2t_plugin.data.tiling import extract_features

    return extract_features(svs, tmp_path_factory.mktemp("cmu") / "cmu.h5", patch_size=224)


def read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a PNG."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def decode(colours: np.ndarray) -> np.ndarray:
    """Values in [0, 1] of RGB colours (n, 3) in 0..255, by the nearest colour-map entry."""
    from matplotlib import colormaps

    from r2t_plugin.heatmap.render import CMAP

    lut = colormaps[CMAP](np.linspace(0, 1, 256))[:, :3] * 255
    d = ((np.asarray(colours, dtype=float)[:, None, :] - lut[None]) ** 2).sum(-1)
    return d.argmin(axis=1) / 255.0
