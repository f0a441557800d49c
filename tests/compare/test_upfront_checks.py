"""Settings and cohorts that could only make every run fail (or train on nonsense) are
refused before any run: config values, the device, class counts, impossible folds."""
from __future__ import annotations

import copy

import pandas as pd
import pytest

from r2t_plugin.compare.config import ConfigError, check_device, parse_config
from r2t_plugin.compare.runner import run_compare
from r2t_plugin.data import SplitError

BASE = {
    "cohort": {"csv": "c.csv", "features": "f", "task": "classification"},
    "aggregators": ["abmil"],
    "folds": 2,
    "output": "o",
}


def _problems(**top) -> list[str]:
    cfg = copy.deepcopy(BASE)
    for key, value in top.items():
        if key.startswith("cohort_"):
            cfg["cohort"][key[7:]] = value
        else:
            cfg[key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, "/x")
    return err.value.problems


def test_training_settings_that_cannot_train_are_config_errors():
    problems = _problems(training={"patience": 0, "weight_decay": -1e-4})
    assert any(p.startswith("training.patience: must be >= 1") for p in problems)
    assert any(p.startswith("training.weight_decay: must be >= 0") for p in problems)


def test_seeds_outside_numpys_range_are_config_errors():
    assert _problems(seeds=[0, -1, 2**32]) == [
        "seeds: [-1, 4294967296] outside 0 .. 2**32 - 1 (numpy's seeds); use smaller non-negative seeds"]
    parse_config({**BASE, "seeds": [0, 2**32 - 1]}, "/x")


def test_an_unknown_format_is_one_config_error_listing_the_formats():
    (problem,) = _problems(cohort_format="clam")
    assert problem.startswith("cohort.format: 'clam' is not one of: ") and "clam_h5" in problem
    assert parse_config({**BASE, "cohort": {**BASE["cohort"], "format": "clam_h5"}}, "/x").cohort.format == "clam_h5"


def test_a_device_this_machine_lacks_is_refused(monkeypatch):
    import torch

    assert any(p.startswith("device: 'gpu' is not cpu, cuda or cuda:N") for p in _problems(device="gpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device: 'cuda', but this machine has no CUDA device; use device: cpu"):
        check_device(parse_config({**BASE, "device": "cuda"}, "/x"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:7', but this machine has 1 CUDA device\(s\) \(cuda:0 .. cuda:0\)"):
        check_device(parse_config({**BASE, "device": "cuda:7"}, "/x"))
    check_device(parse_config({**BASE, "device": "cuda:0"}, "/x"))
    # a Ray cluster elsewhere has its own devices
    check_device(parse_config({**BASE, "device": "cuda:7", "engine": "ray", "address": "auto", "gpus_per_run": 1}, "/x"))


def test_a_missing_device_stops_before_the_output_folder_is_made(tiny_config, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = parse_config({**tiny_config, "device": "cuda"})
    with pytest.raises(ConfigError, match="no CUDA device"):
        run_compare(cfg, progress=False)
    assert not cfg.output.exists()


def _cohort_copy(tiny_cohort, tmp_path, rows=None, relabel=None):
    table = pd.read_csv(tiny_cohort.csv, dtype=str)
    if rows is not None:
        table = table[table["case_id"].isin(table["case_id"].unique()[:rows])]
    if relabel:
        table.loc[table["case_id"] == table["case_id"].iloc[0], "label"] = relabel
    path = tmp_path / "cohort.csv"
    table.to_csv(path, index=False)
    return str(path)


def test_class_counts_are_printed_and_a_typo_class_is_refused(tiny_config, tiny_cohort, tmp_path, capsys):
    tiny_config["cohort"]["csv"] = _cohort_copy(tiny_cohort, tmp_path, relabel="O")  # O for 0
    cfg = parse_config(tiny_config)
    with pytest.raises(SplitError, match=r"class 'O' has 1 case\(s\), fewer than the 2 folds"):
        run_compare(cfg, progress=False)
    assert "16 cases; '0': 8, '1': 7, 'O': 1" in capsys.readouterr().out
    assert not (cfg.output / "manifest.json").exists() and not (cfg.output / "splits").exists()


def test_a_cohort_too_small_for_its_folds_is_refused_with_the_counts(tiny_config, tiny_cohort, tmp_path):
    """Four cases in two folds: each training and validation part holds one case, so lacks a class."""
    tiny_config["cohort"]["csv"] = _cohort_copy(tiny_cohort, tmp_path, rows=4)
    tiny_config["cohort"]["classes"] = [0, 1]  # listed: the class-count check lets it through
    cfg = parse_config(tiny_config)
    with pytest.raises(SplitError, match="no model can be trained and selected on these folds") as info:
        run_compare(cfg, progress=False)
    assert "fold 0: train" in str(info.value) and "fold 1: train" in str(info.value)
    assert not (cfg.output / "results.csv").exists() and not (cfg.output / "splits").exists()


def test_val_fraction_that_leaves_no_training_case_stops_before_any_run(tiny_config):
    cfg = parse_config({**tiny_config, "val_fraction": 0.95})
    with pytest.raises(SplitError, match="val_fraction 0.95 leaves no training case"):
        run_compare(cfg, progress=False)
    assert not (cfg.output / "results.csv").exists() and not (cfg.output / "runs").exists()


def test_patches_sharing_a_cell_stop_a_grid_with_the_coords_layout(tiny_config, tiny_cohort, tmp_path):
    import shutil

    import h5py

    from r2t_plugin.compare.runner import _coords_layout
    from r2t_plugin.data import PreflightError

    feats = tmp_path / "h5_files"
    shutil.copytree(tiny_cohort.feature_dir, feats)
    victim = sorted(feats.glob("*.h5"))[0]
    with h5py.File(victim, "r+") as f:
        coords = f["coords"][()]
        coords[1] = coords[0]
        f["coords"][...] = coords
    tiny_config["cohort"]["features"] = str(feats)
    cfg = parse_config(tiny_config)
    assert _coords_layout(cfg)
    with pytest.raises(PreflightError, match=f"slide '{victim.stem}'.*share a grid cell"):
        run_compare(cfg, progress=False)
    assert not (cfg.output / "results.csv").exists()
    sequence = copy.deepcopy(tiny_config)
    sequence["variants"][1]["r2t"]["layout"] = "sequence"
    assert not _coords_layout(parse_config(sequence))
    assert _coords_layout(parse_config({**sequence, "variants": "ablation"}))  # coords where the bags have them
