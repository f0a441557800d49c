"""Running the cells of a grid: a pure worker function and the engines that call it.

:func:`run_cell` is all a worker executes: from a :class:`Cell` and the :class:`Plan` it
builds the model (``create_aggregator``, wrapped with ``with_r2t`` for an R²T variant),
trains it with :func:`r2t_plugin.train.fit` in ``runs/{run_id}/`` (log, best checkpoint,
its own resume file), predicts the test cases (and, for survival, the validation cases)
with the best checkpoint and returns a :class:`CellOutcome` (the results row and the predictions). It never raises:
an exception becomes a ``failed`` outcome with its traceback. Only the driver writes
``results.csv`` and the other shared files, so an engine that runs cells elsewhere (a Ray
task per cell, say) only has to implement :meth:`Engine.run`.
"""
from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..bag import FeatureBag
from .config import CohortConfig, CompareConfig
from .grid import Cell

__all__ = ["Plan", "CellOutcome", "Engine", "LocalEngine", "run_cell", "build_model", "open_cohort",
           "make_task", "get_engine", "standardized"]


@dataclass(frozen=True)
class Plan:
    """What every cell needs besides its own coordinates (picklable)."""

    config: CompareConfig
    folds: tuple[Any, ...]  # r2t_plugin.data.Fold
    in_dim: int
    run_root: Path
    progress: bool = True


@dataclass
class CellOutcome:
    """A finished cell: its results row, per-case predictions, and the traceback if it failed."""

    row: dict[str, Any]
    predictions: list[dict[str, Any]]
    traceback: str | None = None


@functools.lru_cache(maxsize=4)
def open_cohort(cfg: CohortConfig):
    """The :class:`~r2t_plugin.data.Cohort` of a cohort config (one per process)."""
    from ..data import Cohort

    if cfg.task == "classification":
        targets = dict(label_col=cfg.label_column, classes=cfg.classes)
    else:
        targets = dict(time_col=cfg.time_column, event_col=cfg.event_column,
                       censorship_col=cfg.censorship_column)
    return Cohort(cfg.csv, list(cfg.features), format=cfg.format, cache=cfg.cache, **targets)


def make_task(config: CompareConfig, cohort):
    """A fresh task object for ``cohort`` (fitted per run on its training bags)."""
    from ..tasks import task_for_cohort

    return task_for_cohort(cohort, n_bins=config.cohort.n_bins)


def build_model(cell: Cell, in_dim: int, n_out: int) -> nn.Module:
    """The model of a cell: the aggregator, with R²T in front for an R²T variant."""
    from ..plugins import create_aggregator
    from ..wrap import with_r2t

    model = create_aggregator(cell.aggregator.name, in_dim, n_out, **cell.aggregator.options)
    if cell.variant.r2t is not None:
        model = with_r2t(model, **cell.variant.r2t)
    return model


class _Scaled(Sequence):
    """Bags with features z-scored by a fixed mean and std (applied when indexed)."""

    def __init__(self, bags: Sequence[FeatureBag], mean: torch.Tensor, std: torch.Tensor) -> None:
        self.bags, self.mean, self.std = bags, mean, std

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i):  # type: ignore[override]
        bag = self.bags[i]
        return dataclasses.replace(bag, features=(bag.features - self.mean) / self.std)


def standardized(train: Sequence[FeatureBag], *others: Sequence[FeatureBag]) -> list[Sequence[FeatureBag]]:
    """Every part z-scored per feature with the mean and std of the TRAINING instances."""
    x = torch.cat([bag.features for bag in train]).double()
    mean, std = x.mean(0).float(), x.std(0).clamp_min(1e-6).float()
    return [_Scaled(part, mean, std) for part in (train, *others)]


def _prediction_rows(task, part: str, bags, logits: torch.Tensor) -> list[dict[str, Any]]:
    from ..tasks import risk_from_logits

    rows = []
    if task.kind == "classification":
        probs = torch.softmax(logits.float(), dim=1)
        for bag, p in zip(bags, probs.tolist()):
            rows.append({"case_id": bag.case_id, "part": part, "label": bag.label,
                         **{f"prob_{k}": v for k, v in enumerate(p)}})
    else:
        risk = risk_from_logits(logits.float()).reshape(-1).tolist()
        for bag, r in zip(bags, risk):
            rows.append({"case_id": bag.case_id, "part": part, "time": bag.time, "event": bag.event,
                         "risk": r})
    return rows


def run_cell(cell: Cell, plan: Plan) -> CellOutcome:
    """Train and evaluate one cell; never raises (a failure is a ``failed`` outcome)."""
    try:
        return _run_cell(cell, plan)
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the grid
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        row = {**cell.key(), "status": "failed", "error": message}
        return CellOutcome(row, [], traceback.format_exc())


