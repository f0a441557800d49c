"""One training run: fit on the training bags, select on validation, test once.

:func:`fit` trains ``model`` for ``task`` with Adam/AdamW and a cosine learning-rate
schedule (stepped per epoch), optional gradient accumulation and mixed precision, seeded
and deterministic on CPU. After every epoch it evaluates the VALIDATION bags; the best
epoch (by ``task.monitor`` with ties broken by lower loss, or by loss; optionally averaged
over the last ``smooth`` epochs) is kept as ``best.pt``, and early stopping watches the same
number, never before ``min_epochs``. The test bags are evaluated once, with the best
checkpoint. Files in ``out_dir`` (written atomically; checkpoints: :mod:`r2t_plugin.checkpoint`):
``log.csv`` (per epoch: learning rate, losses, validation metrics, ``seconds`` and
``wait_seconds``, the time spent waiting for data), ``last.pt`` (resume; removed at the
end), ``best.pt`` (the selected model, with its :class:`~r2t_plugin.models.ModelSpec` when
given one) and ``result.json`` (the :class:`FitResult`; a finished run is not retrained).

Models are called as ``model(batch)`` with a :class:`~r2t_plugin.bag.BagBatch`; those whose
``forward`` takes ``label`` (:func:`~r2t_plugin.wrap.takes_label`) also get the labels in
classification training; ``out.get("aux_loss", 0)`` is added to the loss. Bags come through
:class:`~r2t_plugin.data.loader.BagLoader`: ``num_workers`` threads read ahead, pinned for
CUDA, copied on a side stream.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .bag import BagBatch, FeatureBag
from .checkpoint import (Progress, check_same_run, fingerprint, load_best, load_resume, save_best, save_resume,
                         write_log)
from .data.loader import BagLoader, bag_targets, default_workers, waited
from .io import atomic_write_text
from .models import ModelSpec
from .progress import ProgressBar
from .tasks.base import Task
from .wrap import stage_parameters, takes_label

__all__ = ["TrainConfig", "TrainConfigError", "FitResult", "fit", "evaluate", "seed_everything",
           "count_parameters"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CHOICES = {"optimizer": tuple(_OPTIMIZERS), "amp": (None, *_AMP), "select": ("score", "loss")}


class TrainConfigError(ValueError):
    """Invalid :class:`TrainConfig` settings; ``problems`` maps each field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("invalid TrainConfig: " + "; ".join(f"{k}: {m}" for k, m in self.problems.items()))


@dataclass
class TrainConfig:
    """Settings of one training run.

    ``patience``: epochs without a better validation score before stopping (None: never);
    ``min_epochs``: no early stop before it (the cosine schedule always spans ``epochs``).
    ``select``: what picks the epoch on validation, ``"score"`` (the task's metric, ties
    broken by lower loss) or ``"loss"``; ``smooth``: that value is averaged over the last
    ``smooth`` epochs. ``stage_lr_scale``: the re-embedding stage's parameters
    (:func:`~r2t_plugin.wrap.stage_parameters`) learn at ``lr * stage_lr_scale``. ``amp``:
    None, ``"bf16"`` or ``"fp16"`` autocast. ``num_threads``: torch CPU threads (None:
    unchanged). ``num_workers``: threads reading bags ahead (0: in the loop; None:
    :func:`~r2t_plugin.data.loader.default_workers`); results do not depend on it.
    ``resume``: continue from ``last.pt`` / return the finished ``result.json``.
    """

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    batch_size: int = 1
    accumulation: int = 1
    patience: int | None = 10
    min_epochs: int = 0
    select: str = "score"
    smooth: int = 1
    stage_lr_scale: float = 1.0
    amp: str | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    num_workers: int | None = None
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        problems = {name: f"must be >= 1, got {getattr(self, name)}"
                    for name in ("epochs", "batch_size", "accumulation", "smooth") if getattr(self, name) < 1}
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                problems[name] = f"{getattr(self, name)!r} is not one of: {', '.join(map(str, choices))}"
        if self.patience is not None and self.patience < 1:
            problems["patience"] = f"must be >= 1 (or None: never stop early), got {self.patience}"
        if not 0 <= self.min_epochs <= self.epochs:
            problems["min_epochs"] = f"must be in [0, epochs={self.epochs}], got {self.min_epochs}"
        if self.num_workers is not None and self.num_workers < 0:
            problems["num_workers"] = f"must be >= 0 (or None: chosen from the cohort size), got {self.num_workers}"
        for name in ("lr", "stage_lr_scale"):
            if not getattr(self, name) > 0:
                problems[name] = f"must be > 0, got {getattr(self, name)}"
        if self.weight_decay < 0:
            problems["weight_decay"] = f"must be >= 0, got {self.weight_decay}"
        if problems:
            raise TrainConfigError(problems)

    def workers_for(self, n_train: int) -> int:
        """Loader threads of a run with ``n_train`` training bags (``num_workers`` or the rule)."""
        return self.num_workers if self.num_workers is not None else default_workers(n_train)


