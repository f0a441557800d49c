"""Importing checkpoints of the authors' code and writing them back."""
import argparse

import pytest
import torch

from r2t_plugin import R2T, R2TABMIL, load_official_checkpoint, to_official_state_dict
from r2t_plugin.r2t.official import PRESETS, CheckpointError
from . import reference_loops as ref


def reference_state_dict(d_in=12, c=16, heads=2, k=1, epeg_k=5, n_classes=2, rmsa_layers=1,
                         mlp=False, seed=0):
    """A checkpoint with exactly the reference's keys, written by hand."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    e = "online_encoder."
    sd = {"patch_to_emb.0.weight": r(c, d_in), "patch_to_emb.0.bias": r(c)}
    for i in range(rmsa_layers):
        p = f"{e}layers.{i}."
        sd.update({p + "norm.weight": 1 + r(c), p + "norm.bias": r(c),
                   p + "attn.attn.qkv.weight": r(3 * c, c), p + "attn.attn.qkv.bias": r(3 * c),
                   p + "attn.attn.proj.weight": r(c, c), p + "attn.attn.proj.bias": r(c),
                   p + "attn.attn.pe.weight": r(heads, 1, epeg_k, 1), p + "attn.attn.pe.bias": r(heads)})
    p = f"{e}cr_msa."
    sd.update({p + "norm.weight": 1 + r(c), p + "norm.bias": r(c),
               p + "attn.attn.qkv.weight": r(3 * c, c), p + "attn.attn.qkv.bias": r(3 * c),
               p + "attn.attn.proj.weight": r(c, c), p + "attn.attn.proj.bias": r(c)})
    if mlp:
        sd[p + "attn.phi.0.weight"] = r(c // 4, c)
        sd[p + "attn.phi.2.weight"] = r(k, c // 4)
    else:
        sd[p + "attn.phi"] = r(c, k)
    sd.update({f"{e}norm.weight": 1 + r(c), f"{e}norm.bias": r(c),
               "pool_fn.attention.attention.0.weight": r(128, c),
               "pool_fn.attention.attention.2.weight": r(1, 128),
               "predictor.weight": r(n_classes, c), "predictor.bias": r(n_classes)})
    return sd


@pytest.mark.parametrize("prefix", ["", "module."])
def test_reference_checkpoint_file_loads_and_computes_the_reference(tmp_path, prefix):
    sd = reference_state_dict(k=3, epeg_k=5)
    path = tmp_path / "best.pth"
    torch.save({"model": {prefix + k: v for k, v in sd.items()}}, path)
    model = load_official_checkpoint(path, crmsa_heads=2, all_shortcut=True, attn_act="tanh")
    assert isinstance(model, R2TABMIL) and model.stage.mode == "official" and not model.training
    x = torch.randn(300, 12)
    with torch.no_grad():
        logits = model(x)["logits"][0]
    _, want = ref.r2t_abmil(sd, x, heads=2, crmsa_heads=2, region_num=8, all_shortcut=True,
                            crmsa_mlp=False, epeg=True, abmil_act="tanh")
    torch.testing.assert_close(logits, want.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(mlp=True, k=5), dict(rmsa_layers=2, epeg_k=9)])
def test_round_trip_is_bit_exact(kw):
    sd = reference_state_dict(**kw)
    model = load_official_checkpoint(sd, crmsa_heads=2, all_shortcut=False, attn_act="relu")
    back = to_official_state_dict(model)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def stage_config(stage: R2T) -> dict:
    """The hyperparameters an R2T was built with, read from its modules."""
    rmsa, cr = stage.layers[0].attn, stage.crmsa.attn
    return dict(in_dim=stage.in_dim, dim=stage.dim, heads=rmsa.heads, epeg_k=rmsa.pe.kernel_size[0],
                crmsa_k=cr.k, crmsa_heads=cr.heads, crmsa_mlp=isinstance(cr.phi, torch.nn.Sequential),
                n_layers=len(stage.layers) + 1, all_shortcut=stage.all_shortcut)


def test_shapes_are_inferred():
    model = load_official_checkpoint(reference_state_dict(mlp=True, k=5, epeg_k=9, rmsa_layers=2, n_classes=4),
                                     crmsa_heads=2, all_shortcut=False, attn_act="tanh")
    o = stage_config(model.stage)
    assert (o["in_dim"], o["dim"], o["heads"], o["epeg_k"], o["crmsa_k"], o["crmsa_mlp"], o["n_layers"]) == \
        (12, 16, 2, 9, 5, True, 3)
    assert model.n_out == 4


def test_preset_fills_hyperparameters():
    sd = reference_state_dict(d_in=1024, c=16, heads=2, k=1, epeg_k=15)
    model = load_official_checkpoint(sd, preset="C16-R50")
    o = stage_config(model.stage)
    assert o["all_shortcut"] is True and o["crmsa_heads"] == 8 and model.pool.attention[1].__class__.__name__ == "Tanh"
    with pytest.raises(CheckpointError, match="preset 'NSCLC-R50' says epeg_k=21"):
        load_official_checkpoint(sd, preset="NSCLC-R50")
    with pytest.raises(CheckpointError, match="unknown preset 'C17'.*C16-R50"):
        load_official_checkpoint(sd, preset="C17")


def test_missing_hyperparameters_are_named_with_the_presets():
    with pytest.raises(CheckpointError, match=r"crmsa_heads, all_shortcut, attn_act.*C16-R50.*NSCLC-PLIP"):
        load_official_checkpoint(reference_state_dict())


def test_wrong_and_missing_keys_are_reported_by_name():
    sd = reference_state_dict()
    sd["online_encoder.layers.0.attn.attn.rel_pos"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected key.*online_encoder.layers.0.attn.attn.rel_pos"):
        load_official_checkpoint(sd, crmsa_heads=2, all_shortcut=False, attn_act="tanh")
    sd = reference_state_dict()
    del sd["online_encoder.cr_msa.attn.attn.proj.bias"]
    with pytest.raises(CheckpointError, match="missing key.*online_encoder.cr_msa.attn.attn.proj.bias"):
        load_official_checkpoint(sd, crmsa_heads=2, all_shortcut=False, attn_act="tanh")
    sd = reference_state_dict()
    sd["online_encoder.layers.0.attn.attn.proj.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match="proj.bias has shape"):
        load_official_checkpoint(sd, crmsa_heads=2, all_shortcut=False, attn_act="tanh")


def test_resume_file_is_refused_with_advice(tmp_path):
    path = tmp_path / "checkpoint_epoch_7.pth"
    torch.save({"model": reference_state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True.*best-model file"):
        load_official_checkpoint(path, preset="C16-R50")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official_checkpoint(tmp_path / "nope.pth", preset="C16-R50")


def test_encoder_only_checkpoint_gives_a_bare_stage():
    e = "online_encoder."
    sd = {k[len(e):]: v for k, v in reference_state_dict().items() if k.startswith(e)}
    stage = load_official_checkpoint(sd, crmsa_heads=2, all_shortcut=False)
    assert isinstance(stage, R2T) and stage.proj is None and stage.mode == "official"
    back = to_official_state_dict(stage)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_presets_cover_the_published_table():
    assert set(PRESETS) == {"C16-R50", "C16-PLIP", "BRCA-R50", "BRCA-PLIP", "NSCLC-R50", "NSCLC-PLIP", "survival"}
    assert all(p["attn_act"] == "tanh" and p["n_layers"] == 2 for p in PRESETS.values())
