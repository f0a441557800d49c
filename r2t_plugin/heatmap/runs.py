"""Runs of ``r2t compare``: a run folder's checkpoint and the cases of its test split.

A comparison's output folder holds ``manifest.json`` (the config as given and the resolved
cohort paths), ``splits/fold_{i}.csv`` and one folder per run, ``runs/{run_id}/``, whose
``best.pt`` is a self-describing checkpoint (:mod:`r2t_plugin.models`): the model comes
from that file alone. The test split needs the rest: the run id ends in
``__fold{i}__seed{s}`` (see ``r2t_plugin.compare.grid.Cell.run_id``), which names the
fold in ``splits/``, and the manifest says where the cohort's table and features are.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..models import CheckpointError

__all__ = ["RunTestSplit", "run_checkpoint", "load_test_split"]

_FOLD = re.compile(r"__fold(\d+)__seed\d+$")


@dataclass(frozen=True)
class RunTestSplit:
    """The test cases of one run's fold and the cohort their bags are read from."""

    run_dir: Path
    cases: tuple[str, ...]
    cohort: Any  # r2t_plugin.data.Cohort


def _is_comparison(path: Path) -> bool:
    return (path / "manifest.json").is_file() and (path / "runs").is_dir()


def run_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint of ``path``: a run folder's ``best.pt``, or ``path`` itself if a file."""
    path = Path(path)
    if not path.is_dir():
        return path
    if _is_comparison(path):
        ids = sorted(p.name for p in (path / "runs").iterdir() if (p / "best.pt").is_file())
        raise CheckpointError(f"{path} is a whole comparison; pass one run folder, e.g. "
                              f"{path / 'runs' / (ids[0] if ids else '<run_id>')} ({len(ids)} finished runs)")
    if not (path / "best.pt").is_file():
        raise CheckpointError(f"{path}: no best.pt (not a run folder of r2t compare, or the run has not "
                              "finished an epoch)")
    return path / "best.pt"


def _cohort_config(root: Path) -> Any:
    """The comparison's cohort config, with the table and feature paths as it resolved them."""
    from ..compare.config import parse_config

    where = root / "manifest.json"
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
        resolved = manifest["resolved"]
        cohort = parse_config(manifest["config"], root, str(where)).cohort
        cohort = replace(cohort, csv=Path(resolved["cohort_csv"]),
                         features=tuple(Path(p) for p in resolved["features"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot read the comparison's cohort ({exc})") from exc
    if not cohort.csv.is_file():
        raise CheckpointError(f"{root}: the comparison's cohort table {cohort.csv} is not there any more")
    return cohort


def load_test_split(path: str | os.PathLike) -> RunTestSplit:
    """The test split of the run whose folder (or a file in it) is ``path``."""
    from ..compare.cell import open_cohort
    from ..data.splits import read_folds

    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    root = run_dir.parent.parent
    fold = _FOLD.search(run_dir.name)
    if run_dir.parent.name != "runs" or not _is_comparison(root) or fold is None:
        raise CheckpointError(f"{path}: the test split needs a run of r2t compare (its folder "
                              "runs/<run_id> next to manifest.json), not a stand-alone checkpoint")
    cohort = open_cohort(_cohort_config(root))
    folds = read_folds(root / "splits")
    index = int(fold.group(1))
    if index >= len(folds):
        raise CheckpointError(f"{root / 'splits'}: no fold {index} for run {run_dir.name}")
    return RunTestSplit(run_dir, tuple(folds[index].test), cohort)
