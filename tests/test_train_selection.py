"""Epoch selection and stopping of ``fit`` on scripted validation values:
``select`` (score / loss), ``smooth`` (mean of the last k epochs) and ``min_epochs``."""
from __future__ import annotations

import math

import pytest
import torch

import r2t_plugin.train as train_mod
from r2t_plugin import FeatureBag
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.tasks import ClassificationTask
from r2t_plugin.train import TrainConfig, TrainConfigError, fit, seed_everything

# validation AUC and loss per epoch: a lucky first epoch (best AUC), the lowest loss at
# epoch 5, the best 3-epoch mean AUC over epochs 4-6
AUCS = [0.90, 0.50, 0.50, 0.80, 0.85, 0.84, 0.83, 0.60]
LOSSES = [0.60, 0.70, 0.65, 0.40, 0.35, 0.30, 0.45, 0.50]


def _bags(n: int, seed: int) -> list[FeatureBag]:
    g = torch.Generator().manual_seed(seed)
    return [FeatureBag(torch.randn(5, 4, generator=g), case_id=f"{seed}-{i}", label=i % 2) for i in range(n)]


def _run(tmp_path, monkeypatch, aucs=AUCS, losses=LOSSES, **cfg):
    train, val, test = _bags(4, 0), _bags(4, 1), _bags(4, 2)
    real, calls = train_mod.evaluate, []

    def scripted(model, task, bags, **kw):
        if bags is not val:
            return real(model, task, bags, **kw)
        i = len(calls)
        calls.append(i)
        return {"auc": aucs[i], "loss": losses[i]}, torch.zeros(len(bags), 2)

    monkeypatch.setattr(train_mod, "evaluate", scripted)
    seed_everything(0)
    model = create_aggregator("abmil", 4, 2, dim=8, hidden=4)
    settings = dict(epochs=len(aucs), lr=1e-3, patience=None, progress=False, num_threads=1)
    return fit(model, ClassificationTask(2), train, val, test, TrainConfig(**{**settings, **cfg}), tmp_path)


@pytest.mark.parametrize("cfg, epoch", [
    ({}, 0),                                  # the task's score: the lucky first epoch
    ({"select": "loss"}, 5),                  # validation loss
    ({"smooth": 3}, 6),                       # mean AUC of epochs 3-5 = 0.83, 4-6 = 0.84
    ({"select": "loss", "smooth": 2}, 5),     # mean loss of epochs 4-5 = 0.325
])
def test_each_selection_metric_picks_its_epoch(tmp_path, monkeypatch, cfg, epoch):
    res = _run(tmp_path, monkeypatch, **cfg)
    assert res.best_epoch == epoch
    assert res.val["auc"] == AUCS[epoch] and res.val["loss"] == LOSSES[epoch]


def test_smoothing_never_prefers_a_partial_window(tmp_path, monkeypatch):
    # the first epoch alone (0.99) is higher than any 3-epoch mean (0.53, 0.47, 0.63)
    res = _run(tmp_path, monkeypatch, aucs=[0.99, 0.3, 0.3, 0.8, 0.8], losses=[0.5] * 5, smooth=3)
    assert res.best_epoch == 4


def test_min_epochs_delays_early_stopping(tmp_path, monkeypatch):
    aucs = [0.9, 0.5, 0.5, 0.5, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5]
    early = _run(tmp_path / "a", monkeypatch, aucs=aucs, losses=[0.5] * 10, patience=2)
    assert (early.epochs_run, early.best_epoch) == (3, 0)
    late = _run(tmp_path / "b", monkeypatch, aucs=aucs, losses=[0.5] * 10, patience=2, min_epochs=6)
    assert (late.epochs_run, late.best_epoch) == (8, 5)
    # the cosine schedule spans all 10 epochs either way
    lrs = [row["lr"] for row in late.history]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(8)])


@pytest.mark.parametrize("cfg, field", [({"select": "auc"}, "select"), ({"smooth": 0}, "smooth"),
                                        ({"min_epochs": 30}, "min_epochs"), ({"min_epochs": -1}, "min_epochs")])
def test_bad_selection_settings_are_named(cfg, field):
    with pytest.raises(TrainConfigError) as info:
        TrainConfig(**{"epochs": 20, **cfg})
    assert set(info.value.problems) == {field}


def test_rounding_noise_is_a_tie_broken_by_loss(tmp_path, monkeypatch):
    # the same AUC computed two ways differs in the last bit; the lower loss decides
    res = _run(tmp_path, monkeypatch, aucs=[0.88, 0.8800000000000001, 0.88], losses=[0.5, 0.6, 0.4])
    assert res.best_epoch == 2
