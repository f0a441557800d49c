"""r2t_torchmil: torchmil models wrapped with R²T, and registered as aggregators."""
from __future__ import annotations

import pytest
import torch
from torch import nn

torchmil_models = pytest.importorskip("torchmil.models")

from r2t_plugin import create_aggregator, with_r2t  # noqa: E402
from r2t_plugin.geometry import grid_edges  # noqa: E402

from .conftest import REPLACING, STAGE, grads_reach, roundtrip  # noqa: E402

D = 12


def dense_adj(coords: torch.Tensor, n: int) -> torch.Tensor:
    adj = torch.zeros(n, n)
    e = grid_edges(coords[:n])
    adj[e[0], e[1]] = 1.0
    return adj


def abmil(feat_ext: nn.Module | None = None):
    torch.manual_seed(0)
    kw = {"feat_ext": feat_ext} if feat_ext is not None else {}
    return torchmil_models.ABMIL(in_shape=(D,), **kw).eval()


def test_abmil_identity_residual_padding(batch):
    x, mask, coords = batch
    model = abmil()
    ref = model(x, mask)
    w = with_r2t(model, stage="identity")
    assert w.placement == "input"  # feat_ext is Identity: no projection to go after
    assert torch.equal(w(x, mask), ref)
    res = with_r2t(model, residual=True, **STAGE).eval()
    torch.testing.assert_close(res(x, mask=mask, coords=coords), ref, rtol=0, atol=1e-6)
    wrapped = with_r2t(model, **REPLACING).eval()
    out = wrapped(x, mask, coords=coords)
    assert not torch.allclose(out, ref)
    torch.testing.assert_close(wrapped(x[1:, :5], coords=coords[1:, :5]), out[1:], rtol=1e-5, atol=1e-5)
    y, att = wrapped(x, mask, return_att=True)  # the model's own keyword passes through
    assert att.shape == (2, 9)


def test_after_feat_ext_projection(batch):
    x, mask, _ = batch
    model = abmil(nn.Sequential(nn.Linear(D, 16), nn.ReLU()))
    wrapped = with_r2t(model, **REPLACING).train()
    assert (wrapped.placement, wrapped.hook_path) == ("after_projection", "feat_ext")
    wrapped(x, mask).sum().backward()
    assert grads_reach(wrapped) == (True, True)
    other = with_r2t(abmil(nn.Sequential(nn.Linear(D, 16), nn.ReLU())), **REPLACING)
    other.load_state_dict(roundtrip(wrapped))
    wrapped.eval(), other.eval()
    torch.testing.assert_close(other(x, mask), wrapped(x, mask))


def test_graph_model_keeps_adj(batch):
    x, mask, coords = batch
    torch.manual_seed(0)
    model = torchmil_models.PatchGCN(in_shape=(D,), hidden_dim=16, att_dim=8).eval()
    adj = torch.stack([dense_adj(coords[0], 9), nn.functional.pad(dense_adj(coords[1], 5), (0, 4, 0, 4))])
    ref = model(x, adj, mask)
    res = with_r2t(model, residual=True, **STAGE).eval()
    torch.testing.assert_close(res(x, adj, mask, coords=coords), ref, rtol=0, atol=1e-6)
    wrapped = with_r2t(model, **REPLACING).eval()
    assert not torch.allclose(wrapped(x, adj, mask, coords=coords), ref)


def test_registered_as_aggregators(batch):
    x, mask, coords = batch
    agg = create_aggregator("torchmil.ABMIL", in_dim=D, n_out=2).eval()
    out = agg(x, mask=mask)
    assert out["logits"].shape == (2, 2) and torch.all(out["logits"][:, 0] == 0)
    assert out["instance_scores"].shape == (2, 9) and torch.all(out["instance_scores"][1, 5:] == 0)
    alone = agg(x[1, :5])
    torch.testing.assert_close(alone["logits"][0], out["logits"][1], rtol=1e-5, atol=1e-5)
    graph = create_aggregator("torchmil.PatchGCN", in_dim=D, n_out=1, hidden_dim=16).eval()
    assert graph(x, mask=mask, coords=coords)["logits"].shape == (2, 1)
    with pytest.raises(ValueError, match="n_out must be 1 or 2"):
        create_aggregator("torchmil.ABMIL", in_dim=D, n_out=4)


@pytest.mark.parametrize("name", ["torchmil.ABMIL", "torchmil.CLAM_SB", "torchmil.PatchGCN"])
def test_registered_aggregators_can_be_wrapped(batch, name):
    """with_r2t(create_aggregator("torchmil.X")): identity == original; alone == padded."""
    x, mask, coords = batch
    agg = create_aggregator(name, in_dim=D, n_out=2).eval()
    same = with_r2t(agg, stage="identity").eval()
    torch.testing.assert_close(same(x, mask=mask, coords=coords)["logits"],
                               agg(x, mask=mask, coords=coords)["logits"])
    wrapped = with_r2t(agg, **REPLACING).eval()
    out = wrapped(x, mask=mask, coords=coords)
    alone = wrapped(x[1:, :5], coords=coords[1:, :5])
    torch.testing.assert_close(alone["logits"][0], out["logits"][1], rtol=1e-5, atol=1e-5)