@dataclass
class FitResult:
    """Outcome of :func:`fit`: every metric on validation (at the best epoch) and test."""

    val: dict[str, float]
    test: dict[str, float]
    monitor: str
    epochs_run: int
    best_epoch: int
    seconds: float
    peak_memory_mb: float
    peak_memory_kind: str  # "cuda_max_allocated", "run_max_rss" (Linux) or "process_max_rss" (the process's life)
    n_params: int
    out_dir: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Flat record: ``val_<metric>``, ``test_<metric>``, the run figures and the training
        loss of the first and the last epoch (``train_loss_first``, ``train_loss_last``)."""
        out: dict[str, Any] = {f"val_{k}": v for k, v in self.val.items()}
        out.update({f"test_{k}": v for k, v in self.test.items()})
        out.update(monitor=self.monitor, epochs_run=self.epochs_run, best_epoch=self.best_epoch,
                   seconds=self.seconds, peak_memory_mb=self.peak_memory_mb,
                   peak_memory_kind=self.peak_memory_kind, n_params=self.n_params,
                   train_loss_first=self.history[0]["train_loss"] if self.history else math.nan,
                   train_loss_last=self.history[-1]["train_loss"] if self.history else math.nan)
        return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (call before building the model, too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters; the stage's in a second group at ``lr * stage_lr_scale``."""
    stage = {id(p) for p in stage_parameters(model)} if cfg.stage_lr_scale != 1 else set()
    params = [p for p in model.parameters() if p.requires_grad]
    return [g for g in ({"params": [p for p in params if id(p) not in stage]},
                        {"params": [p for p in params if id(p) in stage], "lr": cfg.lr * cfg.stage_lr_scale})
            if g["params"]]


def _forward(model: nn.Module, batch: BagBatch, label: Tensor | None) -> dict[str, Tensor]:
    out = model(batch, label=label) if label is not None else model(batch)
    if isinstance(out, Tensor):
        out = {"logits": out}
    if not isinstance(out, dict) or "logits" not in out:
        raise TypeError(f"{type(model).__name__} must return a dict with 'logits' (or a logits tensor), "
                        f"got {type(out).__name__}")
    return out


def _autocast(device: torch.device, amp: str | None):
    return torch.autocast(device.type, dtype=_AMP.get(amp), enabled=amp is not None)


def _cat_targets(parts: list[Any]) -> Any:
    """Concatenate per-batch targets: tensors, or dataclasses of tensors."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts).cpu()
    return type(first)(**{f.name: torch.cat([getattr(p, f.name) for p in parts]).cpu() for f in fields(first)})


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, bags: Sequence[FeatureBag], *, batch_size: int = 1,
             device: str | torch.device = "cpu", amp: str | None = None,
             num_workers: int = 0) -> tuple[dict[str, float], Tensor]:
    """``(metrics with "loss", logits (n, n_out))`` of ``model`` on ``bags`` in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    logits, losses, sizes, targets = [], [], [], []
    loader = BagLoader(bags, batch_size=batch_size, num_workers=num_workers, device=device)
    try:
        with closing(loader.batches()) as batches:
            for batch in batches:
                targets.append(task.targets(batch))
                with _autocast(device, amp):
                    out = _forward(model, batch, None)
                z = out["logits"].float()
                losses.append(float(task.loss(z, batch)))
                sizes.append(len(batch))
                logits.append(z.cpu())
    finally:
        model.train(was_training)
    metrics = task.metrics(logits, _cat_targets(targets))
    metrics["loss"] = float(np.average(losses, weights=sizes))
    return metrics, torch.cat(logits)


