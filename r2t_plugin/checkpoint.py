"""The files of one training run (:func:`r2t_plugin.train.fit`), kept apart from its epoch loop.

- ``log.csv``: one row per epoch (:func:`write_log`);
- ``last.pt``: the state of every stateful part of the run (model, optimizer, learning-rate
  schedule, gradient scaler), the torch RNGs (CPU, and every GPU's once CUDA is in use: dropout
  and random pseudo-bags draw from them) and the :class:`Progress`, so that an
  interrupted run continues exactly where it stopped;
- ``best.pt``: the selected model, self-describing (:func:`r2t_plugin.models.save_checkpoint`)
  when its :class:`~r2t_plugin.models.ModelSpec` is known, else the bare ``state_dict``.

The ``.pt`` files are ``torch.save`` files of plain values, read with ``torch.load(..., weights_only=True)``,
and written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_torch_save, atomic_write_text
from .models import ModelSpec, save_checkpoint

__all__ = ["Progress", "RUNTIME_FIELDS", "LATER_DEFAULTS", "settled", "fingerprint", "check_same_run",
           "save_resume", "load_resume", "save_best", "load_best", "write_log"]

# run settings that do not change what is trained (allowed to differ when resuming)
RUNTIME_FIELDS = ("device", "num_threads", "num_workers", "progress", "resume")
# settings added after runs were saved without them: left out of a fingerprint while at
# their default, so that those runs (and compare folders) still resume
LATER_DEFAULTS: dict[str, Any] = {"stage_lr_scale": 1.0}


def settled(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` less the :data:`LATER_DEFAULTS` fields that hold their default."""
    return {k: v for k, v in settings.items() if k not in LATER_DEFAULTS or v != LATER_DEFAULTS[k]}


@dataclass
class Progress:
    """Where a run stands between epochs: the next epoch, the per-epoch log, the training
    seconds so far and the early-stopping state (best selection key and epoch, epochs since)."""

    next_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    best_key: tuple[float, ...] = (-math.inf, -math.inf, -math.inf)
    best_epoch: int = -1
    wait: int = 0

    def stopped(self, patience: int | None) -> bool:
        """Whether early stopping has ended the run (``patience`` None: never)."""
        return bool(patience and self.wait >= patience)


def fingerprint(settings: dict[str, Any], model: nn.Module, task: Any, sizes: tuple[int, int, int]) -> dict[str, Any]:
    """What identifies a run when resuming: its settings less :data:`RUNTIME_FIELDS`, the
    model's class and size, the task and the sizes of its training, validation and test parts."""
    d = {k: v for k, v in settled(settings).items() if k not in RUNTIME_FIELDS}
    d.update(model=type(model).__name__, n_params=sum(p.numel() for p in model.parameters()), task=repr(task),
             n_train=sizes[0], n_val=sizes[1], n_test=sizes[2])
    return d


def check_same_run(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Refuse to resume from ``path`` when its run fingerprint differs from this run's."""
    differ = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
    if differ:
        raise ValueError(f"{path} belongs to a different run (saved vs now: {differ}); "
                         "use another out_dir or resume=False")


def save_resume(path: Path, parts: dict[str, Any], progress: Progress, fingerprint: dict[str, Any]) -> None:
    """Write ``last.pt``: ``state_dict()`` of every part, the torch RNGs, ``progress``."""
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    atomic_torch_save({"state": {name: part.state_dict() for name, part in parts.items()},
                       "rng": torch.get_rng_state(), "cuda_rng": cuda_rng, "fingerprint": json.dumps(fingerprint),
                       "progress": {**asdict(progress), "best_key": list(progress.best_key)}}, path)


def load_resume(path: Path, parts: dict[str, Any], fingerprint: dict[str, Any]) -> Progress:
    """Restore what :func:`save_resume` wrote into ``parts`` (and the RNGs); the saved progress."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    check_same_run(json.loads(saved["fingerprint"]), fingerprint, path)
    for name, part in parts.items():
        part.load_state_dict(saved["state"][name])
    torch.set_rng_state(saved["rng"])
    cuda_rng = saved.get("cuda_rng") or []
    if cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_rng[:torch.cuda.device_count()])
    return Progress(**{**saved["progress"], "best_key": tuple(saved["progress"]["best_key"])})


def save_best(path: Path, model: nn.Module, spec: ModelSpec | None) -> None:
    """Write ``best.pt``: ``model``'s weights (on CPU), with ``spec`` when it is known."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if spec is None:
        atomic_torch_save(state, path)
    else:
        save_checkpoint(path, state, spec)


def load_best(path: Path, model: nn.Module, spec: ModelSpec | None) -> None:
    """Load the weights :func:`save_best` wrote (with the same ``spec``) into ``model``."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved if spec is None else saved["state_dict"])


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """Write ``log.csv``: one row per epoch of ``history``, every key a column."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())
