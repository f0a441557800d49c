"""Bag classification, binary or multi-class: cross-entropy; metrics at argmax."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from torch import Tensor

from ..bag import BagBatch, FeatureBag
from .base import stack_logits, tie_ranks

__all__ = ["ClassificationTask", "classification_metrics"]


def classification_metrics(logits: Tensor, labels: Tensor | Sequence[int], n_classes: int) -> dict[str, float]:
    """AUC (binary, or macro one-vs-rest), balanced accuracy, accuracy and macro F1.

    Predictions are the argmax of the logits: no threshold is tuned on the evaluated set.
    AUC is NaN when the set holds fewer than two classes. Probabilities within a relative
    :data:`~r2t_plugin.tasks.base.TIE_RTOL` of each other are ties (:func:`tie_ranks`), so
    predictions that are constant up to float rounding give AUC 0.5.
    """
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    prob = torch.softmax(logits.float(), dim=1).numpy()
    pred = prob.argmax(axis=1)
    classes = list(range(n_classes))
    present = np.unique(y)
    auc = float("nan")
    if len(present) >= 2:
        if n_classes == 2:
            auc = float(roc_auc_score(y, tie_ranks(prob[:, 1])))
        else:  # macro one-vs-rest (sklearn's "ovr" / "macro"), over the classes present
            auc = float(np.mean([roc_auc_score(y == c, tie_ranks(prob[:, c])) for c in present]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        bacc = float(balanced_accuracy_score(y, pred))
    return {
        "auc": auc,
        "balanced_accuracy": bacc,
        "accuracy": float((pred == y).mean()),
        "f1_macro": float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
    }


class ClassificationTask:
    """``n_classes``-way bag classification; model selection on validation AUC."""

    kind = "classification"
    monitor = "auc"
    higher_is_better = True

    def __init__(self, n_classes: int = 2) -> None:
        if n_classes < 2:
            raise ValueError(f"classification needs at least 2 classes, got {n_classes}")
        self.n_classes = n_classes

    @property
    def n_out(self) -> int:
        return self.n_classes

    def fit(self, train_bags: Sequence[FeatureBag]) -> "ClassificationTask":
        """Check the training labels (nothing is learnt from them)."""
        self.targets(train_bags)
        return self

    def targets(self, bags: Sequence[FeatureBag] | BagBatch) -> Tensor:
        """(B,) long class indices; errors name the bag without a valid label."""
        if isinstance(bags, BagBatch):
            if bags.label is None:
                raise ValueError("batch has no labels")
            labels = bags.label
        else:
            for bag in bags:
                if bag.label is None or not 0 <= int(bag.label) < self.n_classes:
                    raise ValueError(f"bag {bag.case_id!r}: label {bag.label!r} is not in 0..{self.n_classes - 1}")
            labels = torch.tensor([int(b.label) for b in bags], dtype=torch.long)
        return labels.long()

    def loss(self, logits: Tensor, batch_or_targets: BagBatch | Tensor) -> Tensor:
        """Mean cross-entropy."""
        y = self.targets(batch_or_targets) if isinstance(batch_or_targets, BagBatch) else batch_or_targets
        return F.cross_entropy(logits.float(), y.to(logits.device).long())

    def metrics(self, logits_list: Sequence[Tensor] | Tensor, targets: Tensor) -> dict[str, float]:
        """See :func:`classification_metrics`."""
        return classification_metrics(stack_logits(logits_list), targets, self.n_classes)

    def __repr__(self) -> str:
        return f"ClassificationTask(n_classes={self.n_classes})"
