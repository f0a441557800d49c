"""Instance scores of one bag from a model under the aggregator contract, and its prediction.

Every built-in aggregator (and every ``with_r2t``-wrapped one) returns ``instance_scores``
(B, N) or (B, K, N): attention where the model has it (one row per class branch for
multi-branch models), else per-instance logits through the model's own classifier. The
row drawn: the predicted class's row for classification when there is one row per class,
the only row when there is one, else (survival with one row per hazard bin) their mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..bag import FeatureBag
from ..models import ModelSpec

__all__ = ["SlideScores", "HeatmapError", "score_bag", "top_k"]


class HeatmapError(ValueError):
    """Inputs a heatmap cannot be drawn from (no coordinates, no scores, ...)."""


@dataclass(frozen=True)
class SlideScores:
    """What the model says about one bag."""

    scores: np.ndarray  # (N,) the row drawn
    all_scores: np.ndarray  # (K, N)
    logits: np.ndarray  # (n_out,)
    predicted: int | None  # class index (classification)
    probability: float | None  # of the predicted class
    risk: float | None  # survival: -sum_k S_k (higher = worse)
    row: str  # which row of instance_scores is drawn

    def prediction_text(self, spec: ModelSpec) -> str:
        """``predicted tumor (p = 0.91)`` or ``predicted risk -2.31``."""
        if self.predicted is not None:
            return f"predicted {spec.class_name(self.predicted)} (p = {self.probability:.2f})"
        return f"predicted risk {self.risk:.3f}"


def _classify(logits: torch.Tensor) -> tuple[int, float]:
    if logits.numel() == 1:  # one binary logit
        p = float(torch.sigmoid(logits.float()).reshape(()))
        return (1, p) if p >= 0.5 else (0, 1.0 - p)
    probs = torch.softmax(logits.float(), dim=-1)
    k = int(probs.argmax())
    return k, float(probs[k])


def score_bag(model: nn.Module, bag: FeatureBag, spec: ModelSpec) -> SlideScores:
    """Run ``model`` (eval mode, no gradients) on ``bag`` and pick the scores to draw."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = model(bag.batch().to(device))
    if not isinstance(out, dict) or "instance_scores" not in out:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise HeatmapError(f"{spec.title}: the model gives no 'instance_scores' (got {got}); "
                           "heatmaps need models under the aggregator contract")
    scores = out["instance_scores"].detach().float().cpu()
    if scores.dim() == 2:
        scores = scores.unsqueeze(1)
    if scores.dim() != 3 or scores.shape[0] != 1 or scores.shape[2] != bag.n:
        raise HeatmapError(f"{spec.title}: instance_scores has shape {tuple(out['instance_scores'].shape)}, "
                           f"expected (1, {bag.n}) or (1, K, {bag.n})")
    scores = scores[0]
    logits = out["logits"].detach().float().cpu().reshape(-1)
    predicted = probability = risk = None
    if spec.task == "classification":
        predicted, probability = _classify(logits)
    else:
        from ..tasks import risk_from_logits

        risk = float(risk_from_logits(logits.unsqueeze(0))[0])
    k = scores.shape[0]
    if k == 1:
        drawn, row = scores[0], "instance scores"
    elif predicted is not None and k == logits.numel():
        drawn, row = scores[predicted], f"scores of branch {spec.class_name(predicted)!r}"
    else:
        drawn, row = scores.mean(dim=0), f"mean of {k} score rows"
    if not bool(torch.isfinite(drawn).all()):
        raise HeatmapError(f"{spec.title}: instance scores contain NaN or Inf")
    return SlideScores(drawn.numpy(), scores.numpy(), logits.numpy(), predicted, probability, risk, row)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first (ties: the earlier patch first)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.argsort(-scores, kind="stable")[:max(0, int(k))]
