"""A tiny synthetic cohort and a tiny compare config shared by the compare tests."""
from __future__ import annotations

import copy
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from r2t_plugin.data.synthetic import SyntheticSpec, generate_cohort

TINY_SPEC = SyntheticSpec(n_cases=16, min_patches=30, max_patches=60, dim=8, two_slide_fraction=0.25)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("tiny_cohort"), TINY_SPEC)


@pytest.fixture
def tiny_config(tiny_cohort, tmp_path):
    """A 2 aggregators x 2 variants x 2 folds grid with tiny widths and 2 epochs."""
    return copy.deepcopy({
        "cohort": {"csv": str(tiny_cohort.csv), "features": str(tiny_cohort.feature_dir),
                   "task": "classification", "cache": True},
        "aggregators": [{"name": "abmil", "options": {"dim": 8, "hidden": 4}},
                        {"name": "mean", "options": {"dim": 8}}],
        "variants": [{"name": "plain"},
                     {"name": "r2t", "r2t": {"layout": "coords", "heads": 2, "crmsa_heads": 2, "epeg_k": 3}}],
        "folds": 2,
        "seeds": [0],
        "val_fraction": 0.3,
        "training": {"epochs": 2, "lr": 1e-3, "num_threads": 1},
        "output": str(tmp_path / "out"),
    })


@pytest.fixture
def mini_config(tiny_config):
    """The smallest grid that writes every output: mean-MIL, plain, 2 folds, 1 epoch (~1 s)."""
    tiny_config["aggregators"] = [tiny_config["aggregators"][1]]
    tiny_config["variants"] = [{"name": "plain"}]
    tiny_config["training"]["epochs"] = 1
    return tiny_config


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sigkill_mid_run(args: list[str], out: Path, timeout: float = 300) -> None:
    """Run ``r2t compare ARGS`` in a subprocess and SIGKILL it in the middle of a run: after
    one run has finished, while another has a resume file (``last.pt``) but no row yet."""
    proc = subprocess.Popen([sys.executable, "-m", "r2t_plugin.cli", "compare", *args, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            done = {r["run_id"] for r in read_rows(out / "results.csv")} if (out / "results.csv").is_file() else set()
            if done and any((d / "last.pt").is_file() and d.name not in done for d in (out / "runs").iterdir()):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the grid finished (or failed) before it could be killed"
        assert time.time() < deadline, f"no run finished within {timeout:g} s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
