"""Survival task: the NLL against a hand computation, C-index against brute force, bins."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch

from r2t_plugin import FeatureBag
from r2t_plugin.tasks import SurvivalTask, c_index, hazard_nll, risk_from_logits
from r2t_plugin.tasks.survival import SurvivalTargets


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_nll_matches_a_hand_computation():
    z = [[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1]]
    # case 0: event observed in bin 1 -> -log[(1 - h00) * h01]
    # case 1: censored in bin 1       -> -log[(1 - h10) * (1 - h11)]
    h = [[_sig(v) for v in row] for row in z]
    case0 = -math.log((1 - h[0][0]) * h[0][1])
    case1 = -math.log((1 - h[1][0]) * (1 - h[1][1]))
    got = hazard_nll(torch.tensor(z), torch.tensor([1, 1]), torch.tensor([1, 0]))
    assert float(got) == pytest.approx((case0 + case1) / 2, rel=1e-6)
    # bin 0 observed: only -log h_0; last bin censored: survive every bin
    first = hazard_nll(torch.tensor([z[0]]), torch.tensor([0]), torch.tensor([1]))
    assert float(first) == pytest.approx(-math.log(h[0][0]), rel=1e-6)
    last = hazard_nll(torch.tensor([z[1]]), torch.tensor([2]), torch.tensor([0]))
    assert float(last) == pytest.approx(-math.log(np.prod([1 - v for v in h[1]])), rel=1e-6)


def test_task_loss_uses_bins_from_training_times():
    bags = [FeatureBag(torch.zeros(1, 1), case_id=str(i), time=t, event=e)
            for i, (t, e) in enumerate([(1.0, 1), (2.0, 1), (3.0, 1), (4.0, 1), (100.0, 0)])]
    task = SurvivalTask(n_bins=2).fit(bags)
    assert task.edges.tolist() == [2.5]  # the median of the uncensored 1, 2, 3, 4; the censored 100 ignored
    logits = torch.tensor([[0.2, -0.4]])
    t = SurvivalTargets(torch.tensor([3.0]), torch.tensor([1]))  # bin 1, event
    expected = -math.log((1 - _sig(0.2)) * _sig(-0.4))
    assert float(task.loss(logits, t)) == pytest.approx(expected, rel=1e-6)
    assert float(task.loss(logits, FeatureBag(torch.zeros(1, 1), time=3.0, event=1).batch())) == \
        pytest.approx(expected, rel=1e-6)


def test_bins_ignore_censored_times():
    def bags(extra):
        base = [(float(t), 1) for t in range(1, 10)]
        return [FeatureBag(torch.zeros(1, 1), time=t, event=e) for t, e in base + extra]

    a = SurvivalTask(4).fit(bags([]))
    b = SurvivalTask(4).fit(bags([(0.5, 0), (50.0, 0), (60.0, 0)]))
    assert torch.equal(a.edges, b.edges)
    with pytest.raises(RuntimeError, match="fit"):
        SurvivalTask(4).loss(torch.zeros(1, 4), SurvivalTargets(torch.ones(1), torch.ones(1, dtype=torch.long)))


def _brute_c_index(time, event, risk):
    concordant = comparable = 0.0
    for i, j in combinations(range(len(time)), 2):
        if time[i] > time[j]:
            i, j = j, i
        if not event[i] or time[i] == time[j]:
            continue  # only pairs whose earlier time is an observed event
        comparable += 1
        concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def test_c_index_matches_brute_force_pair_count():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 40
        time = rng.permutation(n).astype(float) + rng.random()
        event = rng.random(n) < 0.6
        risk = np.round(rng.standard_normal(n), 1)  # rounding makes some tied risks
        assert c_index(time, event, risk) == pytest.approx(_brute_c_index(time, event, risk))
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1, 1, 0, 1])
    assert c_index(t, e, -t) == 1.0 and c_index(t, e, t) == 0.0


def test_risk_orders_by_hazard_and_metrics_reward_it():
    train = [FeatureBag(torch.zeros(1, 1), time=float(t), event=1) for t in range(1, 21)]
    task = SurvivalTask(4).fit(train)
    times = torch.arange(1, 21, dtype=torch.float32)
    hazard_logit = (20 - times).unsqueeze(1).repeat(1, 4) / 5  # earlier death -> higher hazard
    risk = risk_from_logits(hazard_logit)
    assert bool((risk[:-1] > risk[1:]).all())
    m = task.metrics([hazard_logit[:10], hazard_logit[10:]], SurvivalTargets(times, torch.ones(20, dtype=torch.long)))
    assert m["c_index"] == 1.0
    assert set(m) == {"c_index", "c_index_ipcw", "ibs"}
    # integrated Brier score: a step at each case's own bin beats a flat S = 0.5
    bins = task.bin_of(times)
    step = torch.where(torch.arange(4) < bins.unsqueeze(1), -8.0, 8.0)
    flat = torch.zeros(20, 4)
    flat[:, 0] = 0.0  # h_0 = 0.5, then h = 0 afterwards -> S = 0.5 throughout
    flat[:, 1:] = -30.0
    targets = SurvivalTargets(times, torch.ones(20, dtype=torch.long))
    good, bad = task.metrics(step, targets)["ibs"], task.metrics(flat, targets)["ibs"]
    assert 0 <= good < bad and bad == pytest.approx(0.25, abs=0.01)


def _synthetic_cohort(n: int, seed: int = 0, dim: int = 6, k: int = 8) -> tuple[list[FeatureBag], list[float]]:
    """Bags whose mean along feature 0 sets the log-hazard (exponential event times,
    independent exponential censoring, ~40% censored). Returns the bags and the true scores."""
    rng = np.random.default_rng(seed)
    bags, scores = [], []
    for i in range(n):
        x = rng.standard_normal((k, dim)) + rng.standard_normal(dim)  # bag-level shift + instance noise
        s = float(x.mean(0)[0])
        event_time = rng.exponential(1.0 / (0.05 * math.exp(3.0 * s)))
        censor_time = rng.exponential(1.0 / 0.03)
        bags.append(FeatureBag(torch.tensor(x, dtype=torch.float32), case_id=str(i),
                               time=float(min(event_time, censor_time)), event=int(event_time <= censor_time)))
        scores.append(s)
    return bags, scores


def test_fit_learns_a_synthetic_survival_cohort(tmp_path):
    """End to end (bins, NLL, censoring convention, risk sign, fit, selection): ABMIL trained
    with SurvivalTask must rank held-out patients well when the bag mean sets the hazard."""
    from r2t_plugin.plugins import create_aggregator
    from r2t_plugin.train import TrainConfig, evaluate, fit, seed_everything

    bags, scores = _synthetic_cohort(200)
    train, val, test = bags[:110], bags[110:140], bags[140:]
    events = [b.event for b in bags]
    assert 0.25 < 1 - np.mean(events) < 0.55  # a real share of censored cases
    oracle = c_index([b.time for b in test], [b.event for b in test], scores[140:])
    assert oracle > 0.8  # the signal is there to be learned

    seed_everything(0)
    model = create_aggregator("abmil", 6, 4, dim=16, hidden=8, dropout=0.0)
    task = SurvivalTask(4).fit(train)
    untrained = evaluate(model, task, test)[0]["c_index"]
    cfg = TrainConfig(epochs=8, lr=3e-3, patience=None, progress=False, num_threads=1)
    res = fit(model, task, train, val, test, cfg, tmp_path)

    assert untrained < 0.65
    assert res.test["c_index"] > 0.75, res.test
    assert res.val["c_index"] > 0.75, res.val
    trained_on = evaluate(model, task, train)[0]["c_index"]  # fit() leaves the selected model loaded
    assert trained_on > 0.75
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_c_index_of_risks_constant_up_to_rounding_is_one_half():
    """Risks equal up to float noise (ordered like the times): both concordances are 0.5."""
    time = np.arange(1.0, 13.0)
    event = np.ones(12, dtype=int)
    risk = -2.0 + (12 - time) * 1e-7  # would be perfectly concordant if the noise counted
    assert c_index(time, event, risk) == 0.5
    assert c_index(time, event, -time) == 1.0  # distinct risks keep their exact order
    train = [FeatureBag(torch.zeros(1, 1), time=float(t), event=1) for t in range(1, 21)]
    task = SurvivalTask(4).fit(train)
    logits = torch.zeros(12, 4) + torch.arange(12, dtype=torch.float32).unsqueeze(1) * 1e-7
    m = task.metrics(logits, SurvivalTargets(torch.tensor(time, dtype=torch.float32), torch.ones(12, dtype=torch.long)))
    assert m["c_index"] == 0.5 and m["c_index_ipcw"] == 0.5
