"""The driver of a comparison: checks, splits, the grid with resume, and the final outputs.

Only the driver writes shared files. Per run it writes ``runs/{run_id}/predictions.csv``
(or ``traceback.txt``) first and the results row last, each atomically, so a run killed at
any moment leaves no partial row and no corrupt file; rerunning skips the runs that have
an ``ok`` row and redoes the others (``fit`` continues an interrupted run from its own
resume file).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.cohort import CohortError
from ..io import atomic_write_text, sha256_file
from ..progress import ProgressBar, is_terminal
from .config import CompareConfig, ConfigError, check_device
from .cell import Plan, make_task, model_spec, open_cohort
from .engines import Engine, get_engine
from .grid import Cell, make_grid, resolve_variants
from .folder import HASH_CACHE, MANIFEST, check_output, exclusive
from .manifest import build_manifest, check_resumable, hash_data, write_manifest
from .plots import plot_all
from .integrity import grid_rows
from .report import format_summary
from .results import ResultsTable, read_rows, with_status

__all__ = ["CompareOutcome", "run_compare", "read_predictions"]


@dataclass
class CompareOutcome:
    """What a comparison produced."""

    output: Path
    rows: list[dict[str, Any]]
    summary: str
    plots: list[Path]
    seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        return with_status(self.rows, "failed")


def _predictions_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    return buf.getvalue()


def read_predictions(run_dir: Path) -> list[dict[str, Any]]:
    """The per-case predictions a finished run left in ``run_dir``."""
    path = run_dir / "predictions.csv"
    return read_rows(path) if path.is_file() else []


def _check_models(config: CompareConfig, cohort, case_id: str, in_dim: int, n_out: int) -> None:
    """Build every aggregator x variant once and run it on part of a real bag (eval mode),
    so that bad options fail now, with the config path, not in every run."""
    from ..bag import BagBatch, FeatureBag
    from ..models import build_model

    bag = cohort.load_case(case_id)
    n = min(bag.n, 64)
    small = FeatureBag(features=bag.features[:n], coords=None if bag.coords is None else bag.coords[:n],
                       patch_size=bag.patch_size, grid_step=bag.grid_step, case_id=bag.case_id)
    batch = BagBatch.collate([small])
    problems = []
    for i, agg in enumerate(config.aggregators):
        for j, var in enumerate(config.variants):
            if var.r2t is not None and var.r2t.get("layout") == "coords" and bag.coords is None:
                problems.append(f"variants[{j}].r2t.layout: 'coords' needs coordinates, but the bags of "
                                "this cohort have none; use layout: sequence")
                continue
            try:
                torch.manual_seed(0)
                model = build_model(model_spec(Cell(agg, var, 0, 0), in_dim, n_out, cohort)).eval()
                with torch.no_grad():
                    model(batch)
            except Exception as exc:  # noqa: BLE001 - reported with the config path
                where = f"aggregators[{i}] ({agg.id})" + ("" if var.is_plain else f" with variants[{j}] ({var.name})")
                problems.append(f"{where}: {type(exc).__name__}: {exc}".splitlines()[0])
    if problems:
        raise ConfigError(sorted(set(problems)), "models")


def _check_classes(cohort, config: CompareConfig) -> None:
    """A classification needs cases of two classes or more."""
    if cohort.kind == "classification" and len(present := sorted(set(cohort.labels()))) < 2:
        found = [cohort.classes[i] for i in present]
        raise CohortError(f"{cohort.source}: column {config.cohort.label_column!r} holds a single class "
                          f"{found} over the {len(cohort)} cases; a classification needs two or more (check "
                          "cohort.label_column, or use task: survival)")


def _coords_layout(config: CompareConfig) -> bool:
    """Whether a variant uses R²T's coords layout (``variants: ablation`` does, on bags with
    coordinates): then two patches in one grid cell are a pre-flight problem."""
    return any((v.r2t or {}).get("layout") == "coords" for v in resolve_variants(config, True).variants)


def _target_counts(cohort, config: CompareConfig) -> dict[str, int]:
    """Cases per class (survival: event / censored), printed before training. A class with
    fewer cases than folds (a label typo?) is refused unless the config lists the classes."""
    from ..data.splits import check_class_counts, target_counts

    counts = target_counts(cohort)
    print(f"{cohort.source}: {len(cohort)} cases; " + ", ".join(f"{k!r}: {n}" for k, n in counts.items()),
          flush=True)
    if cohort.kind == "classification" and not config.splits:
        check_class_counts(counts, config.folds, explicit=config.cohort.classes is not None)
    return counts


def _commit(out: Path, cell: Cell, outcome, table: ResultsTable) -> None:
    if outcome.disk_full is not None:  # stop the grid: every later run would fail the same way
        raise outcome.disk_full
    run_dir = out / "runs" / cell.run_id
    tb = run_dir / "traceback.txt"
    if outcome.traceback is not None:
        atomic_write_text(tb, outcome.traceback)
    else:
        atomic_write_text(run_dir / "predictions.csv", _predictions_csv(outcome.predictions))
        tb.unlink(missing_ok=True)
    table.record(outcome.row)  # the commit point of the run


def run_compare(config: CompareConfig, *, engine: Engine | None = None, progress: bool = True,
                title: str | None = None) -> CompareOutcome:
    """Run (or resume) the comparison of ``config``; write every output under ``config.output``
    (a new or empty folder, or one of an earlier comparison: :func:`.folder.check_output`)."""
    check_device(config)  # before anything is created
    check_output(config.output)
    config.output.mkdir(parents=True, exist_ok=True)
    with exclusive(config.output):
        return _run_compare(config, engine, progress, title)


def _clam_folds(config: CompareConfig, cohort, case_ids: list[str]) -> list:
    """The folds of the CLAM split files named by ``splits:`` (checked for leakage), also
    written to ``splits/`` in the harness's own layout."""
    from ..data.clam_splits import read_clam_splits
    from ..data.splits import write_folds

    folds = read_clam_splits(config.splits, cohort, case_ids)
    write_folds(folds, config.output / "splits", {"source": "clam", "disjoint_tests": False,
                                                  "files": [str(p) for p in config.splits]})
    return folds


