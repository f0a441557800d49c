"""One training run: fit on the training bags, select on validation, test once.

:func:`fit` trains ``model`` for ``task`` with Adam/AdamW and a cosine learning-rate
schedule (per epoch), optional gradient accumulation and mixed precision, seeded and
deterministic on CPU. After every epoch it evaluates the VALIDATION bags; the best epoch
(by ``task.monitor``, ties broken by lower validation loss) is kept as ``best.pt`` and
early stopping watches the same number. The test bags are evaluated once, at the end,
with the best checkpoint. Files in ``out_dir`` (all written atomically):

- ``log.csv``: one row per epoch (learning rate, train loss, validation loss and metrics);
- ``last.pt``: everything needed to resume an interrupted run (removed when it finishes);
- ``best.pt``: the selected model's ``state_dict``;
- ``result.json``: the final :class:`FitResult`; a finished run is not retrained.

Models are called as ``model(batch)`` with a :class:`~r2t_plugin.bag.BagBatch` (the
aggregator contract); models whose ``forward`` takes ``label`` also get the labels during
classification training (for instance losses). ``out.get("aux_loss", 0)`` is added to the
task loss.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .bag import BagBatch, FeatureBag
from .io import atomic_torch_save, atomic_write_text
from .tasks.base import Task

__all__ = ["TrainConfig", "FitResult", "fit", "evaluate", "seed_everything", "count_parameters"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fields that do not change what is trained (allowed to differ when resuming)
_RUNTIME_FIELDS = ("device", "num_threads", "progress", "resume")


@dataclass
class TrainConfig:
    """Settings of one training run.

    ``patience``: epochs without a better validation score before stopping (None: never
    stop early). ``amp``: None, ``"bf16"`` or ``"fp16"`` autocast. ``num_threads``: torch
    CPU threads during the run (None: unchanged). ``resume``: continue from ``last.pt`` /
    return the finished ``result.json`` found in ``out_dir``.
    """

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    batch_size: int = 1
    accumulation: int = 1
    patience: int | None = 10
    amp: str | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.accumulation < 1:
            raise ValueError("epochs, batch_size and accumulation must be >= 1, got "
                             f"{self.epochs}, {self.batch_size}, {self.accumulation}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp is not None and self.amp not in _AMP:
            raise ValueError(f"amp must be None or one of {sorted(_AMP)}, got {self.amp!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


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
    peak_memory_kind: str  # "cuda_max_allocated" or "process_max_rss"
    n_params: int
    out_dir: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Flat record: ``val_<metric>``, ``test_<metric>`` and the run figures."""
        out: dict[str, Any] = {f"val_{k}": v for k, v in self.val.items()}
        out.update({f"test_{k}": v for k, v in self.test.items()})
        out.update(monitor=self.monitor, epochs_run=self.epochs_run, best_epoch=self.best_epoch,
                   seconds=self.seconds, peak_memory_mb=self.peak_memory_mb,
                   peak_memory_kind=self.peak_memory_kind, n_params=self.n_params)
        return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (call before building the model, too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _takes_label(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "label" in params


def _forward(model: nn.Module, batch: BagBatch, label: Tensor | None) -> dict[str, Tensor]:
    out = model(batch, label=label) if label is not None else model(batch)
    if isinstance(out, Tensor):
        out = {"logits": out}
    if not isinstance(out, dict) or "logits" not in out:
        raise TypeError(f"{type(model).__name__} must return a dict with 'logits' (or a logits tensor), "
                        f"got {type(out).__name__}")
    return out


def _to_device(batch: BagBatch, device: torch.device) -> BagBatch:
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch if device.type == "cpu" else batch.to(device)


def _batches(bags: Sequence[FeatureBag], order: Sequence[int], size: int):
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        yield BagBatch.collate([bags[i] for i in idx])


def _autocast(device: torch.device, amp: str | None):
    return torch.autocast(device.type, dtype=_AMP.get(amp), enabled=amp is not None)


def _cat_targets(parts: list[Any]) -> Any:
    """Concatenate per-batch targets: tensors, or dataclasses of tensors."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    return type(first)(**{f: torch.cat([getattr(p, f) for p in parts]) for f in first.__dataclass_fields__})


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, bags: Sequence[FeatureBag], *, batch_size: int = 1,
             device: str | torch.device = "cpu", amp: str | None = None) -> tuple[dict[str, float], Tensor]:
    """``(metrics with "loss", logits (n, n_out))`` of ``model`` on ``bags`` in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    logits, losses, sizes, targets = [], [], [], []
    try:
        for batch in _batches(bags, list(range(len(bags))), batch_size):
            targets.append(task.targets(batch))
            batch = _to_device(batch, device)
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


def _cosine_lr(cfg: TrainConfig, epoch: int) -> float:
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def _score(metrics: dict[str, float], task: Task) -> tuple[float, float]:
    """Selection key (larger is better): monitor (NaN worst), then lower loss."""
    m = metrics.get(task.monitor, float("nan"))
    m = -math.inf if math.isnan(m) else (m if task.higher_is_better else -m)
    loss = metrics["loss"]
    return m, -loss if math.isfinite(loss) else -math.inf


def _fingerprint(cfg: TrainConfig, model: nn.Module, task: Task, sizes: tuple[int, int, int]) -> dict[str, Any]:
    d = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_FIELDS}
    d.update(model=type(model).__name__, n_params=count_parameters(model), task=repr(task),
             n_train=sizes[0], n_val=sizes[1], n_test=sizes[2])
    return d


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    differ = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
    if differ:
        raise ValueError(f"{path} belongs to a different run (saved vs now: {differ}); "
                         "use another out_dir or resume=False")


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def fit(model: nn.Module, task: Task, train_bags: Sequence[FeatureBag], val_bags: Sequence[FeatureBag],
        test_bags: Sequence[FeatureBag], config: TrainConfig | None = None,
        out_dir: str | os.PathLike = "r2t_runs/run") -> FitResult:
    """Train, select on validation, test once; see the module docstring.

    ``task`` is fitted on ``train_bags`` first (e.g. survival bins). Seed the global RNGs
    (:func:`seed_everything`) before building ``model`` for a reproducible initialisation.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_bags) == 0 or len(val_bags) == 0:
        raise ValueError(f"{out}: need training and validation bags, got {len(train_bags)} and {len(val_bags)}")
    device = torch.device(cfg.device)
    fp = _fingerprint(cfg, model, task, (len(train_bags), len(val_bags), len(test_bags)))
    result_path, last_path, best_path = out / "result.json", out / "last.pt", out / "best.pt"
    if cfg.resume and result_path.is_file():
        with open(result_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        _check_same_run(saved["fingerprint"], fp, result_path)
        return FitResult(**saved["result"])

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        task.fit(train_bags)
        seed_everything(cfg.seed)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = _OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        give_label = task.kind == "classification" and _takes_label(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        start, history, elapsed = 0, [], 0.0
        best_key, best_epoch, wait = (-math.inf, -math.inf), -1, 0
        if cfg.resume and last_path.is_file():
            ck = torch.load(last_path, map_location="cpu", weights_only=True)
            _check_same_run(json.loads(ck["fingerprint"]), fp, last_path)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            torch.set_rng_state(ck["rng"])
            start, history, elapsed = ck["epoch"] + 1, ck["history"], ck["seconds"]
            best_key, best_epoch, wait = tuple(ck["best_key"]), ck["best_epoch"], ck["wait"]

        bar = tqdm(total=cfg.epochs, initial=start, disable=not cfg.progress, desc=f"fit {out.name}",
                   unit="epoch", leave=False)
        stopped = bool(cfg.patience and wait >= cfg.patience)
        for epoch in range(start, cfg.epochs):
            if stopped:
                break
            t0 = time.perf_counter()
            lr = _cosine_lr(cfg, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(len(train_bags), generator=gen).tolist()
            n_batches = math.ceil(len(order) / cfg.batch_size)
            total, seen = 0.0, 0
            opt.zero_grad(set_to_none=True)
            for j, batch in enumerate(_batches(train_bags, order, cfg.batch_size)):
                batch = _to_device(batch, device)
                group = min(cfg.accumulation, n_batches - (j // cfg.accumulation) * cfg.accumulation)
                with _autocast(device, cfg.amp):
                    res = _forward(model, batch, batch.label if give_label else None)
                    loss = task.loss(res["logits"], batch) + res.get("aux_loss", 0)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{out}: epoch {epoch}: non-finite loss {float(loss)} on bags "
                                             f"{list(batch.case_ids)}")
                scaler.scale(loss / group).backward()
                if (j + 1) % cfg.accumulation == 0 or j == n_batches - 1:
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            val, _ = evaluate(model, task, val_bags, batch_size=cfg.batch_size, device=device, amp=cfg.amp)
            key = _score(val, task)
            improved = best_epoch < 0 or key > best_key
            if improved:
                best_key, best_epoch, wait = key, epoch, 0
                atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, best_path)
            else:
                wait += 1
            elapsed += time.perf_counter() - t0
            history.append({"epoch": epoch, "lr": lr, "train_loss": total / seen,
                            **{f"val_{k}": v for k, v in val.items()},
                            "best": int(improved), "seconds": time.perf_counter() - t0})
            _write_log(out / "log.csv", history)
            atomic_torch_save({
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), "history": history,
                "seconds": elapsed, "best_key": list(best_key), "best_epoch": best_epoch, "wait": wait,
                "fingerprint": json.dumps(fp),
            }, last_path)
            bar.update(1)
            bar.set_postfix(loss=f"{total / seen:.3f}", **{f"val_{task.monitor}": f"{val.get(task.monitor, float('nan')):.3f}"})
            stopped = bool(cfg.patience and wait >= cfg.patience)
        bar.close()

        t0 = time.perf_counter()
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
        test = {}
        if len(test_bags):
            test, _ = evaluate(model, task, test_bags, batch_size=cfg.batch_size, device=device, amp=cfg.amp)
        elapsed += time.perf_counter() - t0
        best_row = history[best_epoch]
        val_best = {k[4:]: v for k, v in best_row.items() if k.startswith("val_")}
        peak, kind = _peak_memory(device)
        result = FitResult(val=val_best, test=test, monitor=task.monitor, epochs_run=len(history),
                           best_epoch=best_epoch, seconds=elapsed, peak_memory_mb=peak, peak_memory_kind=kind,
                           n_params=count_parameters(model), out_dir=str(out), history=history)
        atomic_write_text(result_path, json.dumps({"fingerprint": fp, "result": asdict(result)}, indent=2) + "\n")
        last_path.unlink(missing_ok=True)
        return result
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