def _score(history: list[dict[str, float]], task: Task, cfg: TrainConfig) -> tuple[float, ...]:
    """Selection key of the last epoch of ``history`` (larger is better): whether it closes a
    full window of ``cfg.smooth`` epochs (a partial window never beats a full one), the
    selected value (monitor or loss, averaged over the window; NaN worst), then the other."""
    def value(name: str, sign: float) -> float:
        v = float(np.mean([row.get(f"val_{name}", math.nan) for row in history[-cfg.smooth:]]))
        return sign * round(v, 9) if math.isfinite(v) else -math.inf  # 0.88 and 0.88000000000000001 tie

    score, loss = value(task.monitor, 1.0 if task.higher_is_better else -1.0), value("loss", -1.0)
    full = float(len(history) >= cfg.smooth)
    return (full, loss, score) if cfg.select == "loss" else (full, score, loss)


def _reset_peak_rss() -> bool:
    """Restart the count of this process's peak resident memory (Linux); whether it could."""
    try:
        return Path("/proc/self/clear_refs").write_text("5", encoding="ascii") == 1
    except OSError:
        return False


def _peak_memory(device: torch.device, rss_reset: bool) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    if rss_reset:  # the peak resident set since this run began (VmHWM), not over the process's life
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(s.split()[1]) for s in fh if s.startswith("VmHWM:")) / 1024, "run_max_rss"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def _checked(loss: Tensor, n: int, case_ids: Sequence[str | None], where: Path, epoch: int) -> float:
    """``loss * n`` as a float; FloatingPointError naming the bags when it is not finite."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"{where}: epoch {epoch}: non-finite loss {value} on bags {list(case_ids)}")
    return value * n


def _train_epoch(model: nn.Module, task: Task, loader: BagLoader, cfg: TrainConfig, epoch: int,
                 opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, give_label: bool,
                 where: Path) -> float:
    """One pass over the loader's bags in an order seeded by (seed, epoch); the mean training
    loss. On CPU a non-finite loss stops the run before its backward pass; on CUDA each loss
    is checked once the next step is queued (no device sync per step)."""
    model.train()
    device = loader.device
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(loader), generator=gen).tolist()
    n_batches = math.ceil(len(order) / cfg.batch_size)
    total, seen, pending = 0.0, 0, None
    opt.zero_grad(set_to_none=True)
    with closing(loader.batches(order)) as batches:
        for j, batch in enumerate(batches):
            group = min(cfg.accumulation, n_batches - (j // cfg.accumulation) * cfg.accumulation)
            with _autocast(device, cfg.amp):
                res = _forward(model, batch, batch.label if give_label else None)
                loss = task.loss(res["logits"], batch) + res.get("aux_loss", 0)
            step = (loss.detach(), len(batch), batch.case_ids, where, epoch)
            if device.type != "cuda":
                total += _checked(*step)
            scaler.scale(loss / group).backward()
            if (j + 1) % cfg.accumulation == 0 or j == n_batches - 1:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                total += _checked(*pending) if pending is not None else 0.0
                pending = step
            seen += len(batch)
    if pending is not None:
        total += _checked(*pending)
    return total / seen


def fit(model: nn.Module, task: Task, train_bags: Sequence[FeatureBag], val_bags: Sequence[FeatureBag],
        test_bags: Sequence[FeatureBag], config: TrainConfig | None = None,
        out_dir: str | os.PathLike = "r2t_runs/run", spec: ModelSpec | None = None) -> FitResult:
    """Train, select on validation, test once; see the module docstring.

    ``task`` is fitted on ``train_bags`` first (e.g. survival bins). Seed the global RNGs
    (:func:`seed_everything`) before building ``model`` for a reproducible initialisation.
    ``spec``: how ``model`` was built (:func:`~r2t_plugin.models.build_model`); when given,
    ``best.pt`` carries it.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_bags) == 0 or len(val_bags) == 0:
        raise ValueError(f"{out}: need training and validation bags, got {len(train_bags)} and {len(val_bags)}")
    device = torch.device(cfg.device)
    fp = fingerprint(asdict(cfg), model, task, (len(train_bags), len(val_bags), len(test_bags)))
    result_path, last_path, best_path = out / "result.json", out / "last.pt", out / "best.pt"
    if cfg.resume and result_path.is_file():
        with open(result_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        check_same_run(saved["fingerprint"], fp, result_path)
        return FitResult(**saved["result"])

    prev_threads, prev_det, prev_det_warn = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                                             torch.is_deterministic_algorithms_warn_only_enabled())
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        task.fit(bag_targets(train_bags))  # the targets alone: no feature file is read for them
        seed_everything(cfg.seed)
        model.to(device)
        opt = _OPTIMIZERS[cfg.optimizer](_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        parts = {"model": model, "optimizer": opt, "schedule": schedule, "scaler": scaler}
        give_label = task.kind == "classification" and takes_label(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_reset = device.type != "cuda" and _reset_peak_rss()
        run = load_resume(last_path, parts, fp) if cfg.resume and last_path.is_file() else Progress()
        workers = cfg.workers_for(len(train_bags))
        train_loader = BagLoader(train_bags, batch_size=cfg.batch_size, num_workers=workers, device=device)

        with ProgressBar(cfg.epochs, f"fit {out.name}", "epoch", initial=run.next_epoch, enabled=cfg.progress,
                          leave=False) as bar:
            for epoch in range(run.next_epoch, cfg.epochs):
                if epoch >= cfg.min_epochs and run.stopped(cfg.patience):
                    break
                t0, w0 = time.perf_counter(), waited()
                lr = schedule.get_last_lr()[0]
                train_loss = _train_epoch(model, task, train_loader, cfg, epoch, opt, scaler, give_label, out)
                schedule.step()
                val, _ = evaluate(model, task, val_bags, batch_size=cfg.batch_size, device=device, amp=cfg.amp,
                                  num_workers=workers)
                key = _score([*run.history, {f"val_{k}": v for k, v in val.items()}], task, cfg)
                improved = run.best_epoch < 0 or key > run.best_key
                if improved:
                    run.best_key, run.best_epoch, run.wait = key, epoch, 0
                    save_best(best_path, model, spec)
                else:
                    run.wait += 1
                seconds = time.perf_counter() - t0
                run.seconds += seconds
                run.next_epoch = epoch + 1
                run.history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss,
                                    **{f"val_{k}": v for k, v in val.items()},
                                    "best": int(improved), "seconds": seconds, "wait_seconds": waited() - w0})
                write_log(out / "log.csv", run.history)
                save_resume(last_path, parts, run, fp)
                bar.step(f"loss {train_loss:.3f}, val_{task.monitor} {val.get(task.monitor, float('nan')):.3f}")

        t0 = time.perf_counter()
        load_best(best_path, model, spec)
        test = {}
        if len(test_bags):
            test, _ = evaluate(model, task, test_bags, batch_size=cfg.batch_size, device=device, amp=cfg.amp,
                               num_workers=workers)
        run.seconds += time.perf_counter() - t0
        val_best = {k[4:]: v for k, v in run.history[run.best_epoch].items() if k.startswith("val_")}
        peak, kind = _peak_memory(device, rss_reset)
        result = FitResult(val=val_best, test=test, monitor=task.monitor, epochs_run=len(run.history),
                           best_epoch=run.best_epoch, seconds=run.seconds, peak_memory_mb=peak,
                           peak_memory_kind=kind, n_params=count_parameters(model), out_dir=str(out),
                           history=run.history)
        atomic_write_text(result_path, json.dumps({"fingerprint": fp, "result": asdict(result)}, indent=2) + "\n")
        last_path.unlink(missing_ok=True)
        return result
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
