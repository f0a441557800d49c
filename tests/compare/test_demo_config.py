"""The demo's configuration: enough pairs for the paired test, ABMIL beside a
permutation-invariant reference, every variant paired against plain."""
from __future__ import annotations

from pathlib import Path

import pytest

from r2t_plugin.compare.cli import demo_config, demo_spec
from r2t_plugin.compare.config import parse_config


@pytest.mark.parametrize("task", ["binary", "multiclass", "survival"])
def test_demo_config_parses_with_six_pairs_or_more(task, tmp_path):
    config = parse_config(demo_config(tmp_path / "c.csv", tmp_path, tmp_path / "out", task), source="demo")
    assert config.folds * len(config.seeds) >= 6  # a two-sided Wilcoxon test can reach p < 0.05
    assert [a.name for a in config.aggregators] == ["abmil", "mean"]
    assert [v.name for v in config.variants] == ["plain", "r2t"] and config.variants[1].r2t["layout"] == "coords"
    assert demo_spec(task).task == task

