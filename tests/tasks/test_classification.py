"""Classification task: cross-entropy and metrics at argmax."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from r2t_plugin import FeatureBag
from r2t_plugin.tasks import ClassificationTask


def test_binary_metrics_by_hand():
    task = ClassificationTask(2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.0, 3.0], [0.3, 0.0]])
    y = torch.tensor([0, 1, 1, 1, 0])
    m = task.metrics([logits[:2], logits[2:]], y)
    # p(class 1) ranks: positives 0.73, 0.38, 0.95; negatives 0.12, 0.43 -> 5 of 6 pairs right
    assert m["auc"] == pytest.approx(5 / 6)
    # argmax predictions 0, 1, 0, 1, 0: one positive missed
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    f1_pos, f1_neg = 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert m["f1_macro"] == pytest.approx((f1_pos + f1_neg) / 2)


def test_multiclass_auc_is_macro_one_vs_rest():
    task = ClassificationTask(3)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [0, 2.0, 1.0], [1.0, 0, 2.0], [0, 0, 0.5]])
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    p = torch.softmax(logits, 1)

    def auc(scores, pos):
        pairs = [(a, b) for a in scores[pos] for b in scores[~pos]]
        return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)

    expected = sum(auc(p[:, c], y == c) for c in range(3)) / 3
    assert task.metrics(logits, y)["auc"] == pytest.approx(expected)


def test_auc_undefined_with_one_class_and_loss_is_cross_entropy():
    task = ClassificationTask(2)
    assert math.isnan(task.metrics(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))["auc"])
    bags = [FeatureBag(torch.ones(2, 3), label=1), FeatureBag(torch.ones(1, 3), label=0)]
    logits = torch.tensor([[0.1, 0.7], [1.0, -1.0]])
    from r2t_plugin.bag import BagBatch
    batch = BagBatch.collate(bags)
    assert float(task.loss(logits, batch)) == pytest.approx(float(F.cross_entropy(logits, torch.tensor([1, 0]))))
    with pytest.raises(ValueError, match="label 2"):
        task.fit([FeatureBag(torch.ones(1, 1), case_id="x", label=2)])
