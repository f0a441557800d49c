"""with_r2t(torchmil model) is still a torchmil model: MILModel API, torchmil's Trainer."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

torchmil_models = pytest.importorskip("torchmil.models")

from tensordict import TensorDict  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchmil.data import collate_fn  # noqa: E402
from torchmil.models.mil_model import MILModelWrapper, get_args_names  # noqa: E402
from torchmil.utils import build_adj, normalize_adj  # noqa: E402
from torchmil.utils.trainer import Trainer  # noqa: E402

from r2t_plugin import with_r2t  # noqa: E402
from r2t_plugin.wrap import AdapterError  # noqa: E402

from .conftest import REPLACING, STAGE, roundtrip  # noqa: E402

D = 12


def grid(n: int) -> torch.Tensor:
    """torchmil's coords: grid cells (coords / patch_size), 4 columns."""
    return torch.stack([torch.arange(n) // 4, torch.arange(n) % 4], 1)


def bags(sizes=(5, 9, 7, 6, 8, 4), adj: bool = False) -> list[TensorDict]:
    """TensorDict bags as torchmil's datasets give them (Y a float scalar; adj sparse COO)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate(sizes):
        y = float(i % 2)
        bag = {"X": torch.randn(n, D, generator=g) + 2.0 * y, "Y": torch.tensor(y), "coords": grid(n)}
        if adj:
            e, w = build_adj(grid(n).numpy(), None, dist_thr=1.5)
            bag["adj"] = torch.sparse_coo_tensor(e, normalize_adj(e, w, n_nodes=n), (n, n), dtype=torch.float32,
                                                 check_invariants=True).coalesce()
        out.append(TensorDict(bag))
    return out


def abmil(feat_ext: nn.Module | None = None):
    torch.manual_seed(0)
    return torchmil_models.ABMIL(in_shape=(D,), **({"feat_ext": feat_ext} if feat_ext else {})).eval()


def test_wrapped_keeps_the_milmodel_api():
    model = abmil()
    w = with_r2t(model, **REPLACING).eval()
    assert isinstance(w, torchmil_models.MILModel)
    # what MILModelWrapper (torchmil's Trainer) reads: the model's names, then the stage's
    assert get_args_names(w.forward) == ("X", "mask", "return_att", "coords", "patch_size")
    assert get_args_names(w.compute_loss)[:3] == ("Y", "X", "mask")
    assert get_args_names(w.predict)[:3] == ("X", "mask", "return_inst_pred")
    batch = collate_fn(bags()[:2])
    x, mask, y = batch["X"], batch["mask"], batch["Y"]
    by_name = w(X=x, mask=mask)
    torch.testing.assert_close(by_name, w(x, mask))
    assert not torch.allclose(by_name, model(x, mask))  # R²T is applied ...
    y_pred, losses = w.compute_loss(Y=y, X=x, mask=mask)  # ... in compute_loss ...
    torch.testing.assert_close(y_pred, by_name)
    torch.testing.assert_close(losses["BCEWithLogitsLoss"], nn.functional.binary_cross_entropy_with_logits(by_name, y))
    pred, inst = w.predict(X=x, mask=mask)  # ... and in predict
    torch.testing.assert_close(pred, by_name)
    assert inst.shape == mask.shape and not torch.allclose(pred, model.predict(x, mask)[0])
    y_att = w(X=x, mask=mask, return_att=True)
    assert isinstance(y_att, tuple) and y_att[1].shape == mask.shape
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        w(x=x)  # torchmil's names, not ours


def test_identity_stage_is_the_inner_model():
    model = abmil(nn.Sequential(nn.Linear(D, 16), nn.ReLU()))
    batch = collate_fn(bags()[:3])
    x, mask, y = batch["X"], batch["mask"], batch["Y"]
    for w in (with_r2t(model, stage="identity"), with_r2t(model, residual=True, **STAGE).eval()):
        assert w.hook_path == "feat_ext"
        torch.testing.assert_close(w(X=x, mask=mask), model(x, mask), rtol=0, atol=1e-6)
        got, want = w.compute_loss(y, x, mask), model.compute_loss(y, x, mask)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(w.predict(x, mask), model.predict(x, mask), rtol=0, atol=1e-6)


def test_torchmil_trainer_trains_the_wrapped_model():
    model = abmil()
    w = with_r2t(model, layout="coords", **STAGE)  # the default residual stage: zero gate, trained from it
    stage_before = {n: p.detach().clone() for n, p in w.stage.named_parameters()}
    inner_before = [p.detach().clone() for p in w.inner.parameters()]
    loader = DataLoader(bags(), batch_size=2, shuffle=True, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(0))
    trainer = Trainer(w, torch.optim.Adam(w.parameters(), lr=1e-2), device="cpu", disable_pbar=True, verbose=False)
    trainer.train(max_epochs=3, train_dataloader=loader)
    still = [n for n, p in w.stage.named_parameters() if torch.equal(stage_before[n], p)]
    # EPEG's conv bias adds one constant to a row of attention logits: the softmax cancels it
    assert len(stage_before) > 10 and all(n.endswith("pe.bias") for n in still), still
    assert any(not torch.equal(a, b) for a, b in zip(inner_before, w.inner.parameters()))
    best = trainer.get_best_model()
    assert best is w
    fresh = with_r2t(abmil(), layout="coords", **STAGE)
    fresh.load_state_dict(roundtrip(best))
    batch = collate_fn(bags()[:2])
    fresh.eval(), best.eval()
    args = dict(X=batch["X"], mask=batch["mask"], coords=batch["coords"])
    torch.testing.assert_close(fresh.predict(**args), best.predict(**args))
    inner = best.inner.predict(batch["X"], batch["mask"])
    assert not torch.allclose(best.predict(**args)[0], inner[0])


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # torchmil.data.collate_fn
def test_graph_model_through_milmodelwrapper():
    """PatchGCN with torchmil's sparse, normalised adj, called the way its Trainer calls it."""
    torch.manual_seed(0)
    model = torchmil_models.PatchGCN(in_shape=(D,), hidden_dim=16, att_dim=8).eval()
    batch = collate_fn(bags(adj=True)[:3])
    w = with_r2t(model, **REPLACING).eval()
    assert get_args_names(w.forward)[:3] == ("X", "adj", "mask")
    y_pred, losses = MILModelWrapper(w).compute_loss(batch)
    torch.testing.assert_close(y_pred, w(batch["X"], batch["adj"], batch["mask"]))
    assert not torch.allclose(y_pred, model(batch["X"], batch["adj"], batch["mask"]))
    same = with_r2t(model, stage="identity")
    torch.testing.assert_close(MILModelWrapper(same).predict(batch), MILModelWrapper(model).predict(batch))


@pytest.mark.parametrize("method", ["forward", "predict", "compute_loss"])
def test_maskless_transmil_runs_bag_by_bag(method):
    """torchmil's TransMIL takes no mask: a padded batch must not attend to its padding."""
    torch.manual_seed(0)
    model = torchmil_models.TransMIL(in_shape=(D,), att_dim=16).eval()
    all_bags = bags((9, 5))
    batch = collate_fn(all_bags)
    alone = collate_fn(all_bags[1:])
    w = with_r2t(model, **REPLACING).eval()
    assert "mask" in get_args_names(getattr(w, method))  # torchmil's Trainer passes the mask
    call = getattr(w, method)
    if method == "compute_loss":
        (batched, losses), (one, one_losses) = call(batch["Y"], batch["X"], mask=batch["mask"]), \
            call(alone["Y"], alone["X"])
        parts = [call(b["Y"], b["X"])[1]["BCEWithLogitsLoss"] for b in (collate_fn([x]) for x in all_bags)]
        torch.testing.assert_close(losses["BCEWithLogitsLoss"], torch.stack(parts).mean())
    else:
        kw = {"return_att": True} if method == "forward" else {}
        batched, one = call(batch["X"], mask=batch["mask"], **kw), call(alone["X"], **kw)
        torch.testing.assert_close(batched[1][1, :5], one[1][0], rtol=1e-5, atol=1e-6)
        assert torch.all(batched[1][1, 5:] == 0)
        batched, one = batched[0], one[0]
    torch.testing.assert_close(batched[1], one[0], rtol=1e-5, atol=1e-6)
    padded = call(batch["X"]) if method == "forward" else None  # without the mask: as torchmil does
    if padded is not None:
        assert not torch.allclose(padded[1], one[0])


def test_not_a_milmodel_api():
    class Odd(torchmil_models.MILModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, 1)

        def forward(self, X, mask=None):
            return self.lin(X).mean(1).squeeze(-1)

        def predict(self, bag):
            return self(bag)

    with pytest.raises(AdapterError, match="Odd.predict takes no X argument"):
        with_r2t(Odd(), stage="identity")


def test_pickles_and_deep_copies_like_a_module():
    """torch.save(model) pickles it; the class made at run time is rebuilt, hook included."""
    w = with_r2t(abmil(nn.Sequential(nn.Linear(D, 16), nn.ReLU())), **REPLACING).eval()
    x = torch.randn(2, 9, D)
    for other in (pickle.loads(pickle.dumps(w)), copy.deepcopy(w)):
        assert type(other) is type(w) and other.inner is not w.inner
        torch.testing.assert_close(other(x), w(x))
        hook = next(iter(other.inner.feat_ext._forward_hooks.values()))
        assert hook.__self__ is other  # the copy's stage runs, not the original's
