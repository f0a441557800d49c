"""One training run: learns an easy task, selects on validation, tests once, resumes."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

import r2t_plugin.train as train_mod
from r2t_plugin import FeatureBag
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.tasks import ClassificationTask, SurvivalTask
from r2t_plugin.train import TrainConfig, fit, seed_everything

D = 8


def easy_bags(n: int, seed: int) -> list[FeatureBag]:
    """Positive bags hide 2 instances shifted by +4 on feature 0 among 6-12 noise instances."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        label = i % 2
        k = int(torch.randint(6, 13, (1,), generator=g))
        x = torch.randn(k, D, generator=g)
        if label:
            x[torch.randperm(k, generator=g)[:2], 0] += 4.0
        bags.append(FeatureBag(x, case_id=f"s{seed}_{i}", label=label))
    return bags


def abmil(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return create_aggregator("abmil", D, 2, dim=16, hidden=8, dropout=0.0)


CFG = dict(epochs=6, lr=5e-3, patience=None, progress=False, num_threads=1)


def _log(path):
    with open(path / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_short_run_learns_an_easy_task(tmp_path):
    res = fit(abmil(), ClassificationTask(2), easy_bags(32, 1), easy_bags(16, 2), easy_bags(40, 3),
              TrainConfig(**CFG), tmp_path)
    assert res.test["auc"] > 0.9, res.test
    assert set(res.test) == {"auc", "balanced_accuracy", "accuracy", "f1_macro", "loss"}
    rows = _log(tmp_path)
    assert len(rows) == res.epochs_run == 6
    best = rows[res.best_epoch]
    assert float(best["val_auc"]) == pytest.approx(res.val["auc"])
    assert res.n_params == sum(p.numel() for p in abmil().parameters())
    assert res.seconds > 0 and res.peak_memory_mb > 0
    assert (tmp_path / "best.pt").is_file() and not (tmp_path / "last.pt").exists()
    flat = res.as_dict()
    assert flat["test_auc"] == res.test["auc"] and flat["best_epoch"] == res.best_epoch


def test_selection_uses_validation_and_test_is_evaluated_once(tmp_path, monkeypatch):
    train, val, test = easy_bags(24, 1), easy_bags(12, 2), easy_bags(12, 3)
    calls = []
    real = train_mod.evaluate

    def spy(model, task, bags, **kw):
        calls.append("test" if bags is test else "val" if bags is val else "other")
        return real(model, task, bags, **kw)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    res = fit(abmil(), ClassificationTask(2), train, val, test, TrainConfig(**{**CFG, "epochs": 4}), tmp_path)
    assert calls == ["val"] * 4 + ["test"]
    rows = _log(tmp_path)
    keys = [(float(r["val_auc"]), -float(r["val_loss"])) for r in rows]
    assert res.best_epoch == max(range(len(keys)), key=lambda i: keys[i])  # first best on validation
    assert [int(r["best"]) for r in rows].count(1) >= 1
    # a finished run is returned from result.json, without training or testing again
    calls.clear()
    again = fit(abmil(), ClassificationTask(2), train, val, test, TrainConfig(**{**CFG, "epochs": 4}), tmp_path)
    assert calls == [] and again.test == res.test
    with pytest.raises(ValueError, match="different run"):
        fit(abmil(), ClassificationTask(2), train, val, test, TrainConfig(**{**CFG, "epochs": 5}), tmp_path)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    train, val, test = easy_bags(16, 1), easy_bags(8, 2), easy_bags(8, 3)
    cfg = TrainConfig(**{**CFG, "epochs": 4})
    full = fit(abmil(), ClassificationTask(2), train, val, test, cfg, tmp_path / "full")

    real, seen = train_mod.evaluate, []

    def crash_on_third(*a, **kw):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "evaluate", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        fit(abmil(), ClassificationTask(2), train, val, test, cfg, tmp_path / "cut")
    assert len(_log(tmp_path / "cut")) == 2 and (tmp_path / "cut" / "last.pt").is_file()
    monkeypatch.setattr(train_mod, "evaluate", real)
    resumed = fit(abmil(seed=123), ClassificationTask(2), train, val, test, cfg, tmp_path / "cut")
    assert resumed.best_epoch == full.best_epoch
    assert resumed.test == pytest.approx(full.test)
    for a, b in zip(_log(tmp_path / "full"), _log(tmp_path / "cut")):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-6)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-6)


def test_accumulation_matches_a_larger_batch(tmp_path):
    bags = easy_bags(8, 1)
    models = []
    for bs, acc in ((2, 1), (1, 2)):
        m = abmil()
        fit(m, ClassificationTask(2), bags, bags[:4], [],
            TrainConfig(**{**CFG, "epochs": 1, "batch_size": bs, "accumulation": acc}), tmp_path / f"{bs}_{acc}")
        models.append(m)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.allclose(models[0].classifier.weight, abmil().classifier.weight)  # it did train


