"""r2t_torchmil: R²T for torchmil models, and torchmil models as aggregators.

* ``r2t_adapt``: any torchmil model (a ``torchmil.models.MILModel``) whose forward takes
  ``X`` (B, N, D) first. ``with_r2t(model)`` is still a torchmil model: an instance of
  ``MILModel`` whose ``forward``, ``compute_loss`` and ``predict`` take the model's own
  arguments (by position or by name, so torchmil's ``Trainer`` and ``MILModelWrapper``
  call it as they call the model), plus ``mask`` / ``coords`` / ``patch_size`` for the
  stage, each with the stage applied (see :mod:`r2t_torchmil.wrapper`). The stage goes
  after the model's ``feat_ext`` when that starts with ``Linear → activation``, else ahead
  of the model (``placement="input"``).
* ``r2t_register_aggregators``: ``"torchmil.ABMIL"``, ``"torchmil.CAMIL"``, ... (every
  model of :data:`MODELS`) under the aggregator contract (see :mod:`r2t_torchmil.aggregator`).

torchmil is optional (``pip install r2t-plugin[torchmil]``); without it this plugin fails
to load with that message and the rest of r2t-plugin works. torchmil is imported only when
one of its models is created (it takes a couple of seconds to import).
"""
from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from r2t_plugin.hookspecs import Registrar, StageFactory, hookimpl
from r2t_plugin.wrap import R2TWrapper, build_tensor_wrapper, find_projection, forward_parameters, resolve_placement

if importlib.util.find_spec("torchmil") is None:
    raise ImportError("torchmil is not installed (pip install 'r2t-plugin[torchmil]')")

from .aggregator import MODELS, TorchmilAggregator  # noqa: E402
from .wrapper import TorchmilWrapper, make_wrapper  # noqa: E402

__all__ = ["TorchmilAggregator", "TorchmilWrapper", "MODELS", "is_torchmil_model"]


def is_torchmil_model(model: Any) -> bool:
    """A model with torchmil's ``MILModel`` API: a ``MILModel`` (by class ancestry, without
    importing torchmil), or a module whose ``forward`` takes ``X`` first and that has
    ``compute_loss`` and ``predict`` (torchmil's PatchGCN, IIBMIL and DeepGraphSurv are
    plain modules with that API)."""
    if not isinstance(model, nn.Module) or isinstance(model, R2TWrapper):
        return False
    if any(c.__module__.startswith("torchmil.") and c.__name__ == "MILModel" for c in type(model).__mro__):
        return True
    first = next(iter(forward_parameters(model)), None)
    return first == "X" and all(callable(getattr(model, m, None)) for m in ("compute_loss", "predict"))


def _factory(name: str):
    def make(in_dim: int, n_out: int, **options: Any) -> TorchmilAggregator:
        return TorchmilAggregator(name, in_dim, n_out, **options)

    make.__doc__ = f"torchmil.models.{name} under the aggregator contract."
    return make


@hookimpl
def r2t_register_aggregators(registry: Registrar) -> None:
    """``torchmil.<model>`` for every model of :data:`MODELS`."""
    for name in MODELS:
        registry.add(f"torchmil.{name}", _factory(name))


@hookimpl
def r2t_adapt(model: Any, stage_factory: StageFactory, placement: str | None) -> nn.Module | None:
    """torchmil models, and torchmil models registered as aggregators (``torchmil.*``)."""
    if isinstance(model, TorchmilAggregator):
        feat_ext = getattr(model.model, "feat_ext", None)
        return build_tensor_wrapper(model, stage_factory, placement, prefix="model.feat_ext",
                                    search_in=feat_ext if isinstance(feat_ext, nn.Module) else nn.Identity())
    if not is_torchmil_model(model) or next(iter(forward_parameters(model)), None) != "X":
        return None
    feat_ext = getattr(model, "feat_ext", None)
    found = find_projection(feat_ext, "feat_ext") if isinstance(feat_ext, nn.Module) else None
    placement, path, width = resolve_placement(model, found, placement)
    return make_wrapper(model, stage_factory(width, width), placement, path)
