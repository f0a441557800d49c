"""torchmil models under the aggregator contract (``"torchmil.ABMIL"``, ...).

Every torchmil 1.0 model that can be built from ``in_shape`` and its documented defaults
is registered (:data:`MODELS`). Not registered: ``VAEABMIL``, whose ``feat_ext`` must be a
variational encoder with its own loss (no default exists to build it from ``in_shape``).

torchmil's models are binary (one logit, ``BCEWithLogitsLoss``), so ``n_out`` is 1 or 2;
none of them has a multi-class head to ask for. Inputs are made as torchmil's own
datasets make them: ``adj`` (graph models) is the 8-neighbour patch graph with
symmetrically normalised weights and no self loops (``ProcessedMILDataset`` with
``norm_adj=True``), ``coords`` (SETMIL) are grid cells, not pixels.

A padded batch runs bag by bag (each bag unpadded) for the models that have no ``mask``
argument (TransMIL, SETMIL) and for those whose output depends on the padding despite
one, or whose instance scores mix the bags of a batch (:data:`PER_BAG`), so a bag gives the same output alone and in a padded batch.
CAMIL gets ``n_landmarks = nystrom_att_dim // 2`` unless given (torchmil 1.0's default,
None, fails at the first call; TransMIL takes the same default).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from r2t_plugin.geometry import batched_grid_cells, grid_edges
from r2t_plugin.nn import Aggregator
from r2t_plugin.wrap import forward_parameters

__all__ = ["TorchmilAggregator", "MODELS", "PER_BAG", "normalized_adjacency"]

MODELS = ("ABMIL", "CAMIL", "CLAM_SB", "DSMIL", "DTFDMIL", "DeepGraphSurv", "GTP", "IIBMIL", "PatchGCN",
          "ProbSmoothABMIL", "SETMIL", "SmABMIL", "SmTransformerABMIL", "SmoothABMIL", "TransMIL",
          "TransformerABMIL", "TransformerProbSmoothABMIL")
PER_BAG = {
    "CAMIL": "its Nyström transformer layer is given no mask",
    "DSMIL": "chooses its critical instance among padded positions too",
    "DTFDMIL": "splits padded positions into its pseudo-bags",
    "DeepGraphSurv": "its graph convolutions read the padded features",
    "GTP": "its CAM (relevance propagation) mixes the bags of a batch",
}
"""Models with a ``mask`` argument whose output still depends on the rest of the batch, and why."""
_SCORE_FLAGS = ("return_att", "return_inst_cam", "return_cam", "return_inst_pred")


def normalized_adjacency(mask: Tensor, coords: Tensor, patch_size: Tensor | None) -> Tensor:
    """(B, N, N) dense ``D^-1/2 A D^-1/2`` of each bag's 8-neighbour patch graph (0 at padding)."""
    adj = torch.zeros(*mask.shape, mask.shape[1], device=mask.device)
    for b in range(mask.shape[0]):
        idx = torch.nonzero(mask[b]).flatten()
        e = grid_edges(coords[b][idx], None if patch_size is None else float(patch_size[b]))
        deg = torch.bincount(e[0], minlength=len(idx)).float()
        inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        adj[b, idx[e[0]], idx[e[1]]] = inv[e[0]] * inv[e[1]]
    return adj


class TorchmilAggregator(Aggregator):
    """A torchmil model under the aggregator contract.

    ``logits``: (B, 1), or (B, 2) = ``[0, y]`` (softmax gives sigmoid(y)) when ``n_out=2``.
    ``instance_scores``: torchmil's own per-instance scores (attention before normalisation,
    DTFD-MIL's instance CAM, GTP's CAM, IIB-MIL's instance logits), 0 at padded positions.

    Args:
        name: the torchmil model, one of :data:`MODELS`.
        in_dim: width D of the instance features (B, N, D).
        n_out: 1 or 2 (torchmil's models are binary).
        **options: passed to the torchmil model (its own names, e.g. ``att_dim``).
    """

    def __init__(self, name: str, in_dim: int, n_out: int, **options: Any) -> None:
        super().__init__(in_dim, n_out)
        if n_out not in (1, 2):
            raise ValueError(f"torchmil.{name} is binary (one logit, BCE loss; no torchmil 1.0 model has a "
                             f"multi-class head): n_out must be 1 or 2, got {n_out}")
        import torchmil.models

        if name == "CAMIL":
            options.setdefault("n_landmarks", options.get("nystrom_att_dim", 512) // 2)
        self.model = getattr(torchmil.models, name)(in_shape=(in_dim,), **options)
        params = forward_parameters(self.model)
        self._flag = next(f for f in _SCORE_FLAGS if f in params)
        self._adj = "adj" in params and params["adj"].default is inspect.Parameter.empty
        self._coords, self._mask = "coords" in params, "mask" in params
        self._per_bag = name in PER_BAG or not self._mask

    def aggregate(self, x: Tensor, mask: Tensor, *, coords: Tensor | None = None,
                  patch_size: Tensor | None = None, **_) -> dict[str, Tensor]:
        if (self._adj or self._coords) and coords is None:
            raise ValueError(f"{type(self.model).__name__} needs coords (B, N, 2) to build its "
                             f"{'adjacency' if self._adj else 'grid'}")
        if not self._per_bag or bool(mask.all()):
            y, scores = self._model(x, mask, coords, patch_size)
        else:  # one bag at a time, unpadded
            y, scores = x.new_zeros(mask.shape[0]), x.new_zeros(mask.shape)
            for b in range(mask.shape[0]):
                idx = torch.nonzero(mask[b]).flatten()
                sub = None if coords is None else coords[b:b + 1, idx]
                ps = None if patch_size is None else patch_size[b:b + 1]
                yb, sb = self._model(x[b:b + 1, idx], mask[b:b + 1, idx], sub, ps)
                y[b], scores[b, idx] = yb.reshape(()), sb.reshape(-1).to(scores.dtype)
        scores = scores.reshape(mask.shape) * mask.to(scores.dtype)
        y = y.reshape(-1, 1)
        logits = torch.cat([torch.zeros_like(y), y], dim=1) if self.n_out == 2 else y
        return {"logits": logits, "instance_scores": scores}

    def _model(self, x: Tensor, mask: Tensor, coords: Tensor | None,
               patch_size: Tensor | None) -> tuple[Tensor, Tensor]:
        kwargs: dict[str, Any] = {self._flag: True}
        if self._mask:
            kwargs["mask"] = mask
        if self._adj:
            kwargs["adj"] = normalized_adjacency(mask, coords, patch_size)
        if self._coords:
            kwargs["coords"] = batched_grid_cells(coords, mask, patch_size)
        y, scores = self.model(x, **kwargs)[:2]
        return y, scores
