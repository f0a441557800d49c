"""What every task provides to training and to the compare harness."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..bag import BagBatch, FeatureBag

__all__ = ["Task", "stack_logits", "TIE_RTOL", "tie_ranks"]

TIE_RTOL = 1e-6
"""Scores closer than this, relative to the larger magnitude, are ties in every rank metric."""


@runtime_checkable
class Task(Protocol):
    """A prediction task on bags.

    ``n_out``: width of the model's logits. ``monitor``: the validation metric used for
    model selection, ``higher_is_better`` its direction. ``fit(train_bags)`` learns what the
    task needs from the TRAINING bags only (e.g. survival bins) and returns the task.
    ``targets(bags_or_batch)`` extracts the targets; ``loss(logits, batch_or_targets)`` is
    the mean loss of a batch; ``metrics(logits_list, targets)`` every metric on a set.
    """

    kind: str
    n_out: int
    monitor: str
    higher_is_better: bool

    def fit(self, train_bags: Sequence[FeatureBag]) -> "Task": ...

    def targets(self, bags: Sequence[FeatureBag] | BagBatch) -> Any: ...

    def loss(self, logits: Tensor, batch_or_targets: Any) -> Tensor: ...

    def metrics(self, logits_list: Sequence[Tensor] | Tensor, targets: Any) -> dict[str, float]: ...


def stack_logits(logits_list: Sequence[Tensor] | Tensor) -> Tensor:
    """One (B, K) float tensor on CPU from a tensor or a list of per-batch (b, K) tensors."""
    if isinstance(logits_list, Tensor):
        return logits_list.detach().float().cpu()
    if not logits_list:
        raise ValueError("no logits to evaluate")
    return torch.cat([x.detach().float().cpu().reshape(-1, x.shape[-1]) for x in logits_list])


def tie_ranks(scores: np.ndarray | Sequence[float], rtol: float = TIE_RTOL) -> np.ndarray:
    """(n,) int64 dense ranks of ``scores`` in which values within ``rtol`` of each other tie.

    Sorted neighbours ``a <= b`` with ``b - a <= rtol * max(|a|, |b|)`` share a rank (so a
    chain of such neighbours forms one tie group); otherwise the order is kept exactly. Rank
    metrics (AUC, C-index) computed on these ranks ignore float rounding noise: predictions
    that are constant up to a few ulp give AUC 0.5, not an arbitrary number.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(s, kind="stable")
    v = s[order]
    gap = np.diff(v) > rtol * np.maximum(np.abs(v[1:]), np.abs(v[:-1]))
    ranks = np.empty(s.shape, dtype=np.int64)
    ranks[order] = np.concatenate([[0], np.cumsum(gap)]) if s.size else []
    return ranks
