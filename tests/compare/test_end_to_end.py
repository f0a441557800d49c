"""A tiny grid end to end, a failing run, and resume after SIGKILL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.manifest import ManifestMismatch
from r2t_plugin.compare.runner import run_compare
from r2t_plugin.models import load_checkpoint
from r2t_plugin.plugins import registry

from .conftest import read_rows, sigkill_mid_run, write_yaml

TIMING = {"seconds", "peak_memory_mb"}
PNG = b"\x89PNG\r\n\x1a\n"


def _file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every file below ``folder``: an atomic rewrite changes both."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_grid_writes_every_output(tiny_config, tiny_cohort):
    cfg = parse_config(tiny_config)
    outcome = run_compare(cfg, progress=False)
    out = cfg.output
    rows = read_rows(out / "results.csv")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert {(r["aggregator"], r["variant"]) for r in rows} == {(a, v) for a in ("abmil", "mean") for v in ("plain", "r2t")}
    for col in ("val_auc", "test_auc", "test_balanced_accuracy", "test_accuracy", "test_f1_macro", "epochs",
                "best_epoch", "seconds", "peak_memory_mb", "params"):
        assert col in rows[0], col
    params = {(r["aggregator"], r["variant"]): int(r["params"]) for r in rows}
    assert params[("abmil", "r2t")] > params[("abmil", "plain")]  # the R²T stage is really there
    summary = (out / "summary.md").read_text()
    assert summary == outcome.summary
    assert "| abmil | r2t | 2 |" in summary and "+R²T − plain" in summary and "Wilcoxon" in summary
    for name in ("metrics.png", "roc.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["folds"] == 2
    assert manifest["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    data = manifest["fingerprint"]["data"]
    assert len(data["cohort_csv"]) == 64 and len(data["feature_files"]) == len(list(tiny_cohort.feature_dir.glob("*.h5")))
    assert "git" in manifest
    assert (out / "splits" / "fold_0.csv").is_file() and (out / "splits" / "fold_1.csv").is_file()
    run = out / "runs" / rows[0]["run_id"]
    assert (run / "log.csv").is_file() and (run / "best.pt").is_file()
    # best.pt rebuilds the selected model on its own (no manifest needed)
    for r in rows[:2]:
        model, spec = load_checkpoint(out / "runs" / r["run_id"] / "best.pt")
        variant = next(v for v in tiny_config["variants"] if v["name"] == r["variant"])
        r2t = None if variant.get("r2t") is None else {"residual": True, **variant["r2t"]}  # recorded explicitly
        assert (spec.aggregator, spec.in_dim, spec.n_out, spec.r2t) == ("abmil", 8, 2, r2t)
        assert spec.options == {"dim": 8, "hidden": 4} and len(spec.classes) == 2
        assert sum(p.numel() for p in model.parameters()) == int(r["params"])
    preds = read_rows(run / "predictions.csv")
    assert {p["part"] for p in preds} == {"test"} and "prob_1" in preds[0]
    # the same splits for every model: test cases of a fold are the same in every run
    tests = {r["run_id"]: sorted(p["case_id"] for p in read_rows(out / "runs" / r["run_id"] / "predictions.csv")
                                 if p["part"] == "test") for r in rows if r["fold"] == "0"}
    assert len({tuple(v) for v in tests.values()}) == 1
    # a second run skips everything that finished: no file of any run is written again
    before, files = (out / "results.csv").read_text(), _file_stamps(out / "runs")
    again = run_compare(cfg, progress=False)
    assert (out / "results.csv").read_text() == before and _file_stamps(out / "runs") == files
    assert again.rows == outcome.rows


def test_changed_settings_refuse_the_same_output(tiny_config):
    tiny_config["aggregators"] = tiny_config["aggregators"][1:]
    tiny_config["variants"] = tiny_config["variants"][:1]
    tiny_config["training"]["epochs"] = 1
    run_compare(parse_config(tiny_config), progress=False)
    tiny_config["seeds"] = [0, 1]  # growing the grid is allowed
    assert len(run_compare(parse_config(tiny_config), progress=False).rows) == 4
    tiny_config["training"]["epochs"] = 3
    with pytest.raises(ManifestMismatch, match="training"):
        run_compare(parse_config(tiny_config), progress=False)


class _Boom(nn.Module):
    """An aggregator that fails while training (it passes the eval-mode model check)."""

    def __init__(self, in_dim: int, n_out: int, **_) -> None:
        super().__init__()
        self.head = nn.Linear(in_dim, n_out)

    def forward(self, x, mask=None, coords=None, patch_size=None):
        feats = x.features if hasattr(x, "features") else x
        if self.training:
            raise RuntimeError("boom while training")
        return {"logits": self.head(feats.mean(dim=1)), "instance_scores": feats[..., 0]}


def test_failing_run_is_recorded_and_the_rest_complete(tiny_config):
    if "test_boom" not in registry("aggregators"):
        registry("aggregators").add("test_boom", _Boom)
    tiny_config["aggregators"] = [tiny_config["aggregators"][0], {"name": "test_boom"}]
    tiny_config["variants"] = [{"name": "plain"}]
    cfg = parse_config(tiny_config)
    outcome = run_compare(cfg, progress=False)
    rows = {r["run_id"]: r for r in read_rows(cfg.output / "results.csv")}
    assert len(rows) == 4
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert sorted(r["aggregator"] for r in failed) == ["test_boom", "test_boom"]
    assert all("boom while training" in r["error"] for r in failed)
    assert all(rows[f"abmil__plain__fold{f}__seed0"]["status"] == "ok" for f in (0, 1))
    for r in failed:
        tb = (cfg.output / "runs" / r["run_id"] / "traceback.txt").read_text()
        assert "Traceback" in tb and "RuntimeError: boom while training" in tb
    assert "## Failed runs" in outcome.summary and "test_boom__plain__fold0__seed0" in outcome.summary
    assert len(outcome.failed) == 2


def _comparable(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_rows(path)]


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_config, tmp_path):
    tiny_config["aggregators"] = tiny_config["aggregators"][:1]
    straight = parse_config(dict(tiny_config, output=str(tmp_path / "straight")))
    run_compare(straight, progress=False)

    killed = dict(tiny_config, output=str(tmp_path / "killed"))
    config_path = write_yaml(tmp_path / "killed.yaml", killed)
    out = Path(killed["output"])
    sigkill_mid_run([config_path], out)
    partial = read_rows(out / "results.csv")
    assert 1 <= len(partial) < 4
    assert all(r["status"] == "ok" for r in partial)  # whole rows only
    assert any((d / "last.pt").is_file() for d in (out / "runs").iterdir()), "killed mid-run"

    resumed = run_compare(parse_config(killed), progress=False)
    assert _comparable(out / "results.csv") == _comparable(straight.output / "results.csv")
    assert len(resumed.rows) == 4 and (out / "summary.md").is_file() and (out / "plots" / "roc.png").is_file()


def test_survival_grid(tmp_path):
    from r2t_plugin.data.synthetic import SyntheticSpec, generate_cohort

    cohort = generate_cohort(tmp_path / "surv", SyntheticSpec(task="survival", n_cases=16, min_patches=30,
                                                                max_patches=60, dim=8))
    cfg = parse_config({
        "cohort": {"csv": str(cohort.csv), "features": str(cohort.feature_dir), "task": "survival", "n_bins": 2,
                   "cache": True},
        "aggregators": [{"name": "abmil", "options": {"dim": 8, "hidden": 4}}],
        "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {"heads": 2, "crmsa_heads": 2, "epeg_k": 3}}],
        "folds": 2, "val_fraction": 0.3, "training": {"epochs": 1, "num_threads": 1}, "output": str(tmp_path / "out"),
    })
    outcome = run_compare(cfg, progress=False)
    rows = read_rows(cfg.output / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows) and "test_c_index" in rows[0]
    preds = read_rows(cfg.output / "runs" / rows[0]["run_id"] / "predictions.csv")
    assert {p["part"] for p in preds} == {"val", "test"} and {"time", "event", "risk"} <= set(preds[0])
    assert (cfg.output / "plots" / "km.png").is_file() and "c_index" in outcome.summary
