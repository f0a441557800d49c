"""``splits:`` naming a CLAM experiment's splits_{i}.csv: the comparison runs on those folds."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.runner import run_compare
from r2t_plugin.data import SplitError

from .conftest import read_rows


def _clam_split(path, parts):
    """CLAM's save_splits layout: unnamed index column, one column of slide ids per part."""
    df = pd.concat([pd.Series(parts[p], dtype=object) for p in ("train", "val", "test")], ignore_index=True, axis=1)
    df.columns = ["train", "val", "test"]
    df.to_csv(path)


def _write_clam_folds(tiny_cohort, folder, leak: bool = False):
    table = pd.read_csv(tiny_cohort.csv, dtype=str)
    cases = list(dict.fromkeys(table["case_id"]))
    slides = {c: list(table.loc[table["case_id"] == c, "slide_id"]) for c in cases}
    folder.mkdir(parents=True)
    expected = []
    for i in range(2):
        test, val = cases[i::4], cases[i + 2::8]
        train = [c for c in cases if c not in test and c not in val]
        parts = {"train": [s for c in train for s in slides[c]], "val": [s for c in val for s in slides[c]],
                 "test": [s for c in test for s in slides[c]]}
        if leak:  # one slide of a two-slide training case in the test part
            two = next(c for c in train if len(slides[c]) > 1)
            parts["train"].remove(slides[two][1])
            parts["test"].append(slides[two][1])
        _clam_split(folder / f"splits_{i}.csv", parts)
        expected.append({"train": sorted(train), "val": sorted(val), "test": sorted(test)})
    return expected


def test_compare_runs_on_clam_folds(mini_config, tiny_cohort, tmp_path):
    expected = _write_clam_folds(tiny_cohort, tmp_path / "clam" / "splits" / "task_100")
    del mini_config["folds"]
    mini_config["splits"] = str(tmp_path / "clam" / "splits" / "task_100")
    cfg = parse_config(mini_config)
    assert cfg.folds == 2
    run_compare(cfg, progress=False)
    out = cfg.output
    rows = read_rows(out / "results.csv")
    assert sorted(r["fold"] for r in rows) == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    for i, want in enumerate(expected):
        got = {p: sorted(r["case_id"] for r in read_rows(out / "splits" / f"fold_{i}.csv") if r["part"] == p)
               for p in want}
        assert got == want
        run = next(r["run_id"] for r in rows if r["fold"] == str(i))
        tested = sorted(p["case_id"] for p in read_rows(out / "runs" / run / "predictions.csv") if p["part"] == "test")
        assert tested == want["test"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["clam_splits"]) == [str(cfg.splits[0]), str(cfg.splits[1])]


def test_clam_folds_with_patient_leakage_are_refused(mini_config, tiny_cohort, tmp_path):
    _write_clam_folds(tiny_cohort, tmp_path / "leak", leak=True)
    del mini_config["folds"]
    mini_config["splits"] = str(tmp_path / "leak")
    cfg = parse_config(mini_config)
    with pytest.raises(SplitError, match=r"splits_0.csv: case '.*' has slides in train and test.*leakage"):
        run_compare(cfg, progress=False)
    assert not (cfg.output / "results.csv").exists()
