"""``TrainConfig.stage_lr_scale``: the re-embedding stage learns at its own learning rate, and
the new setting leaves the fingerprints of runs saved before it untouched; and fit closes its
epoch bar when a run raises (both changed together in train.py)."""
from __future__ import annotations

import json

import pytest
import torch

from r2t_plugin import FeatureBag, with_r2t
from r2t_plugin.checkpoint import fingerprint
from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.manifest import ManifestMismatch, _fingerprint, check_resumable
from r2t_plugin.compare.schema import ConfigError
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.tasks import ClassificationTask
from r2t_plugin.train import TrainConfig, TrainConfigError, fit, seed_everything
from r2t_plugin.wrap import stage_parameters

D = 8


def _bags(n: int, seed: int) -> list[FeatureBag]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(10, D, generator=g)
        x[:3, 0] += 3.0 * (i % 2)
        out.append(FeatureBag(x, case_id=f"{seed}-{i}", label=i % 2))
    return out


def _wrapped(residual: bool = True):
    seed_everything(0)
    return with_r2t(create_aggregator("abmil", D, 2, dim=16, hidden=8, dropout=0.0), residual=residual,
                    layout="sequence", min_region_tokens=4)


@pytest.mark.parametrize("residual", [True, False])
def test_stage_parameters_are_the_stages_and_only_those(residual):
    model = _wrapped(residual)
    got = {id(p) for p in stage_parameters(model)}
    assert got == {id(p) for p in model.stage.parameters()}
    assert not got & {id(p) for p in model.inner.parameters()}
    assert (id(model.stage.gate.weight) in got) if residual else not hasattr(model.stage, "gate")
    r2t_mil = create_aggregator("r2t_abmil", D, 2)  # R²T-MIL holds its stage itself
    assert {id(p) for p in stage_parameters(r2t_mil)} == {id(p) for p in r2t_mil.stage.parameters()} != set()
    assert stage_parameters(create_aggregator("abmil", D, 2)) == []


def _moved(before: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str) -> float:
    return max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()
               if n.startswith(prefix))


def test_the_stage_learns_at_lr_times_the_scale_and_the_aggregator_at_lr(tmp_path):
    moves = {}
    for scale in (1.0, 1e-6):
        model = _wrapped()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        fit(model, ClassificationTask(2), _bags(8, 0), _bags(4, 1), [],
            TrainConfig(epochs=2, lr=1e-2, patience=None, progress=False, stage_lr_scale=scale),
            tmp_path / str(scale))
        moves[scale] = (_moved(before, model, "stage."), _moved(before, model, "inner."))
    # Adam steps are about lr in size: the stage's shrink with the scale, the aggregator's do not
    assert moves[1.0][0] > 1e-3 and moves[1e-6][0] < 1e-6
    assert moves[1e-6][1] > 1e-3
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(stage_lr_scale=0)
    assert list(err.value.problems) == ["stage_lr_scale"]


def test_a_run_saved_before_the_setting_existed_still_resumes_and_a_new_scale_does_not():
    model, task = _wrapped(), ClassificationTask(2)
    now = fingerprint(vars(TrainConfig()), model, task, (8, 4, 0))
    assert "stage_lr_scale" not in now  # at its default it is left out, as in fingerprints written before it
    scaled = fingerprint(vars(TrainConfig(stage_lr_scale=0.1)), model, task, (8, 4, 0))
    assert scaled["stage_lr_scale"] == 0.1 and {k: v for k, v in scaled.items() if k != "stage_lr_scale"} == now


CONFIG = {"cohort": {"csv": "cohort.csv", "features": "feats", "task": "classification"},
          "aggregators": ["abmil"], "output": "out", "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {}}]}


def test_compare_folders_written_before_the_setting_resume_and_a_changed_scale_is_refused(tmp_path):
    old = _fingerprint(parse_config(CONFIG), {})
    assert "stage_lr_scale" not in old["training"]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"fingerprint": old}))
    check_resumable(path, {"fingerprint": _fingerprint(parse_config(CONFIG), {})})
    scaled = _fingerprint(parse_config({**CONFIG, "training": {"stage_lr_scale": 0.1}}), {})
    with pytest.raises(ManifestMismatch, match="training"):
        check_resumable(path, {"fingerprint": scaled})
    with pytest.raises(ConfigError, match="training.stage_lr_scale: must be > 0"):
        parse_config({**CONFIG, "training": {"stage_lr_scale": -1.0}})


def test_the_epoch_bar_is_closed_when_a_run_raises(tmp_path, monkeypatch):
    import r2t_plugin.train as train_mod

    closed = []

    class Bar(train_mod.ProgressBar):
        def close(self) -> None:
            closed.append(True)
            super().close()

    def boom(*args, **kwargs):
        raise RuntimeError("stopped in the epoch")

    monkeypatch.setattr(train_mod, "ProgressBar", Bar)
    monkeypatch.setattr(train_mod, "_train_epoch", boom)
    with pytest.raises(RuntimeError, match="stopped in the epoch"):
        fit(_wrapped(), ClassificationTask(2), _bags(4, 0), _bags(4, 1), [],
            TrainConfig(epochs=2, progress=False), tmp_path)
    assert closed == [True]
