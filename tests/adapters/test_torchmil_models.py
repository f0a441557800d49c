"""Every torchmil model registered as an aggregator: built from in_dim, padding never leaks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torchmil_models = pytest.importorskip("torchmil.models")

from torchmil.utils import build_adj, normalize_adj  # noqa: E402

from r2t_plugin import create_aggregator, registry, with_r2t  # noqa: E402
from r2t_torchmil import MODELS  # noqa: E402
from r2t_torchmil.aggregator import normalized_adjacency  # noqa: E402

from .conftest import REPLACING  # noqa: E402

D = 12
SMALL = {"CAMIL": dict(nystrom_att_dim=16), "TransMIL": dict(att_dim=16), "GTP": dict(att_dim=16, n_clusters=4),
         "SETMIL": dict(att_dim=16), "ProbSmoothABMIL": dict(covar_mode="zero"),
         "TransformerProbSmoothABMIL": dict(covar_mode="zero")}


def test_every_buildable_torchmil_model_is_registered():
    classes = {n: getattr(torchmil_models, n) for n in dir(torchmil_models)}
    # the MILModel API (PatchGCN, IIBMIL and DeepGraphSurv do not subclass MILModel)
    models = {n for n, c in classes.items() if isinstance(c, type) and hasattr(c, "compute_loss")}
    # MILModel / MILModelWrapper are not models; VAEABMIL needs a variational feat_ext
    assert models - set(MODELS) == {"MILModel", "MILModelWrapper", "VAEABMIL"}
    assert {f"torchmil.{n}" for n in MODELS} <= set(registry("aggregators").names())


def _seeded(fn, *args, **kwargs):
    np.random.seed(0)  # DTFD-MIL shuffles its pseudo-bags with numpy, in eval too
    torch.manual_seed(0)
    return fn(*args, **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_alone_equals_padded_batch(batch, name):
    """Plain and with R²T: a bag alone == the same bag in a padded batch; padding scores 0."""
    x, mask, coords = batch
    x = x.clone()
    x[1, 5:] = 100.0  # padding that would show if any model read it
    torch.manual_seed(0)
    agg = create_aggregator(f"torchmil.{name}", in_dim=D, n_out=2, **SMALL.get(name, {})).eval()
    for model in (agg, with_r2t(agg, **REPLACING).eval()):
        out = _seeded(model, x, mask=mask, coords=coords)
        alone = _seeded(model, x[1:, :5], coords=coords[1:, :5])
        assert out["logits"].shape == (2, 2) and torch.all(out["logits"][:, 0] == 0)
        assert torch.all(out["instance_scores"][1, 5:] == 0)
        torch.testing.assert_close(alone["logits"][0], out["logits"][1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone["instance_scores"][0], out["instance_scores"][1, :5], rtol=1e-4, atol=1e-5)


def test_binary_only_and_coords_required(batch):
    x, mask, _ = batch
    with pytest.raises(ValueError, match="binary.*n_out must be 1 or 2, got 3"):
        create_aggregator("torchmil.ABMIL", in_dim=D, n_out=3)
    one = create_aggregator("torchmil.ABMIL", in_dim=D, n_out=1).eval()
    assert one(x, mask=mask)["logits"].shape == (2, 1)
    for name in ("CAMIL", "SETMIL"):
        with pytest.raises(ValueError, match="needs coords"):
            create_aggregator(f"torchmil.{name}", in_dim=D, n_out=2, **SMALL[name])(x, mask=mask)


def test_adjacency_is_torchmils(batch):
    """The graph models get the adjacency torchmil's own datasets build (norm_adj=True)."""
    _, mask, coords = batch
    adj = normalized_adjacency(mask, coords, torch.tensor([256.0, 256.0]))
    grid = (coords[1, :5] / 256.0).numpy()
    edges, weights = build_adj(grid, None, dist_thr=1.5)
    want = torch.zeros(5, 5)
    want[edges[0], edges[1]] = torch.as_tensor(normalize_adj(edges, weights, n_nodes=5), dtype=torch.float32)
    torch.testing.assert_close(adj[1, :5, :5], want)
    assert torch.all(adj[1, 5:] == 0) and torch.all(adj[1, :, 5:] == 0)
