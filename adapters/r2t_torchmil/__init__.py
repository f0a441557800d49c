"""r2t_torchmil: R²T for torchmil models, and torchmil models as aggregators.

* ``r2t_adapt``: any torchmil model (a ``torchmil.models.MILModel``) whose forward takes
  ``X`` (B, N, D) first (then ``mask``, and ``adj`` for graph models). The wrapper keeps
  that signature and also accepts ``coords=`` / ``patch_size=`` for the stage. The stage
  goes after the model's ``feat_ext`` when that starts with ``Linear → activation``, else
  ahead of the model (``placement="input"``).
* ``r2t_register_aggregators``: ``"torchmil.ABMIL"``, ``"torchmil.TransMIL"``, ... under the
  aggregator contract (binary models: ``n_out`` 1, or 2 as logits ``[0, y]``; graph models
  get a dense 8-neighbour adjacency from ``coords``).

torchmil is optional (``pip install r2t-plugin[torchmil]``); without it this plugin fails
to load with that message and the rest of r2t-plugin works. torchmil is imported only when
one of its models is created (it takes a couple of seconds to import).
"""
from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import Tensor, nn

from r2t_plugin.nn import Aggregator
from r2t_plugin.geometry import grid_edges
from r2t_plugin.hookspecs import Registrar, StageFactory, hookimpl
from r2t_plugin.wrap import build_tensor_wrapper, forward_parameters

if importlib.util.find_spec("torchmil") is None:
    raise ImportError("torchmil is not installed (pip install 'r2t-plugin[torchmil]')")

__all__ = ["TorchmilAggregator", "MODELS", "is_torchmil_model"]

# torchmil 1.0 models that fit the aggregator contract (X first, a per-instance score output)
MODELS = ("ABMIL", "CLAM_SB", "DSMIL", "DTFDMIL", "TransMIL", "TransformerABMIL", "PatchGCN",
          "SmABMIL", "DeepGraphSurv")
_SCORE_FLAGS = ("return_att", "return_inst_cam")


def is_torchmil_model(model: Any) -> bool:
    """A torchmil ``MILModel`` (checked by class ancestry, without importing torchmil)."""
    return isinstance(model, nn.Module) and any(
        c.__module__.startswith("torchmil.") and c.__name__ == "MILModel" for c in type(model).__mro__)


class TorchmilAggregator(Aggregator):
    """A torchmil model under the aggregator contract.

    ``logits``: (B, 1), or (B, 2) = ``[0, y]`` (softmax gives sigmoid(y)) when ``n_out=2``.
    ``instance_scores``: torchmil's own per-instance scores (attention before normalisation,
    or the instance CAM for DTFD-MIL), 0 at padded positions.

    Args:
        name: the torchmil model, one of :data:`MODELS`.
        in_dim: width D of the instance features (B, N, D).
        n_out: 1 or 2 (torchmil's models are binary).
        **options: passed to the torchmil model (its own names, e.g. ``att_dim``).
    """

    def __init__(self, name: str, in_dim: int, n_out: int, **options: Any) -> None:
        super().__init__(in_dim, n_out)
        if n_out not in (1, 2):
            raise ValueError(f"torchmil.{name} has one output logit (binary): n_out must be 1 or 2, got {n_out}")
        import torchmil.models

        self.model = getattr(torchmil.models, name)(in_shape=(in_dim,), **options)
        params = forward_parameters(self.model)
        self._flag = next(f for f in _SCORE_FLAGS if f in params)
        self._adj, self._mask = "adj" in params, "mask" in params

    def aggregate(self, x: Tensor, mask: Tensor, *, coords: Tensor | None = None,
                  patch_size: Tensor | None = None, **_) -> dict[str, Tensor]:
        kwargs: dict[str, Any] = {self._flag: True}
        if self._mask:
            kwargs["mask"] = mask
        if self._adj:
            kwargs["adj"] = self._adjacency(mask, coords, patch_size)
        y, scores = self.model(x, **kwargs)
        scores = scores.reshape(mask.shape) * mask.to(scores.dtype)
        y = y.reshape(-1, 1)
        logits = torch.cat([torch.zeros_like(y), y], dim=1) if self.n_out == 2 else y
        return {"logits": logits, "instance_scores": scores}

    @staticmethod
    def _adjacency(mask: Tensor, coords: Tensor | None, patch_size: Tensor | None) -> Tensor:
        if coords is None:
            raise ValueError("torchmil graph models need coords (B, N, 2) to build the adjacency")
        adj = torch.zeros(*mask.shape, mask.shape[1], device=mask.device)
        for b in range(mask.shape[0]):
            idx = torch.nonzero(mask[b]).flatten()
            e = grid_edges(coords[b][idx], None if patch_size is None else float(patch_size[b]))
            adj[b, idx[e[0]], idx[e[1]]] = 1.0
        return adj


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
        inner, prefix = model.model, "model.feat_ext"
    elif is_torchmil_model(model) and next(iter(forward_parameters(model)), None) == "X":
        inner, prefix = model, "feat_ext"
    else:
        return None
    feat_ext = getattr(inner, "feat_ext", None)
    return build_tensor_wrapper(model, stage_factory, placement,
                                search_in=feat_ext if isinstance(feat_ext, nn.Module) else nn.Identity(),
                                prefix=prefix)
