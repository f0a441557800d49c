"""Batch mode over the test split of an r2t compare run (its manifest, splits and best.pt)."""
from __future__ import annotations

import re

import pytest
import torch

from r2t_plugin.heatmap import CheckpointError, load_model

from .conftest import read_png


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """A comparison's folder as r2t compare leaves it, with one (untrained) finished run."""
    from r2t_plugin.compare.config import parse_config
    from r2t_plugin.compare.engine import build_model, open_cohort
    from r2t_plugin.compare.grid import make_grid
    from r2t_plugin.compare.manifest import build_manifest, write_manifest
    from r2t_plugin.data import cohort_strata, load_or_make_folds
    from r2t_plugin.data.synthetic import SyntheticSpec, generate_cohort

    root = tmp_path_factory.mktemp("compare")
    data = generate_cohort(root / "data", SyntheticSpec(n_cases=8, dim=8, min_patches=20, max_patches=40,
                                                        two_slide_fraction=0.5, seed=3))
    config = parse_config({
        "cohort": {"csv": str(data.csv), "features": str(data.feature_dir), "task": "classification"},
        "aggregators": [{"name": "abmil", "options": {"dim": 16}}],
        "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {"dim": 16, "heads": 2, "region_num": 2,
                                                                  "layout": "coords"}}],
        "folds": 2, "output": str(root / "out")}, root)
    out = config.output
    cohort = open_cohort(config.cohort)
    write_manifest(out / "manifest.json", build_manifest(config, {}, extra={"cohort": {
        "cases": len(cohort), "feature_dim": 8, "classes": list(cohort.classes)}}))
    load_or_make_folds(out / "splits", cohort.case_ids, cohort_strata(cohort), 2, 0.2, 0)
    cell = next(c for c in make_grid(config) if c.variant.name == "plain" and c.fold == 1)
    torch.manual_seed(0)
    (out / "runs" / cell.run_id).mkdir(parents=True)
    torch.save(build_model(cell, 8, 2).state_dict(), out / "runs" / cell.run_id / "best.pt")
    return out, cell, cohort


def test_run_folder_rebuilds_the_model(compare_run) -> None:
    out, cell, _ = compare_run
    loaded = load_model(out / "runs" / cell.run_id)
    assert loaded.spec.aggregator == "abmil" and loaded.spec.r2t is None
    assert loaded.spec.classes == ("0", "1") and loaded.spec.in_dim == 8
    assert load_model(out / "runs" / cell.run_id / "best.pt").spec == loaded.spec
    with pytest.raises(CheckpointError, match="whole comparison; pass one run folder"):
        load_model(out)


def test_test_split_batch(compare_run, tmp_path) -> None:
    from r2t_plugin.cli import main

    out, cell, cohort = compare_run
    run = load_model(out / "runs" / cell.run_id).run
    slides = [s for c in run.test_cases() for s in cohort.slides(c)]
    assert len(slides) > len(run.test_cases())  # some test case has two slides
    dest = tmp_path / "maps"
    assert main(["heatmap", "--checkpoint", str(out / "runs" / cell.run_id), "--test-split", "-o", str(dest)]) == 0
    pngs = sorted(p.stem for p in dest.glob("*.png"))
    assert pngs == sorted(slides)
    page = (dest / "index.html").read_text()
    assert len(re.findall(r'<img src="[^"]+\.png"', page)) == len(slides)
    for case in run.test_cases():
        assert f"true: {cohort.classes[cohort.target(case)['label']]}" in page
    assert page.count("predicted ") >= len(slides)
    assert read_png(dest / f"{slides[0]}.png").shape[1] >= 720


def test_batch_needs_a_compare_run(tmp_path, capsys) -> None:
    from r2t_plugin.cli import main
    from r2t_plugin.heatmap import ModelSpec, build_model, save_model

    spec = ModelSpec("abmil", 8, 2, options={"dim": 16})
    ckpt = save_model(tmp_path / "m.pt", build_model(spec), spec)
    assert main(["heatmap", "--checkpoint", str(ckpt), "--test-split", "-o", str(tmp_path / "o")]) == 2
    assert "needs a run of r2t compare" in capsys.readouterr().err
