"""``variants: ablation``: what it expands to, that every variant builds and differs, and
that a cohort with coordinates gets the coords layout (with the sequence one beside it)."""
from __future__ import annotations

import pytest
import torch

from r2t_plugin import FeatureBag
from r2t_plugin.bag import BagBatch
from r2t_plugin.compare.config import ConfigError, parse_config
from r2t_plugin.compare.grid import resolve_variants
from r2t_plugin.compare.runner import run_compare
from r2t_plugin.models import ModelSpec, build_model

from .conftest import read_rows

SEQUENCE = ["plain", "r2t", "r2t_rmsa_only", "r2t_no_epeg"]


def _parse(tiny_config, variants):
    return parse_config({**tiny_config, "variants": variants})


def test_ablation_expands_to_the_papers_variants(tiny_config):
    config = _parse(tiny_config, "ablation")
    assert [v.name for v in config.variants] == SEQUENCE
    r2t = {v.name: v.r2t for v in config.variants}
    seq = {"layout": "sequence", "residual": True}
    assert r2t["plain"] is None and r2t["r2t"] == seq
    assert r2t["r2t_rmsa_only"] == {**seq, "crmsa": False}
    assert r2t["r2t_no_epeg"] == {**seq, "epeg": False}
    with_coords = resolve_variants(config, has_coords=True)
    assert [v.name for v in with_coords.variants] == [*SEQUENCE, "r2t_sequence"]
    assert all(v.r2t["layout"] == "coords" for v in with_coords.variants[1:4])
    assert with_coords.variants[4].r2t == seq
    assert resolve_variants(config, has_coords=False) is config
    listed = parse_config(tiny_config)
    assert resolve_variants(listed, has_coords=True) is listed  # an explicit list is kept as written


def test_ablation_shares_options_and_names_bad_ones(tiny_config):
    config = _parse(tiny_config, {"ablation": {"heads": 2, "residual": False}})
    assert all(v.r2t["heads"] == 2 and not v.r2t["residual"] for v in config.variants[1:])
    with pytest.raises(ConfigError) as info:
        _parse(tiny_config, {"ablation": {"layout": "coords", "hedas": 2}})
    text = str(info.value)
    assert "variants.ablation.layout: set by the ablation itself" in text
    assert "variants.ablation.hedas: unknown key" in text


def test_every_ablation_variant_builds_and_computes_something_else():
    g = torch.Generator().manual_seed(0)
    coords = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(5), indexing="ij"), -1).reshape(-1, 2) * 256
    bag = FeatureBag(torch.randn(30, 8, generator=g), coords=coords.float(), patch_size=256, case_id="c")
    batch = BagBatch.collate([bag])
    outputs = {}
    config = resolve_variants(parse_config({"cohort": {"csv": "c.csv", "features": ".", "task": "classification"},
                                            "aggregators": ["abmil"], "output": "o",
                                            "variants": {"ablation": {"heads": 2, "crmsa_heads": 2,
                                                                      "residual": False}}}), True)
    for v in config.variants:
        torch.manual_seed(0)
        model = build_model(ModelSpec("abmil", 8, 2, options={"dim": 8, "hidden": 4}, r2t=v.r2t)).eval()
        stage = getattr(model, "stage", None)
        if v.r2t is not None:
            assert stage.layout == v.r2t["layout"]
            assert (stage.crmsa is None) == (v.name == "r2t_rmsa_only")
            assert all((layer.attn.pe is None) == (v.name == "r2t_no_epeg") for layer in stage.layers)
        with torch.no_grad():
            outputs[v.name] = model(batch)["logits"]
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a], outputs[b]), (a, b)


def test_compare_runs_the_coords_ablation_on_a_cohort_with_coordinates(tiny_config):
    raw = {**tiny_config, "variants": {"ablation": {"heads": 2, "crmsa_heads": 2, "epeg_k": 3}},
           "aggregators": [{"name": "abmil", "options": {"dim": 8, "hidden": 4}}],
           "training": {"epochs": 1, "lr": 1e-3, "num_threads": 1}}
    outcome = run_compare(parse_config(raw), progress=False)
    rows = read_rows(outcome.output / "results.csv")
    assert sorted({r["variant"] for r in rows}) == sorted([*SEQUENCE, "r2t_sequence"])
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 5 * 2
    assert "r2t_sequence" in outcome.summary


def test_the_default_r2t_variant_starts_as_the_plain_model():
    config = parse_config({"cohort": {"csv": "c.csv", "features": ".", "task": "classification"},
                           "aggregators": ["abmil"], "output": "o"})
    assert [(v.name, v.r2t) for v in config.variants] == [("plain", None), ("r2t", {"residual": True})]
    x = torch.randn(30, 8)
    torch.manual_seed(0)
    plain = build_model(ModelSpec("abmil", 8, 2, options={"dim": 16, "hidden": 4})).eval()
    torch.manual_seed(0)
    wrapped = build_model(ModelSpec("abmil", 8, 2, options={"dim": 16, "hidden": 4}, r2t=config.variants[1].r2t)).eval()
    wrapped.inner.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(wrapped(x)["logits"], plain(x)["logits"], atol=1e-6)