def _run_compare(config: CompareConfig, engine: Engine | None, progress: bool, title: str | None) -> CompareOutcome:
    from ..data import cohort_strata, load_or_make_folds, preflight
    from ..data.splits import fold_targets

    t0 = time.perf_counter()
    out = config.output
    cohort = open_cohort(config.cohort)
    report = preflight(cohort, skip_missing=config.cohort.skip_missing, one_per_cell=_coords_layout(config),
                       standardized=config.cohort.standardize)  # z-scored per fold: large values are harmless
    checked = report.cohort
    case_ids = checked.case_ids
    in_dim = int(report.feature_dim)
    _check_classes(checked, config)
    counts = _target_counts(checked, config)
    config = resolve_variants(config, checked.load_case(case_ids[0]).coords is not None)  # variants: ablation
    files = [p for c in case_ids for s in checked.slides(c) if (p := checked.slide_path(s)) is not None]
    data = hash_data(config.cohort.csv, files, config.cohort.features, cache=out / HASH_CACHE)
    manifest = build_manifest(config, data, extra={"cohort": {
        "cases": len(case_ids), "dropped": list(report.dropped), "feature_dim": in_dim,
        "classes": list(getattr(checked, "classes", []) or [])},
        **({"clam_splits": {str(p): sha256_file(p) for p in config.splits}} if config.splits else {})})
    check_resumable(out / MANIFEST, manifest)
    task = make_task(config, checked)
    _check_models(config, checked, case_ids[0], in_dim, task.n_out)
    folds = (_clam_folds(config, cohort, case_ids) if config.splits else
             load_or_make_folds(out / "splits", case_ids, cohort_strata(checked), config.folds,
                                config.val_fraction, config.split_seed, targets=fold_targets(checked)))
    write_manifest(out / MANIFEST, manifest)  # only now: every check passed and the splits exist

    grid = make_grid(config)
    table = ResultsTable(out / "results.csv", [c.run_id for c in grid])
    done = table.finished()
    todo = [c for c in grid if c.run_id not in done]
    # each run's own epoch bar only on a terminal: a log gets one line per finished run
    plan = Plan(config, tuple(folds), in_dim, out / "runs", progress and is_terminal())
    engine = engine or get_engine(config)
    with ProgressBar(len(grid), "compare", "run", initial=len(grid) - len(todo), enabled=progress) as bar:
        for cell, outcome in engine.run(todo, plan):
            _commit(out, cell, outcome, table)
            bar.step(f"{cell.run_id} {outcome.row['status']}")

    rows = grid_rows(table.rows(), config)  # results.csv may hold rows of a grid configured before
    predictions = {r["run_id"]: read_predictions(out / "runs" / r["run_id"]) for r in with_status(rows)}
    summary = format_summary(table.rows(), config, title=title, monitor=getattr(task, "monitor", None),
                             n_cases=len(case_ids), target_counts=counts, predictions=predictions)
    atomic_write_text(out / "summary.md", summary)
    plots = plot_all(rows, config, predictions, out / "plots")
    return CompareOutcome(out, rows, summary, plots, time.perf_counter() - t0)

