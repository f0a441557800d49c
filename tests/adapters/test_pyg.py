"""r2t_pyg: a torch-geometric graph MIL model taking a Data / Batch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric")
from torch_geometric.nn import GCNConv, global_mean_pool  # noqa: E402

from r2t_plugin import with_r2t  # noqa: E402
from r2t_plugin.bag import BagBatch, FeatureBag  # noqa: E402
from r2t_pyg import PygWrapper  # noqa: E402

from .conftest import REPLACING, STAGE, grads_reach, roundtrip  # noqa: E402

D = 12


class GraphMIL(nn.Module):
    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(D, w), nn.ReLU())
        self.conv = GCNConv(w, w)
        self.head = nn.Linear(w, 3)

    def forward(self, data):
        h = torch.relu(self.conv(self.fc(data.x), data.edge_index))
        batch = data.batch if data.batch is not None else torch.zeros(h.shape[0], dtype=torch.long)
        return self.head(global_mean_pool(h, batch))


@pytest.fixture
def graphs():
    torch.manual_seed(0)
    bags = [FeatureBag(torch.randn(n, D), coords=torch.stack([torch.arange(n) % 4, torch.arange(n) // 4], 1) * 256.0,
                       patch_size=256.0) for n in (10, 6)]
    return BagBatch.collate(bags).to_pyg(), BagBatch.collate(bags[1:]).to_pyg()


def test_pyg_wrapper(graphs):
    both, alone = graphs
    model = GraphMIL().eval()
    ref = model(both)
    ident = with_r2t(model, stage="identity")
    assert isinstance(ident, PygWrapper) and ident.hook_path == "fc"
    assert torch.equal(ident(both), ref)
    for placement in ("after_projection", "input"):
        res = with_r2t(model, residual=True, placement=placement, **STAGE).eval()
        torch.testing.assert_close(res(both), ref, rtol=0, atol=1e-6)
    wrapped = with_r2t(model, layout="coords", **REPLACING).eval()
    out = wrapped(both)
    assert not torch.allclose(out, ref)
    torch.testing.assert_close(wrapped(alone)[0], out[1], rtol=1e-5, atol=1e-5)
    x_before = both.x.clone()
    with_r2t(model, placement="input", **STAGE)(both)
    assert torch.equal(both.x, x_before)  # the caller's graph is not modified


def test_pyg_gradients_and_state_dict(graphs):
    both, _ = graphs
    wrapped = with_r2t(GraphMIL(), **REPLACING)
    wrapped(both).sum().backward()
    assert grads_reach(wrapped) == (True, True)
    other = with_r2t(GraphMIL(), **REPLACING)
    other.load_state_dict(roundtrip(wrapped))
    wrapped.eval(), other.eval()
    torch.testing.assert_close(other(both), wrapped(both))


class PlainGraphMIL(GraphMIL):
    """The same model with an unannotated ``forward(self, g)``: recognised at call time."""

    def forward(self, g):
        return super().forward(g)


def test_graph_argument_recognised_whatever_its_name(graphs):
    both, alone = graphs
    torch.manual_seed(0)
    model = PlainGraphMIL().eval()
    assert isinstance(with_r2t(model, stage="identity"), PygWrapper)
    assert torch.equal(with_r2t(model, stage="identity")(both), model(both))
    wrapped = with_r2t(model, layout="coords", **REPLACING).eval()
    out = wrapped(both)
    assert not torch.allclose(out, model(both))
    torch.testing.assert_close(wrapped(alone)[0], out[1], rtol=1e-5, atol=1e-5)
    ref = with_r2t(GraphMIL(), layout="coords", **REPLACING).eval()
    ref.load_state_dict(wrapped.state_dict())  # same as the model whose argument is named data
    torch.testing.assert_close(ref(both), out)


class TensorGraphMIL(GraphMIL):
    """A model with a PyG layer that takes one bag's tensor (1, N, D) (a ring graph)."""

    def forward(self, x):
        h = self.fc(x[0])
        n = h.shape[0]
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        return self.head(torch.relu(self.conv(h, ring)).mean(0, keepdim=True))


def test_tensor_argument_goes_the_generic_way():
    torch.manual_seed(0)
    model = TensorGraphMIL().eval()
    x = torch.randn(1, 10, D)
    wrapped = with_r2t(model, **REPLACING).eval()
    assert isinstance(wrapped, PygWrapper) and wrapped.hook_path == "fc"
    torch.testing.assert_close(with_r2t(model, stage="identity")(x), model(x))
    stage_out = wrapped.stage(model.fc(x))
    want = model.head(torch.relu(model.conv(stage_out[0], torch.stack([torch.arange(10), (torch.arange(10) + 1) % 10])))
                      .mean(0, keepdim=True))
    torch.testing.assert_close(wrapped(x), want)
