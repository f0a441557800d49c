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


def finished_run(root: Path, cohort: dict, in_dim: int) -> tuple[Path, object, object]:
    """A comparison's folder under ``root`` as r2t compare leaves it (manifest, 2 folds of
    splits) with one untrained, finished run (abmil, plain, fold 1) whose best.pt is
    written as the harness writes it: (output folder, that run's cell, the cohort)."""
    import torch

    from r2t_plugin.compare.cell import model_spec, open_cohort
    from r2t_plugin.compare.config import parse_config
    from r2t_plugin.compare.grid import make_grid
    from r2t_plugin.compare.manifest import build_manifest, write_manifest
    from r2t_plugin.data import cohort_strata, load_or_make_folds
    from r2t_plugin.models import build_model, save_checkpoint

    config = parse_config({
        "cohort": cohort, "aggregators": [{"name": "abmil", "options": {"dim": 16}}],
        "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {"dim": 16, "heads": 2, "region_num": 2,
                                                                  "layout": "coords"}}],
        "folds": 2, "output": str(root / "out")}, root)
    out = config.output
    opened = open_cohort(config.cohort)
    write_manifest(out / "manifest.json", build_manifest(config, {}, extra={"cohort": {
        "cases": len(opened), "feature_dim": in_dim, "classes": list(opened.classes)}}))
    load_or_make_folds(out / "splits", opened.case_ids, cohort_strata(opened), 2, 0.2, 0)
    cell = next(c for c in make_grid(config) if c.variant.name == "plain" and c.fold == 1)
    torch.manual_seed(0)
    spec = model_spec(cell, in_dim, 2, opened)
    save_checkpoint(out / "runs" / cell.run_id / "best.pt", build_model(spec).state_dict(), spec)
    return out, cell, opened
