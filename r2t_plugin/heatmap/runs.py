"""Models and test splits of ``r2t compare`` runs.

A comparison's output folder holds ``manifest.json`` (the config as given, the resolved
cohort paths, the feature width and class names), ``splits/fold_{i}.csv`` and one folder
per run, ``runs/{run_id}/best.pt`` (the selected ``state_dict``). The run id names the
grid cell (aggregator id, variant, fold, seed), which rebuilds the model exactly as the
harness built it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .model import CheckpointError, LoadedModel, ModelSpec, load_state

__all__ = ["CompareRun", "is_compare_run", "find_run", "load_compare_run"]


@dataclass(frozen=True)
class CompareRun:
    """One run of a comparison: its folder, the validated config and its grid cell."""

    root: Path
    run_dir: Path
    config: Any  # r2t_plugin.compare.CompareConfig
    cell: Any  # r2t_plugin.compare.grid.Cell
    manifest: dict[str, Any]

    def cohort(self) -> Any:
        """The cohort the comparison ran on (its resolved table and feature folders)."""
        from ..compare.engine import open_cohort

        csv = self.config.cohort.csv
        if not Path(csv).is_file():
            raise CheckpointError(f"{self.root}: the comparison's cohort table {csv} is not there any more")
        return open_cohort(self.config.cohort)

    def test_cases(self) -> list[str]:
        """Case ids of the test part of this run's fold (from ``splits/``)."""
        from ..data.splits import read_folds

        folds = read_folds(self.root / "splits")
        if self.cell.fold >= len(folds):
            raise CheckpointError(f"{self.root / 'splits'}: no fold {self.cell.fold} for run {self.cell.run_id}")
        return list(folds[self.cell.fold].test)


def _run_dir_of(path: Path) -> Path | None:
    run_dir = path if path.is_dir() else path.parent
    if run_dir.parent.name == "runs" and (run_dir.parent.parent / "manifest.json").is_file():
        return run_dir
    return None


def is_compare_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run folder of a comparison or a checkpoint inside one."""
    return _run_dir_of(Path(path)) is not None


def find_run(path: str | os.PathLike) -> CompareRun:
    """The :class:`CompareRun` of a run folder (or a file in it)."""
    from ..compare.config import parse_config
    from ..compare.grid import make_grid

    path = Path(path)
    run_dir = _run_dir_of(path)
    if run_dir is None:
        if (path / "manifest.json").is_file() and (path / "runs").is_dir():
            ids = sorted(p.name for p in (path / "runs").iterdir() if (p / "best.pt").is_file())
            raise CheckpointError(f"{path} is a whole comparison; pass one run folder, e.g. "
                                  f"{path / 'runs' / (ids[0] if ids else '<run_id>')} ({len(ids)} finished runs)")
        raise CheckpointError(f"{path}: not a run folder of r2t compare (expected .../runs/<run_id>/ "
                              "next to manifest.json)")
    root = run_dir.parent.parent
    try:
        with open(root / "manifest.json", encoding="utf-8") as fh:
            manifest = json.load(fh)
        resolved = manifest["resolved"]
        config = parse_config(manifest["config"], root, str(root / "manifest.json"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{root / 'manifest.json'}: cannot read the comparison's config ({exc})") from exc
    cohort = replace(config.cohort, csv=Path(resolved["cohort_csv"]),
                     features=tuple(Path(p) for p in resolved["features"]))
    config = replace(config, cohort=cohort, output=root)
    cells = {c.run_id: c for c in make_grid(config)}
    if run_dir.name not in cells:
        raise CheckpointError(f"{run_dir}: run id {run_dir.name!r} is not in this comparison's grid")
    return CompareRun(root, run_dir, config, cells[run_dir.name], manifest)


def load_compare_run(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the selected (best-on-validation) model of a comparison run."""
    from ..compare.engine import build_model

    run = find_run(path)
    ckpt = Path(path) if Path(path).is_file() else run.run_dir / "best.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"{run.run_dir}: no best.pt (the run has not finished an epoch)")
    info = run.manifest.get("cohort", {})
    cfg = run.config
    classes = tuple(str(c) for c in info.get("classes") or ())
    if cfg.cohort.task == "classification":
        if not classes:
            raise CheckpointError(f"{run.root / 'manifest.json'}: no class names under cohort.classes")
        n_out = len(classes)
    else:
        n_out = cfg.cohort.n_bins
    if "feature_dim" not in info:
        raise CheckpointError(f"{run.root / 'manifest.json'}: no cohort.feature_dim")
    in_dim = int(info["feature_dim"])
    cell = run.cell
    spec = ModelSpec(aggregator=cell.aggregator.name, in_dim=in_dim, n_out=n_out, task=cfg.cohort.task,
                     options=dict(cell.aggregator.options), r2t=cell.variant.r2t, classes=classes,
                     name=f"{cell.aggregator.id} ({cell.variant.name}, fold {cell.fold}, seed {cell.seed})")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{ckpt}: not a readable torch checkpoint ({type(exc).__name__})") from exc
    torch.manual_seed(0)
    model = build_model(cell, in_dim, n_out)
    return LoadedModel(load_state(model, state, ckpt), spec, ckpt, run)
