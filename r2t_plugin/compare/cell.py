"""One cell of the grid, as a worker runs it: a pure function from a cell and a plan to an outcome.

:func:`run_cell` is all a worker executes: from a :class:`~r2t_plugin.compare.grid.Cell`
and the :class:`Plan` it builds the model (:func:`model_spec` then
:func:`r2t_plugin.models.build_model`: the aggregator, with R²T in front for an R²T
variant), trains it with :func:`r2t_plugin.train.fit` in ``runs/{run_id}/`` (log, resume
file, and ``best.pt``, which carries the model spec so that the selected model is rebuilt
from that file alone), predicts the test cases (and, for survival, the validation cases)
with the best checkpoint and returns a :class:`CellOutcome` (the results row and the
predictions). It never raises: an exception becomes a ``failed`` outcome with its
traceback. Only the driver writes ``results.csv`` and the other shared files, so an engine
(:mod:`r2t_plugin.compare.engines`) only decides where cells run.
"""
from __future__ import annotations

import errno
import functools
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.loader import bag_targets
from ..data.transforms import standardized
from ..models import ModelSpec, build_model, load_checkpoint
from .config import CohortConfig, CompareConfig
from .grid import Cell

__all__ = ["Plan", "CellOutcome", "run_cell", "open_cohort", "make_task", "model_spec"]


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
    """A finished cell: its results row, per-case predictions, and the traceback if it failed
    (``disk_full``: the error, when it failed for want of disk space, which stops the grid)."""

    row: dict[str, Any]
    predictions: list[dict[str, Any]]
    traceback: str | None = None
    disk_full: OSError | None = None


@functools.lru_cache(maxsize=4)
def open_cohort(cfg: CohortConfig):
    """The :class:`~r2t_plugin.data.Cohort` of a cohort config (one per process)."""
    from ..data import Cohort

    if cfg.task == "classification":
        targets = dict(label_col=cfg.label_column, classes=cfg.classes)
    else:
        targets = dict(time_col=cfg.time_column, event_col=cfg.event_column,
                       censorship_col=cfg.censorship_column)
    return Cohort(cfg.csv, list(cfg.features), format=cfg.format, cache=cfg.cache, cache_dtype=cfg.cache_dtype,
                  case_col=cfg.case_column, slide_col=cfg.slide_column, mpp_col=cfg.mpp_column,
                  encoder=cfg.encoder, **targets)


def make_task(config: CompareConfig, cohort):
    """A fresh task object for ``cohort`` (fitted per run on its training bags)."""
    from ..tasks import task_for_cohort

    return task_for_cohort(cohort, n_bins=config.cohort.n_bins)


def model_spec(cell: Cell, in_dim: int, n_out: int, cohort) -> ModelSpec:
    """The :class:`~r2t_plugin.models.ModelSpec` of a cell: its aggregator with the cell's
    options, R²T in front for an R²T variant, the cohort's task and class names."""
    return ModelSpec(aggregator=cell.aggregator.name, in_dim=in_dim, n_out=n_out, task=cohort.kind,
                     options=dict(cell.aggregator.options), r2t=cell.variant.r2t,
                     classes=tuple(str(c) for c in cohort.classes),
                     name=f"{cell.aggregator.id} ({cell.variant.name}, fold {cell.fold}, seed {cell.seed})")


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
        return CellOutcome(row, [], traceback.format_exc(), _disk_full(exc))


def _disk_full(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` / ``EDQUOT`` error behind ``exc`` (itself, or its cause or context), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return OSError(exc.errno, exc.strerror, exc.filename)  # no traceback: picklable, small
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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
    spec = model_spec(cell, plan.in_dim, task.n_out, cohort)
    tcfg = TrainConfig(**cfg.training, seed=cell.seed, device=cfg.device, progress=plan.progress, resume=True)
    run_dir = plan.run_root / cell.run_id
    result = fit(build_model(spec), task, train, val, test, tcfg, run_dir, spec=spec)
    # predictions of the selected (best-on-validation) checkpoint, for the ROC / KM plots;
    # survival also needs the validation risks (the KM risk-group cut is their median)
    task.fit(bag_targets(train))  # targets only: no feature file read
    model, _ = load_checkpoint(run_dir / "best.pt")
    model.to(cfg.device)
    preds: list[dict[str, Any]] = []
    parts = (("val", val), ("test", test)) if task.kind == "survival" else (("test", test),)
    for part, bags in parts:
        _, logits = evaluate(model, task, bags, batch_size=tcfg.batch_size, device=cfg.device, amp=tcfg.amp,
                             num_workers=tcfg.workers_for(len(train)))
        preds += _prediction_rows(task, part, bag_targets(bags), logits)
    d = result.as_dict()
    row = {**cell.key(), "status": "ok",
           **{k: v for k, v in d.items() if k.startswith(("val_", "test_"))},
           "epochs": d["epochs_run"], "best_epoch": d["best_epoch"], "seconds": d["seconds"],
           "peak_memory_mb": d["peak_memory_mb"], "params": d["n_params"],
           "train_loss_first": d["train_loss_first"], "train_loss_last": d["train_loss_last"]}
    return CellOutcome(row, preds)
