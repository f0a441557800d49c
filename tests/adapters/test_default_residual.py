"""``with_r2t(model)`` with no ``residual`` argument starts as ``model`` itself, through every
adapter: the default stage is ``x + Z(R²T(x))`` with ``Z`` zero, and moving ``Z`` moves the
outputs (so the equality is the stage's, not a stage that never runs)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from r2t_plugin import with_r2t
from r2t_plugin.bag import BagBatch, FeatureBag
from r2t_plugin.wrap import ResidualStage

from .clam_interface import CLAMInterface
from .conftest import STAGE

D = 12


def _clam():
    from r2t_clam import ClamWrapper

    torch.manual_seed(0)
    h = torch.randn(11, D)
    return CLAMInterface(D, 3, dim=16, hidden=8).eval(), ClamWrapper, lambda m: m(h)[0]


def _torchmil():
    torchmil_models = pytest.importorskip("torchmil.models")
    from r2t_torchmil import TorchmilWrapper

    torch.manual_seed(0)
    x, mask = torch.randn(2, 9, D), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    model = torchmil_models.ABMIL(in_shape=(D,), feat_ext=nn.Sequential(nn.Linear(D, 16), nn.ReLU())).eval()
    return model, TorchmilWrapper, lambda m: m(x, mask)


def _pyg():
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn import GCNConv, global_mean_pool

    from r2t_pyg import PygWrapper

    class GraphMIL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.conv, self.head = nn.Sequential(nn.Linear(D, 16), nn.ReLU()), GCNConv(16, 16), nn.Linear(16, 2)

        def forward(self, data):
            return self.head(global_mean_pool(torch.relu(self.conv(self.fc(data.x), data.edge_index)), data.batch))

    torch.manual_seed(0)
    bags = [FeatureBag(torch.randn(n, D), coords=torch.stack([torch.arange(n) % 4, torch.arange(n) // 4], 1) * 256.0,
                       patch_size=256.0) for n in (10, 6)]
    graph = BagBatch.collate(bags).to_pyg()
    return GraphMIL().eval(), PygWrapper, lambda m: m(graph)


@pytest.mark.parametrize("make", [_clam, _torchmil, _pyg], ids=["clam", "torchmil", "pyg"])
def test_with_r2t_starts_as_the_plain_model(make):
    model, wrapper_type, call = make()
    with torch.no_grad():
        ref = call(model)
        wrapped = with_r2t(model, **STAGE).eval()
        assert isinstance(wrapped, wrapper_type) and isinstance(wrapped.stage, ResidualStage)
        torch.testing.assert_close(call(wrapped), ref, rtol=0, atol=1e-6)
        nn.init.normal_(wrapped.stage.gate.weight)  # the stage really runs inside the model
        assert not torch.allclose(call(wrapped), ref, atol=1e-4)