def _run_cell(cell: Cell, plan: Plan) -> CellOutcome:
    from ..train import TrainConfig, evaluate, fit, seed_everything

    cfg = plan.config
    cohort = open_cohort(cfg.cohort)
    task = make_task(cfg, cohort)
    fold = plan.folds[cell.fold]
    train, val, test = (cohort.bags(list(ids)) for ids in (fold.train, fold.val, fold.test))
    if cfg.cohort.standardize:
        train, val, test = standardized(train, val, test)
    seed_everything(cell.seed)
    model = build_model(cell, plan.in_dim, task.n_out)
    tcfg = TrainConfig(**cfg.training, seed=cell.seed, device=cfg.device, progress=plan.progress, resume=True)
    run_dir = plan.run_root / cell.run_id
    result = fit(model, task, train, val, test, tcfg, run_dir)
    # predictions of the selected (best-on-validation) checkpoint, for the ROC / KM plots;
    # survival also needs the validation risks (the KM risk-group cut is their median)
    task.fit(train)
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    preds: list[dict[str, Any]] = []
    parts = (("val", val), ("test", test)) if task.kind == "survival" else (("test", test),)
    for part, bags in parts:
        _, logits = evaluate(model, task, bags, batch_size=tcfg.batch_size, device=cfg.device, amp=tcfg.amp)
        preds += _prediction_rows(task, part, bags, logits)
    d = result.as_dict()
    row = {**cell.key(), "status": "ok",
           **{k: v for k, v in d.items() if k.startswith(("val_", "test_"))},
           "epochs": d["epochs_run"], "best_epoch": d["best_epoch"], "seconds": d["seconds"],
           "peak_memory_mb": d["peak_memory_mb"], "params": d["n_params"]}
    return CellOutcome(row, preds)


class Engine(Protocol):
    """Runs cells and yields each outcome as it finishes (in any order)."""

    name: str

    def run(self, cells: Iterable[Cell], plan: Plan) -> Iterator[tuple[Cell, CellOutcome]]: ...


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # the driver died (e.g. SIGKILL): stop at once
            os._exit(1)


def _worker_init(threads: int, driver: int) -> None:
    """Worker process set-up: ``threads`` torch threads; exit when the driver (pid) dies."""
    if os.getppid() != driver:  # the driver died while this worker was starting
        os._exit(1)
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(driver,), daemon=True).start()


def _epochs_logged(run_dir: Path) -> int:
    """Epochs a running fit has logged so far (lines of its ``log.csv``)."""
    try:
        with open(run_dir / "log.csv", encoding="utf-8") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


class LocalEngine:
    """Cells on this machine: one after another in this process (``workers=1``; the run's
    own progress bar shows), or in ``workers`` spawned processes with ``threads`` torch
    threads each (one progress bar per running cell, following its epoch log). Outcomes
    are yielded as cells finish."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        self.workers, self.threads = max(1, workers), threads

    def run(self, cells: Iterable[Cell], plan: Plan) -> Iterator[tuple[Cell, CellOutcome]]:
        cells = list(cells)
        if self.workers == 1 or len(cells) <= 1:
            for cell in cells:
                yield cell, run_cell(cell, plan)
            return
        show = plan.progress
        plan = replace(plan, progress=False)
        epochs = int(plan.config.training["epochs"])
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(self.threads or 1, os.getpid())) as pool:
            pending = {pool.submit(run_cell, cell, plan): cell for cell in cells}
            bars: dict[Any, Any] = {}
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                if show:
                    for fut, cell in pending.items():
                        if fut.running() and fut not in done and (plan.run_root / cell.run_id).is_dir():
                            bar = bars.get(fut)
                            if bar is None:
                                bar = bars[fut] = tqdm(total=epochs, desc=cell.run_id, unit="epoch", leave=False)
                            bar.n = _epochs_logged(plan.run_root / cell.run_id)
                            bar.refresh()
                for fut in done:
                    cell = pending.pop(fut)
                    if fut in bars:
                        bars.pop(fut).close()
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a worker process died (e.g. killed for memory)
                        row = {**cell.key(), "status": "failed", "error": f"worker process failed: {exc!r}"[:500]}
                        outcome = CellOutcome(row, [], traceback.format_exc())
                    yield cell, outcome


def get_engine(config: CompareConfig) -> Engine:
    """The engine that ``config`` asks for (see ``config.ENGINES``)."""
    if config.engine == "local":
        return LocalEngine(config.workers, config.training.get("num_threads"))
    if config.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(address=config.address, cpus_per_run=config.cpus_per_run,
                         gpus_per_run=config.gpus_per_run, retries=config.retries,
                         threads=config.training.get("num_threads"))
    raise ValueError(f"unknown engine {config.engine!r}; available: local, ray")
