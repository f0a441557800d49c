"""Batch mode over the test split of an r2t compare run (its manifest, splits and best.pt)."""
from __future__ import annotations

import re

import pytest
import torch

from r2t_plugin.heatmap import load_test_split, run_checkpoint
from r2t_plugin.models import CheckpointError, ModelSpec, build_model, load_checkpoint, save_checkpoint

from .conftest import read_png


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """A comparison's folder as r2t compare leaves it, with one (untrained) finished run."""
    from r2t_plugin.compare.cell import model_spec, open_cohort
    from r2t_plugin.compare.config import parse_config
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
    spec = model_spec(cell, 8, 2, cohort)  # as the harness writes every run's best.pt
    save_checkpoint(out / "runs" / cell.run_id / "best.pt", build_model(spec).state_dict(), spec)
    return out, cell, cohort


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
