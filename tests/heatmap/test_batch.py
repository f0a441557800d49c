"""Batch mode over the test split of an r2t compare run (its manifest, splits and best.pt)."""
from __future__ import annotations

import re

import pytest
import torch

from r2t_plugin.heatmap import load_test_split, run_checkpoint
from r2t_plugin.models import CheckpointError, ModelSpec, build_model, load_checkpoint, save_checkpoint

from .conftest import finished_run, read_png


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """A comparison's folder as r2t compare leaves it, with one (untrained) finished run."""
    from r2t_plugin.data.synthetic import SyntheticSpec, generate_cohort

    root = tmp_path_factory.mktemp("compare")
    data = generate_cohort(root / "data", SyntheticSpec(n_cases=8, dim=8, min_patches=20, max_patches=40,
                                                        two_slide_fraction=0.5, seed=3))
    return finished_run(root, {"csv": str(data.csv), "features": str(data.feature_dir),
                               "task": "classification"}, 8)


def test_run_folder_rebuilds_the_model(compare_run) -> None:
    out, cell, _ = compare_run
    _, spec = load_checkpoint(run_checkpoint(out / "runs" / cell.run_id))
    assert spec.aggregator == "abmil" and spec.r2t is None
    assert spec.classes == ("0", "1") and spec.in_dim == 8
    assert load_checkpoint(run_checkpoint(out / "runs" / cell.run_id / "best.pt"))[1] == spec
    with pytest.raises(CheckpointError, match="whole comparison; pass one run folder"):
        run_checkpoint(out)


def test_test_split_batch(compare_run, tmp_path) -> None:
    from r2t_plugin.cli import main

    out, cell, cohort = compare_run
    split = load_test_split(out / "runs" / cell.run_id)
    assert split.cases and set(split.cases) <= set(cohort.case_ids)
    slides = [s for c in split.cases for s in cohort.slides(c)]
    assert len(slides) > len(split.cases)  # some test case has two slides
    dest = tmp_path / "maps"
    assert main(["heatmap", "--checkpoint", str(out / "runs" / cell.run_id), "--test-split", "-o", str(dest)]) == 0
    pngs = sorted(p.stem for p in dest.glob("*.png"))
    assert pngs == sorted(slides)
    page = (dest / "index.html").read_text()
    assert len(re.findall(r'<img src="[^"]+\.png"', page)) == len(slides)
    for case in split.cases:
        assert f"true: {cohort.classes[cohort.target(case)['label']]}" in page
    assert page.count("predicted ") >= len(slides)
    assert read_png(dest / f"{slides[0]}.png").shape[1] >= 720


def test_batch_needs_a_compare_run(tmp_path, capsys) -> None:
    from r2t_plugin.cli import main

    spec = ModelSpec("abmil", 8, 2, options={"dim": 16})
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(spec).state_dict(), spec)
    assert main(["heatmap", "--checkpoint", str(ckpt), "--test-split", "-o", str(tmp_path / "o")]) == 2
    assert "needs a run of r2t compare" in capsys.readouterr().err


def test_slide_ids_that_sanitise_alike_get_their_own_png(tmp_path) -> None:
    """``case-004 α`` and ``case-004 β`` both sanitise to ``case-004-``: each keeps its own PNG."""
    import h5py
    import numpy as np
    import pandas as pd

    from r2t_plugin.data import Cohort
    from r2t_plugin.heatmap.batch import png_names, run_batch
    from r2t_plugin.heatmap.runs import RunTestSplit

    feats = tmp_path / "features"
    feats.mkdir()
    slides = {"case-004 α": 4, "case-004 β": 9, "CASE-5": 4, "case-5": 4}
    for sid, n in slides.items():
        side = int(np.ceil(np.sqrt(n)))
        coords = np.array([(i % side, i // side) for i in range(n)], dtype=np.int64) * 256
        with h5py.File(feats / f"{sid}.h5", "w") as f:
            f["features"] = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)
            f.create_dataset("coords", data=coords).attrs["patch_size"] = 256
    pd.DataFrame({"case_id": ["c4", "c4", "c5", "c6"], "slide_id": list(slides),
                  "label": [0, 0, 1, 1]}).to_csv(tmp_path / "cohort.csv", index=False)
    cohort = Cohort(tmp_path / "cohort.csv", feats, label_col="label")
    spec = ModelSpec("abmil", 8, 2, options={"dim": 16}, classes=("0", "1"))
    torch.manual_seed(0)
    items = run_batch(build_model(spec).eval(), spec, RunTestSplit(tmp_path, ("c4", "c5", "c6"), cohort),
                      tmp_path / "maps")
    assert [i.error for i in items] == [None] * 4
    pngs = {i.slide_id: i.png for i in items}
    assert len(set(pngs.values())) == 4 and len({p.lower() for p in pngs.values()}) == 4
    assert pngs == png_names(list(slides))
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.png")) == sorted(pngs.values())
    shapes = {sid: read_png(tmp_path / "maps" / png).shape for sid, png in pngs.items()}
    assert shapes["case-004 α"] != shapes["case-004 β"]  # each file holds its own slide (2x2 vs 3x3 patches)
    page = (tmp_path / "maps" / "index.html").read_text()
    assert all(f'<img src="{png}"' in page for png in pngs.values())
    assert png_names(["TCGA-AB-01", "x" * 300])["TCGA-AB-01"] == "TCGA-AB-01.png"  # safe ids stay readable
    assert len(png_names(["x" * 300])["x" * 300]) < 120