class AuxModel(nn.Module):
    """A model with an auxiliary loss that needs the labels (as CLAM's instance loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(D, 2)
        self.labels_seen = []

    def forward(self, batch, label=None):
        if label is not None:
            self.labels_seen.append(label.tolist())
        pooled = (batch.features * batch.mask.unsqueeze(-1)).sum(1) / batch.mask.sum(1, keepdim=True)
        return {"logits": self.head(pooled), "aux_loss": torch.tensor(100.0)}


def test_aux_loss_is_added_and_labels_reach_the_model(tmp_path):
    m = AuxModel()
    fit(m, ClassificationTask(2), easy_bags(4, 1), easy_bags(4, 2), [], TrainConfig(**{**CFG, "epochs": 1}), tmp_path)
    row = _log(tmp_path)[0]
    assert 100 < float(row["train_loss"]) < 102
    assert float(row["val_loss"]) < 2  # validation reports the task loss only
    assert sorted(x for batch in m.labels_seen for x in batch) == [0, 0, 1, 1]


def test_survival_run_reports_c_index(tmp_path):
    g = torch.Generator().manual_seed(0)
    bags = []
    for i in range(30):
        risk = i / 30
        x = torch.randn(5, D, generator=g)
        x[:, 0] += 3 * risk
        bags.append(FeatureBag(x, case_id=str(i), time=float(30 - i) + 0.5, event=int(i % 4 != 0)))
    seed_everything(0)
    model = create_aggregator("abmil", D, 4, dim=16, hidden=8, dropout=0.0)
    res = fit(model, SurvivalTask(4), bags[::2], bags[1::4], bags[3::4], TrainConfig(**{**CFG, "epochs": 3}), tmp_path)
    assert res.monitor == "c_index"
    assert {"c_index", "c_index_ipcw", "ibs", "loss"} <= set(res.test) and 0 <= res.test["c_index"] <= 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["result"]["best_epoch"] == res.best_epoch


def grid_bags(n: int, seed: int) -> list[FeatureBag]:
    """Small bags with coordinates on a 4 x 3 patch grid (for graph and R²T models)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(3), indexing="ij"), -1).reshape(-1, 2) * 256.0
    return [FeatureBag(torch.randn(12, D, generator=g), coords=xy, patch_size=256.0, label=i % 2, case_id=str(i))
            for i in range(n)]


def test_clam_instance_loss_path_trains(tmp_path):
    seed_everything(0)
    model = create_aggregator("clam_sb", D, 2, dim=16, hidden=8, k_sample=2)
    res = fit(model, ClassificationTask(2), grid_bags(4, 1), grid_bags(2, 2), grid_bags(2, 3),
              TrainConfig(**{**CFG, "epochs": 1}), tmp_path)
    assert res.epochs_run == 1 and torch.isfinite(torch.tensor(res.test["loss"]))


def test_bf16_autocast_on_cpu(tmp_path):
    res = fit(abmil(), ClassificationTask(2), easy_bags(6, 1), easy_bags(4, 2), easy_bags(4, 3),
              TrainConfig(**{**CFG, "epochs": 2, "amp": "bf16"}), tmp_path)
    assert res.epochs_run == 2 and 0 <= res.test["accuracy"] <= 1


BUILTIN = ["abmil", "gated_abmil", "mean", "max", "clam_sb", "clam_mb", "dsmil", "dtfd", "transmil", "patch_gcn"]


@pytest.mark.slow
@pytest.mark.parametrize("r2t", [False, True], ids=["plain", "r2t"])
@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_aggregator_trains_with_and_without_r2t(tmp_path, name, r2t):
    from r2t_plugin.wrap import with_r2t

    seed_everything(0)
    model = create_aggregator(name, D, 2, dim=16)
    if r2t:
        model = with_r2t(model)
    res = fit(model, ClassificationTask(2), grid_bags(4, 1), grid_bags(2, 2), grid_bags(2, 3),
              TrainConfig(**{**CFG, "epochs": 2}), tmp_path)
    assert res.epochs_run == 2 and torch.isfinite(torch.tensor(res.test["loss"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_cuda_run_with_mixed_precision(tmp_path, amp):
    res = fit(abmil(), ClassificationTask(2), easy_bags(32, 1), easy_bags(16, 2), easy_bags(40, 3),
              TrainConfig(**{**CFG, "device": "cuda", "amp": amp}), tmp_path)
    assert res.test["auc"] > 0.9 and res.peak_memory_kind == "cuda_max_allocated"


def test_loader_workers_are_checked_logged_and_do_not_block_a_resume(tmp_path):
    with pytest.raises(train_mod.TrainConfigError) as err:
        TrainConfig(num_workers=-1)
    assert list(err.value.problems) == ["num_workers"]
    train, val = easy_bags(8, 1), easy_bags(4, 2)
    first = fit(abmil(), ClassificationTask(2), train, val, [], TrainConfig(**{**CFG, "epochs": 2}), tmp_path)
    assert all(float(r["wait_seconds"]) >= 0 for r in _log(tmp_path))
    # the number of loader threads does not change what is trained: the finished run is reused
    again = fit(abmil(), ClassificationTask(2), train, val, [],
                TrainConfig(**{**CFG, "epochs": 2, "num_workers": 3}), tmp_path)
    assert again.history == first.history


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux /proc")
def test_peak_memory_is_the_runs_own_not_the_process_lifetime(tmp_path):
    """A run's peak_memory_mb is not raised by what the process held before it (an earlier
    run of a comparison, a filled cache that was dropped)."""
    def rss_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(s.split()[1]) for s in fh if s.startswith("VmRSS:")) / 1024

    big = torch.ones(600 * 2**20 // 4)  # 600 MB touched, then returned to the system
    del big
    res = fit(abmil(), ClassificationTask(2), easy_bags(8, 1), easy_bags(4, 2), [],
              TrainConfig(**{**CFG, "epochs": 1}), tmp_path)
    assert res.peak_memory_kind == "run_max_rss"
    assert res.peak_memory_mb < rss_mb() + 300
