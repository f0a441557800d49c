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


def test_auc_of_predictions_constant_up_to_rounding_is_one_half():
    """Logits equal up to float noise: the noise (here ordered like the labels) must not rank."""
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    noise = torch.arange(6, dtype=torch.float32) * 1e-7  # a few ulp of 0.3
    logits = torch.stack([torch.full((6,), 0.3), 0.3 + noise], dim=1)
    assert len(set(torch.softmax(logits, 1)[:, 1].tolist())) > 1  # the probabilities do differ
    assert ClassificationTask(2).metrics(logits, y)["auc"] == 0.5
    three = torch.cat([logits, torch.full((6, 1), 0.3)], dim=1)
    assert ClassificationTask(3).metrics(three, torch.tensor([0, 1, 2, 0, 1, 2]))["auc"] == 0.5


def test_tie_aware_auc_is_sklearns_on_distinct_scores():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 3, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    p = torch.softmax(logits, 1).numpy()
    want = roc_auc_score(y.numpy(), p, multi_class="ovr", average="macro", labels=[0, 1, 2])
    assert ClassificationTask(3).metrics(logits, y)["auc"] == pytest.approx(want, abs=1e-12)
    yb = (y > 0).long()
    want = roc_auc_score(yb.numpy(), torch.softmax(logits[:, :2], 1)[:, 1].numpy())
    assert ClassificationTask(2).metrics(logits[:, :2], yb)["auc"] == pytest.approx(want, abs=1e-12)


def test_tie_ranks_groups_only_values_within_the_tolerance():
    from r2t_plugin.tasks import tie_ranks

    ranks = tie_ranks([0.5, 0.5 * (1 + 5e-7), 0.3, 0.5 * (1 + 3e-6), -2.0, 0.0, 1e-12])
    assert ranks.tolist() == [4, 4, 3, 5, 0, 1, 2]  # 0.0 and 1e-12 differ relatively
