"""A torchmil model with a re-embedding stage that is still a torchmil ``MILModel``.

torchmil calls its models by argument name: ``MILModelWrapper`` (what its ``Trainer``
trains) reads the names of ``forward`` / ``compute_loss`` / ``predict`` from their code
objects and passes the bag's entries of those names (``X``, ``Y``, ``mask``, ``adj``,
``coords``, ...). So the wrapper's three methods are made with the inner model's own
parameters (same names, order and defaults), plus ``mask``, ``coords`` and
``patch_size`` where the model lacks them: the stage uses them, and they reach the model
only if it takes them.

A model that takes no ``mask`` (torchmil's TransMIL, SETMIL) would attend to the padding
of a padded batch; the wrapper runs such a batch bag by bag instead (each bag unpadded)
and pads the per-instance outputs back (0 at padded positions); scalar losses are
averaged over the bags, which equals the batch loss for a mean-reduced criterion.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from r2t_plugin.wrap import AdapterError, R2TWrapper

__all__ = ["TorchmilWrapper", "METHODS", "make_wrapper"]

METHODS = ("forward", "compute_loss", "predict")
EXTRAS = ("mask", "coords", "patch_size")  # what the stage reads from a call
_CLASSES: dict[type, type] = {}


class _Default:
    """A default value rendered in generated code as a lookup in ``_DEFAULTS``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"_DEFAULTS[{self.key!r}]"


def _method_signature(cls: type, method: str) -> inspect.Signature:
    """The signature of ``cls.<method>`` without ``self``."""
    sig = inspect.signature(getattr(cls, method))
    params = list(sig.parameters.values())[1:]
    if not any(p.name == "X" for p in params):
        raise AdapterError(f"{cls.__name__}.{method} takes no X argument: not torchmil's MILModel API")
    return sig.replace(parameters=params)


def _with_extras(sig: inspect.Signature, method: str, defaults: dict[str, Any]) -> str:
    """Source of ``def <method>(self, <sig + extras>)`` whose body hands ``locals()`` on."""
    params, kinds = [], inspect.Parameter
    has_var = any(p.kind == kinds.VAR_POSITIONAL for p in sig.parameters.values())
    for p in sig.parameters.values():
        if p.default is not p.empty:
            defaults[f"{method}.{p.name}"] = p.default
            p = p.replace(default=_Default(f"{method}.{p.name}"))
        params.append(p.replace(annotation=p.empty))
    # extras: positional-or-keyword where torchmil can see them, keyword-only after a *args
    kind = kinds.KEYWORD_ONLY if has_var else kinds.POSITIONAL_OR_KEYWORD
    stop = (kinds.VAR_KEYWORD,) if has_var else (kinds.KEYWORD_ONLY, kinds.VAR_KEYWORD)
    cut = next((i for i, p in enumerate(params) if p.kind in stop), len(params))
    params[cut:cut] = [kinds(e, kind, default=None) for e in EXTRAS if e not in sig.parameters]
    self_param = kinds("self", kinds.POSITIONAL_OR_KEYWORD)
    rendered = str(inspect.Signature([self_param, *params]))
    return f"def {method}{rendered}:\n    return self._dispatch({method!r}, locals())\n"


def _wrapper_class(cls: type) -> type:
    """``R2T<Model>``: :class:`TorchmilWrapper` and torchmil's ``MILModel``, with the
    signatures of the model class ``cls`` (made once per class)."""
    if cls in _CLASSES:
        return _CLASSES[cls]
    mil_model = importlib.import_module("torchmil.models.mil_model").MILModel
    defaults: dict[str, Any] = {}
    sigs = {m: _method_signature(cls, m) for m in METHODS}
    namespace: dict[str, Any] = {"_DEFAULTS": defaults}
    exec(compile("".join(_with_extras(sigs[m], m, defaults) for m in METHODS),  # noqa: S102 - see module doc
                 f"<r2t_torchmil wrapper of {cls.__qualname__}>", "exec"), namespace)
    body = {m: namespace[m] for m in METHODS}
    body.update(__module__=__name__, __doc__=f"{cls.__name__} with a re-embedding stage (see TorchmilWrapper).",
                _signatures=sigs)
    made = type(f"R2T{cls.__name__}", (TorchmilWrapper, mil_model), body)  # isinstance(w, MILModel)
    _CLASSES[cls] = made
    return made


