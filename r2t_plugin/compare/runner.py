"""The driver of a comparison: checks, splits, the grid with resume, and the final outputs.

Only the driver writes shared files. Per run it writes ``runs/{run_id}/predictions.csv``
(or ``traceback.txt``) first and the results row last, each atomically, so a run killed at
any moment leaves no partial row and no corrupt file; rerunning skips the runs that have
an ``ok`` row and redoes the others (``fit`` continues an interrupted run from its own
resume file).
"""
from __future__ import annotations

import contextlib
import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..io import TEMP_GLOB, atomic_write_text
from ..progress import ProgressBar, is_terminal
from .config import CompareConfig, ConfigError
from .cell import Plan, make_task, model_spec, open_cohort
from .engines import Engine, get_engine
from .grid import Cell, make_grid
from .manifest import ManifestMismatch, build_manifest, check_resumable, hash_data, write_manifest
from .plots import plot_all
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
                       patch_size=bag.patch_size, case_id=bag.case_id)
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


def _commit(out: Path, cell: Cell, outcome, table: ResultsTable) -> None:
    run_dir = out / "runs" / cell.run_id
    tb = run_dir / "traceback.txt"
    if outcome.traceback is not None:
        atomic_write_text(tb, outcome.traceback)
    else:
        atomic_write_text(run_dir / "predictions.csv", _predictions_csv(outcome.predictions))
        tb.unlink(missing_ok=True)
    table.record(outcome.row)  # the commit point of the run


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (released by the OS even on SIGKILL); remove temp files that a
    killed earlier driver left behind."""
    fh = open(out / ".lock", "w")
    try:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError as exc:
            raise ManifestMismatch(f"{out}: another r2t compare is running in this folder") from exc
        for stale in out.rglob(TEMP_GLOB):
            stale.unlink(missing_ok=True)
        yield
    finally:
        fh.close()


def run_compare(config: CompareConfig, *, engine: Engine | None = None, progress: bool = True,
                title: str | None = None) -> CompareOutcome:
    """Run (or resume) the comparison of ``config``; write every output under ``config.output``."""
    config.output.mkdir(parents=True, exist_ok=True)
    with _exclusive(config.output):
        return _run_compare(config, engine, progress, title)


def _run_compare(config: CompareConfig, engine: Engine | None, progress: bool, title: str | None) -> CompareOutcome:
    from ..data import cohort_strata, load_or_make_folds, preflight

    t0 = time.perf_counter()
    out = config.output
    cohort = open_cohort(config.cohort)
    report = preflight(cohort, skip_missing=config.cohort.skip_missing)
    checked = report.cohort
    case_ids = checked.case_ids
    in_dim = int(report.feature_dim)
    files = [p for c in case_ids for s in checked.slides(c) if (p := checked.slide_path(s)) is not None]
    manifest = build_manifest(config, hash_data(config.cohort.csv, files), extra={"cohort": {
        "cases": len(case_ids), "dropped": list(report.dropped), "feature_dim": in_dim,
        "classes": list(getattr(checked, "classes", []) or [])}})
    check_resumable(out / "manifest.json", manifest)
    task = make_task(config, checked)
    _check_models(config, checked, case_ids[0], in_dim, task.n_out)
    write_manifest(out / "manifest.json", manifest)
    folds = load_or_make_folds(out / "splits", case_ids, cohort_strata(checked), config.folds,
                               config.val_fraction, config.split_seed)

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

    rows = table.rows()
    summary = format_summary(rows, config, title=title, monitor=getattr(task, "monitor", None),
                             n_cases=len(case_ids))
    atomic_write_text(out / "summary.md", summary)
    predictions = {r["run_id"]: read_predictions(out / "runs" / r["run_id"]) for r in with_status(rows)}
    plots = plot_all(rows, config, predictions, out / "plots")
    return CompareOutcome(out, rows, summary, plots, time.perf_counter() - t0)

