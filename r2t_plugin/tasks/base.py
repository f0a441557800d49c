"""What every task provides to training and to the compare harness."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..bag import BagBatch, FeatureBag

__all__ = ["Task", "stack_logits"]


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