def _empty_wrapper(cls: type) -> TorchmilWrapper:
    """An uninitialised wrapper of model class ``cls`` (unpickling fills it)."""
    made = _wrapper_class(cls)
    return made.__new__(made)


def make_wrapper(inner: nn.Module, stage: nn.Module, placement: str, hook_path: str | None) -> TorchmilWrapper:
    """The wrapper of a torchmil model (a subclass of its ``MILModel`` base)."""
    return _wrapper_class(type(inner))(inner, stage, placement, hook_path)


class TorchmilWrapper(R2TWrapper):
    """Base of the generated wrappers: ``forward``, ``compute_loss`` and ``predict`` with the
    inner model's parameters (plus ``mask`` / ``coords`` / ``patch_size``), each running the
    inner model's method of that name with the stage applied to ``X``'s instances."""

    _signatures: dict[str, inspect.Signature] = {}

    def __reduce_ex__(self, protocol: int) -> tuple:
        # the class is made at run time: pickle (torch.save(model)) rebuilds it from the model's
        return _empty_wrapper, (type(self.inner),), self.__getstate__()

    def _dispatch(self, method: str, values: dict[str, Any]) -> Any:
        values = dict(values)
        values.pop("self", None)
        sig = self._signatures[method]
        mask = values.get("mask")
        if mask is not None and "mask" not in sig.parameters and not bool(torch.as_tensor(mask).bool().all()):
            return self._per_bag(method, values, torch.as_tensor(mask).bool())
        return self._run(method, values)

    def _run(self, method: str, values: dict[str, Any]) -> Any:
        sig = self._signatures[method]
        mask = values.get("mask")
        ctx = {"mask": None if mask is None else mask.bool(), "coords": values.get("coords"),
               "patch_size": values.get("patch_size")}
        fn = getattr(self.inner, method)
        if self.placement == "input":
            values = {**values, "X": self.reembed(values["X"], **ctx)}
            return _call(fn, sig, values)
        with self.stage_context(**ctx):
            return _call(fn, sig, values)

    def _per_bag(self, method: str, values: dict[str, Any], mask: Tensor) -> Any:
        n_bags, width = mask.shape
        outs, kept = [], []
        for b in range(n_bags):
            idx = torch.nonzero(mask[b]).flatten()
            one = {k: _take(k, v, b, idx, n_bags) for k, v in values.items()}
            one["mask"] = None
            outs.append(self._run(method, one))
            kept.append(idx)
        return _merge(outs, kept, width)


def _call(fn: Any, sig: inspect.Signature, values: dict[str, Any]) -> Any:
    """``fn`` called with ``values`` for its own parameters, as they were bound."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            args.append(values[p.name])
        elif p.kind == p.VAR_POSITIONAL:
            args.extend(values[p.name])
        elif p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = values[p.name]
        else:
            kwargs.update(values[p.name])
    return fn(*args, **kwargs)


def _take(name: str, value: Any, b: int, idx: Tensor, n_bags: int) -> Any:
    """Bag ``b`` of a batched argument, its instances ``idx`` only."""
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != n_bags:
        return value
    if name == "adj":
        if value.is_sparse:
            value = value.to_dense()
        return value[b:b + 1][:, idx][:, :, idx]
    if name in ("X", "coords", "y_inst") and value.dim() >= 2:
        return value[b:b + 1, idx.to(value.device)]
    return value[b:b + 1]


def _merge(outs: list[Any], kept: list[Tensor], width: int) -> Any:
    """One batch's output from per-bag outputs (per-instance tensors padded back with 0)."""
    first = outs[0]
    if isinstance(first, tuple | list):
        return type(first)(_merge([o[i] for o in outs], kept, width) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _merge([o[k] for o in outs], kept, width) for k in first}
    if not isinstance(first, Tensor):
        return first
    if first.dim() == 0:
        return torch.stack(outs).mean()
    if first.dim() >= 2 and all(o.shape[1] == len(i) for o, i in zip(outs, kept)):
        padded = []
        for o, i in zip(outs, kept):
            full = o.new_zeros((o.shape[0], width, *o.shape[2:]))
            full[:, i.to(o.device)] = o
            padded.append(full)
        outs = padded
    return torch.cat(outs, dim=0)

