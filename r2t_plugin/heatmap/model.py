"""What a heatmap needs to rebuild a trained model: a :class:`ModelSpec` and its weights.

Two sources (see :func:`load_model`):

- a self-describing checkpoint written by :func:`save_model`: ``torch.save`` of a dict of
  plain values, read with ``torch.load(..., weights_only=True)``::

      {"format": "r2t-plugin/model", "version": 1,
       "spec": {"aggregator": str, "in_dim": int, "n_out": int, "options": {...},
                "r2t": {...} | None,          # with_r2t() options; None = no R²T
                "task": "classification" | "survival",
                "classes": [str, ...],        # class names (classification), [] for survival
                "name": str},                 # shown in titles
       "state_dict": {name: Tensor}}

- a run of ``r2t compare`` (its folder ``runs/{run_id}`` or that folder's ``best.pt``):
  see :mod:`r2t_plugin.heatmap.runs`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ModelSpec", "LoadedModel", "CheckpointError", "FORMAT", "save_model", "build_model", "load_model"]

FORMAT = "r2t-plugin/model"
VERSION = 1
TASKS = ("classification", "survival")


class CheckpointError(ValueError):
    """A checkpoint (or run folder) a model cannot be rebuilt from; names the path."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered aggregator, optionally with R²T, and the task it was trained for."""

    aggregator: str
    in_dim: int
    n_out: int
    task: str = "classification"
    options: dict[str, Any] = field(default_factory=dict)
    r2t: dict[str, Any] | None = None
    classes: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "classification" and self.classes and len(self.classes) != max(self.n_out, 2):
            raise ValueError(f"{len(self.classes)} class names for n_out={self.n_out}")

    @property
    def title(self) -> str:
        """The model's name for titles (default: aggregator, ``+ R²T`` when wrapped)."""
        return self.name or (self.aggregator + (" + R²T" if self.r2t is not None else ""))

    def class_name(self, index: int) -> str:
        """Name of class ``index`` (the index itself when no names are known)."""
        return self.classes[index] if index < len(self.classes) else str(index)


@dataclass
class LoadedModel:
    """A rebuilt model (eval mode, CPU) with its spec and where it came from."""

    model: nn.Module
    spec: ModelSpec
    source: Path
    run: Any = None  # a heatmap.runs.CompareRun when loaded from a compare run


def build_model(spec: ModelSpec) -> nn.Module:
    """The untrained model of ``spec`` (registered aggregator, wrapped with R²T if asked)."""
    from ..plugins import create_aggregator
    from ..wrap import with_r2t

    model = create_aggregator(spec.aggregator, spec.in_dim, spec.n_out, **spec.options)
    return with_r2t(model, **spec.r2t) if spec.r2t is not None else model


def save_model(path: str | os.PathLike, model: nn.Module, spec: ModelSpec) -> Path:
    """Write ``model``'s weights with ``spec`` as a self-describing checkpoint (atomically)."""
    from ..io import atomic_torch_save

    plain = asdict(spec)
    plain["classes"] = list(spec.classes)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"format": FORMAT, "version": VERSION, "spec": plain, "state_dict": state}, path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> nn.Module:
    """Load ``state`` strictly; a mismatch is a :class:`CheckpointError` naming ``where``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{where}: the weights do not fit the model they describe ({first})") from exc
    return model.eval()


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a named error
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the model of a self-describing checkpoint or of an ``r2t compare`` run."""
    from .runs import is_compare_run, load_compare_run

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    if path.is_dir() or is_compare_run(path):
        return load_compare_run(path)
    obj = _read(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a self-describing r2t-plugin model checkpoint (no "
                              f"format={FORMAT!r}) and not inside an r2t compare run folder; a bare "
                              "state_dict does not say which model it belongs to")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')!r}, this r2t-plugin reads {VERSION}")
    try:
        raw = dict(obj["spec"])
        raw["classes"] = tuple(raw.get("classes") or ())
        spec = ModelSpec(**raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model spec ({exc})") from exc
    return LoadedModel(load_state(build_model(spec), obj["state_dict"], path), spec, path)
