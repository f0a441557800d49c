"""Build, save and load a trained model from its spec (one factory, as in timm).

A :class:`ModelSpec` names a registered aggregator, its options and widths, and the R²T
stage in front of it (``with_r2t`` options, or None for the plain model). A checkpoint
written by :func:`save_checkpoint` carries the spec next to the weights, so that the model
is rebuilt from that one file (``r2t compare`` writes every run's ``best.pt`` this way and
``r2t heatmap`` reads it). The file is ``torch.save`` of plain values only, read back with
``torch.load(..., weights_only=True)``::

    {"format": "r2t-plugin/model", "version": 1,
     "spec": ModelSpec.to_dict(),            # JSON-serialisable
     "state_dict": {name: Tensor}}
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_torch_save
from .r2t.official import CheckpointError
from .wrap import recorded_options, with_r2t

__all__ = ["ModelSpec", "CheckpointError", "FORMAT", "VERSION", "build_model", "save_checkpoint",
           "load_checkpoint"]

FORMAT = "r2t-plugin/model"
VERSION = 1
TASKS = ("classification", "survival")
LEGACY_RESIDUAL = False  # with_r2t's residual default when a stored spec lacks the key


@dataclass(frozen=True)
class ModelSpec:
    """A registered aggregator, optionally with R²T in front, and the task it was trained for.

    Args:
        aggregator: registered aggregator name (``r2t plugins`` lists them).
        in_dim: width D of the instance features (N, D).
        n_out: outputs of the model (classes, or hazard bins for survival).
        task: ``"classification"`` or ``"survival"``.
        options: keyword options of the aggregator's factory.
        r2t: ``with_r2t`` options, or None for the plain aggregator; ``residual`` is always
            recorded (filled with ``with_r2t``'s default when not given), and a stored spec
            without it (written before ``residual=True`` became the default) means False.
        classes: class names, one per output (classification; may be empty).
        name: shown in titles (default: the aggregator, ``+ R²T`` when wrapped).
    """

    aggregator: str
    in_dim: int
    n_out: int
    task: str = "classification"
    options: dict[str, Any] = field(default_factory=dict)
    r2t: dict[str, Any] | None = None
    classes: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.r2t is not None:
            object.__setattr__(self, "r2t", recorded_options(self.r2t))
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

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values (``from_dict`` reads them back)."""
        plain = asdict(self)
        plain["classes"] = list(self.classes)
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec of ``to_dict``'s output (``TypeError`` / ``ValueError`` when invalid)."""
        raw = dict(data)
        raw["classes"] = tuple(str(c) for c in raw.get("classes") or ())
        if isinstance(raw.get("r2t"), Mapping):  # written before the residual default: replacing stage
            raw["r2t"] = {"residual": LEGACY_RESIDUAL, **raw["r2t"]}
        return cls(**raw)


def build_model(spec: ModelSpec) -> nn.Module:
    """The untrained model of ``spec``: the aggregator, wrapped with R²T when ``spec.r2t`` is set."""
    from .plugins import create_aggregator

    model = create_aggregator(spec.aggregator, spec.in_dim, spec.n_out, **spec.options)
    return with_r2t(model, **spec.r2t) if spec.r2t is not None else model


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec) -> Path:
    """Write ``state_dict`` (moved to CPU) with ``spec`` to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    return atomic_torch_save({"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "state_dict": state},
                             path)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec]:
    """The model (eval mode, CPU, weights loaded strictly) and spec of a :func:`save_checkpoint` file.

    Every problem is a :class:`CheckpointError` naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a named error
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(exc)})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a self-describing r2t-plugin model checkpoint (no "
                              f"format={FORMAT!r}); a bare state_dict does not say which model it belongs to")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')!r}, this r2t-plugin reads {VERSION}")
    try:
        spec = ModelSpec.from_dict(obj["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model spec ({exc})") from exc
    try:
        model = build_model(spec)
    except Exception as exc:  # noqa: BLE001 - e.g. an aggregator that is not registered here
        raise CheckpointError(f"{path}: cannot build the model it describes ({_first_line(exc)})") from exc
    try:
        model.load_state_dict(obj.get("state_dict", {}))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model they describe "
                              f"({str(exc).splitlines()[0]})") from exc
    return model.eval(), spec
