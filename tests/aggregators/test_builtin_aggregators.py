"""Every built-in aggregator: contract, bag alone == bag in a padded batch (with and without
R²T), identity stage == original, residual stage == original at init, gradients, state_dict.

The names come from the aggregator registry (every aggregator a built-in plugin registers),
so a new built-in gets these tests without being listed here. Aggregators of other plugins
are left to their own tests (torchmil.*: tests/adapters/test_torchmil.py, binary only).
"""
from __future__ import annotations

import io

import pytest
import torch

from r2t_plugin import create_aggregator, registry, with_r2t
from r2t_plugin.bag import BagBatch, FeatureBag
from r2t_plugin.plugins import BUILTIN

from .conftest import D

NAMES = [n for n in registry("aggregators").names() if registry("aggregators").provider(n) == BUILTIN]
BRANCHED = {"mean", "max", "dsmil", "clam_mb"}  # one instance-score row per output
NO_PROJECTION = {"r2t_abmil"}  # R²T is its first block: a wrapper's stage goes at the input
OPTIONS = {"transmil": {"heads": 2}, "r2t_abmil": dict(heads=2, region_num=2, min_region_tokens=2, crmsa_heads=2)}
STAGE = dict(heads=2, region_num=2, min_region_tokens=2, crmsa_heads=2)
REPLACING = dict(STAGE, residual=False)  # changes the outputs from the start (the default residual one does not)


def make(name: str, n_out: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_aggregator(name, in_dim=D, n_out=n_out, dim=16, **OPTIONS.get(name, {})).eval()


def test_every_builtin_is_covered():
    assert {"abmil", "gated_abmil", "mean", "max", "transmil", "dsmil", "clam_sb", "clam_mb", "dtfd",
            "patch_gcn", "r2t_abmil"} <= set(NAMES)
    assert not any(n.startswith("torchmil.") for n in NAMES)


def run(model, x, mask, coords, **kw):
    return model(x, mask=mask, coords=coords, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_contract_and_padding_invariance(name, padded):
    x, mask, coords = padded
    model = make(name)
    with torch.no_grad():
        full = run(model, x, mask, coords)
        alone = model(x[1, :7], coords=coords[1, :7])
    assert full["logits"].shape == (2, 3)
    scores = full["instance_scores"]
    assert scores.shape == ((2, 3, 13) if name in BRANCHED else (2, 13))
    assert torch.all(scores[1][..., 7:] == 0)
    torch.testing.assert_close(alone["logits"][0], full["logits"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone["instance_scores"][0], scores[1][..., :7], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bagbatch_and_survival_head(name, padded):
    x, mask, coords = padded
    bags = [FeatureBag(x[i][mask[i]], coords=coords[i][mask[i]], patch_size=256.0) for i in range(2)]
    model = make(name, n_out=5)  # e.g. 5 hazard bins
    with torch.no_grad():
        a = model(BagBatch.collate(bags))["logits"]
        b = run(model, x, mask, coords)["logits"]
    assert a.shape == (2, 5)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_wrapped_identity_residual_r2t(name, padded):
    x, mask, coords = padded
    model = make(name)
    with torch.no_grad():
        ref = run(model, x, mask, coords)["logits"]
        ident = with_r2t(model, stage="identity").eval()
        assert torch.equal(run(ident, x, mask, coords)["logits"], ref)
        for placement in ("input",) if name in NO_PROJECTION else ("after_projection", "input"):
            res = with_r2t(model, placement=placement, residual=True, **STAGE).eval()
            torch.testing.assert_close(run(res, x, mask, coords)["logits"], ref, rtol=0, atol=1e-6)
        wrapped = with_r2t(model, **REPLACING).eval()
        full = run(wrapped, x, mask, coords)["logits"]
        alone = wrapped(x[1, :7], coords=coords[1, :7])["logits"]
    assert wrapped.placement == ("input" if name in NO_PROJECTION else "after_projection")
    assert not torch.allclose(full, ref)
    torch.testing.assert_close(alone[0], full[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_and_state_dict(name, padded):
    x, mask, coords = padded
    wrapped = with_r2t(make(name), **REPLACING).train()
    out = run(wrapped, x, mask, coords, label=torch.tensor([0, 2]))
    loss = out["logits"].sum() + out.get("aux_loss", 0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wrapped.stage.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wrapped.inner.parameters())
    keys = list(wrapped.state_dict())
    assert all(k.startswith(("inner.", "stage.")) for k in keys)
    assert {k[len("inner."):] for k in keys if k.startswith("inner.")} == set(wrapped.inner.state_dict())
    buf = io.BytesIO()
    torch.save(wrapped.state_dict(), buf)
    buf.seek(0)
    other = with_r2t(make(name), **REPLACING)
    torch.manual_seed(1)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    other.load_state_dict(torch.load(buf, weights_only=True))
    wrapped.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(other, x, mask, coords)["logits"], run(wrapped, x, mask, coords)["logits"])


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb", "dtfd"])
def test_aux_loss_only_with_label(name, padded):
    x, mask, coords = padded
    model = make(name)
    assert "aux_loss" not in run(model, x, mask, coords)
    aux = run(model, x, mask, coords, label=torch.tensor([1, 0]))["aux_loss"]
    assert aux.dim() == 0 and aux > 0


def test_clam_label_out_of_range(padded):
    x, mask, coords = padded
    with pytest.raises(ValueError, match="out of range"):
        run(make("clam_sb"), x, mask, coords, label=torch.tensor([0, 7]))


def test_errors_are_clear(padded):
    x, mask, coords = padded
    with pytest.raises(ValueError, match=r"expects features \(B, N, 16\)"):
        make("abmil")(torch.randn(4, 8))
    with pytest.raises(ValueError, match="coords"):
        make("patch_gcn")(x, mask=mask)
    with pytest.raises(ValueError, match="no real instance"):
        make("mean")(x, mask=torch.zeros_like(mask))



@pytest.mark.parametrize("name", NAMES)
def test_every_tensor_stays_on_the_inputs_device(name, padded):
    """No tensor is made on the default device: with the default device set to "meta", a
    factory call without ``device=`` (the way a CPU tensor sneaks into a CUDA batch) makes
    a meta tensor, which the forward then meets or returns."""
    from torch.utils._pytree import tree_leaves
    from torch.utils._python_dispatch import TorchDispatchMode

    class Devices(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen |= {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
            return out

    x, mask, coords = padded
    model, label = make(name).train(), torch.tensor([0, 2])
    with torch.device("meta"), Devices() as rec:
        out = model(x, mask=mask, coords=coords, patch_size=256.0, label=label)
        model(x[1, :7], coords=coords[1, :7], patch_size=256.0)  # no mask: the base makes one
    assert rec.seen == {"cpu"}
    assert all(v.device.type == "cpu" for v in tree_leaves(out) if isinstance(v, torch.Tensor))
