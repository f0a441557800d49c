"""models.py: a spec builds a model; a checkpoint rebuilds it with identical outputs."""
from __future__ import annotations

import json

import pytest
import torch

from r2t_plugin.models import CheckpointError, ModelSpec, build_model, load_checkpoint, save_checkpoint

R2T = {"dim": 16, "heads": 2, "region_num": 2, "layout": "coords"}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cells = torch.randperm(36, generator=g)[:20]
    coords = torch.stack([cells % 6, cells // 6], dim=1).float()[None] * 256
    return torch.randn(1, 20, 8, generator=g), coords


@pytest.mark.parametrize("r2t", [None, R2T], ids=["plain", "r2t"])
def test_round_trip_gives_identical_outputs(tmp_path, r2t) -> None:
    spec = ModelSpec("abmil", 8, 3, r2t=r2t, classes=("a", "b", "c"), name="test model")
    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = save_checkpoint(tmp_path / "sub" / "best.pt", model.state_dict(), spec)
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary file left
    loaded, spec2 = load_checkpoint(path)
    assert spec2 == spec and not loaded.training
    x, coords = _inputs()
    with torch.no_grad():
        a, b = model(x, coords=coords)["logits"], loaded(x, coords=coords)["logits"]
    assert torch.equal(a, b)
    torch.manual_seed(1)
    other = build_model(spec).eval()
    with torch.no_grad():
        assert not torch.equal(other(x, coords=coords)["logits"], a)  # the weights did come from the file


def test_spec_dict_is_json_and_round_trips() -> None:
    spec = ModelSpec("clam_mb", 8, 2, task="classification", options={"dropout": 0.0}, r2t=R2T,
                     classes=("benign", "tumor"))
    plain = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(plain) == spec
    with pytest.raises(ValueError, match="task must be one of"):
        ModelSpec("abmil", 8, 2, task="regression")
    with pytest.raises(ValueError, match="3 class names for n_out=2"):
        ModelSpec("abmil", 8, 2, classes=("a", "b", "c"))


def test_bad_checkpoints_name_the_file(tmp_path) -> None:
    spec = ModelSpec("abmil", 8, 2)
    cases = {
        "garbage.pt": lambda p: p.write_bytes(b"not a checkpoint"),
        "bare.pt": lambda p: torch.save(build_model(spec).state_dict(), p),
        "wrong.pt": lambda p: save_checkpoint(p, build_model(ModelSpec("abmil", 4, 2)).state_dict(), spec),
        "version.pt": lambda p: torch.save({"format": "r2t-plugin/model", "version": 99, "spec": {}}, p),
        "spec.pt": lambda p: torch.save({"format": "r2t-plugin/model", "version": 1, "spec": {"x": 1}}, p),
    }
    messages = {"garbage.pt": "not a readable torch checkpoint", "bare.pt": "does not say which model",
                "wrong.pt": "do not fit the model", "version.pt": "version 99",
                "spec.pt": "invalid model spec"}
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(CheckpointError, match=messages[name]) as err:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_new_specs_record_residual_explicitly() -> None:
    from r2t_plugin.wrap import ResidualStage

    spec = ModelSpec("abmil", 8, 2, r2t=R2T)  # residual not given: with_r2t's default, written down
    assert spec.r2t == {**R2T, "residual": True} and spec.to_dict()["r2t"]["residual"] is True
    assert isinstance(build_model(spec).stage, ResidualStage)
    assert ModelSpec("abmil", 8, 2, r2t={**R2T, "residual": False}).to_dict()["r2t"]["residual"] is False
    assert ModelSpec("abmil", 8, 2).r2t is None


def test_a_spec_saved_before_the_residual_default_rebuilds_its_model(tmp_path) -> None:
    """A best.pt written when with_r2t replaced the features by default has no ``residual`` key:
    it is read as the replacing stage it was trained with, not as today's default."""
    from r2t_plugin.plugins import create_aggregator
    from r2t_plugin.wrap import with_r2t

    torch.manual_seed(0)
    model = with_r2t(create_aggregator("abmil", 8, 2), residual=False, **R2T).eval()
    old_spec = {"aggregator": "abmil", "in_dim": 8, "n_out": 2, "task": "classification", "options": {},
                "r2t": dict(R2T), "classes": [], "name": ""}
    torch.save({"format": "r2t-plugin/model", "version": 1, "spec": old_spec, "state_dict": model.state_dict()},
               tmp_path / "best.pt")
    loaded, spec = load_checkpoint(tmp_path / "best.pt")
    assert spec.r2t == {**R2T, "residual": False}
    x, coords = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, coords=coords)["logits"], model(x, coords=coords)["logits"])
