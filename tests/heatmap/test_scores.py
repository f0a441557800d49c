"""Instance scores of every built-in aggregator, plain and with R²T, as the heatmap uses them."""
from __future__ import annotations

import pytest
import torch

from r2t_plugin import FeatureBag, create_aggregator, with_r2t
from r2t_plugin.aggregators.plugin import BUILTIN_AGGREGATORS
from r2t_plugin.nn import masked_softmax
from r2t_plugin.heatmap import HeatmapError, score_bag
from r2t_plugin.models import ModelSpec

D, N_OUT = 12, 3
SMALL = {"dim": 16}
R2T = {"dim": 16, "heads": 2, "region_num": 2, "n_layers": 2, "residual": False}  # changes the scores at init
# models whose output does not depend on the order of the instances (given their coordinates)
SET_MODELS = ["abmil", "gated_abmil", "clam_sb", "clam_mb", "dsmil", "mean", "max", "patch_gcn"]


def _bag(n: int = 30, seed: int = 0) -> FeatureBag:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(8 * 8, generator=g)[:n]
    coords = torch.stack([cells % 8, cells // 8], dim=1).float() * 256
    return FeatureBag(torch.randn(n, D, generator=g), coords, 256.0, slide_ids=("s",))


def _model(name: str, r2t: bool, **extra) -> tuple[torch.nn.Module, ModelSpec]:
    torch.manual_seed(0)
    options = {**SMALL, **({"heads": 2, "region_num": 2} if name == "r2t_abmil" else {}), **extra}
    if name == "transmil":
        options["heads"] = 2
    model = create_aggregator(name, D, N_OUT, **options)
    stage = {**R2T, "layout": "coords"} if r2t else None
    if stage is not None:
        model = with_r2t(model, **stage)
    return model.eval(), ModelSpec(name, D, N_OUT, options=options, r2t=stage, classes=("a", "b", "c"))


def _permuted(bag: FeatureBag, perm: torch.Tensor) -> FeatureBag:
    return FeatureBag(bag.features[perm], bag.coords[perm], bag.patch_size, slide_ids=bag.slide_ids)


_CASES = ([(False, n) for n in SET_MODELS] + [(False, "r2t_abmil")]
          + [(True, n) for n in ("abmil", "gated_abmil", "clam_mb", "dsmil", "mean", "max", "patch_gcn")])


@pytest.mark.parametrize("r2t,name", _CASES)
def test_scores_are_permutation_equivariant(name: str, r2t: bool) -> None:
    extra = {"layout": "coords"} if name == "r2t_abmil" else {}
    model, spec = _model(name, r2t, **extra)
    bag = _bag()
    perm = torch.randperm(bag.n, generator=torch.Generator().manual_seed(1))
    a, b = score_bag(model, bag, spec), score_bag(model, _permuted(bag, perm), spec)
    assert a.all_scores.shape[-1] == bag.n
    assert torch.allclose(torch.from_numpy(a.all_scores)[:, perm], torch.from_numpy(b.all_scores), atol=1e-5)
    assert a.predicted == b.predicted
    assert not torch.allclose(torch.from_numpy(a.scores), torch.from_numpy(a.scores).mean())  # not constant


@pytest.mark.parametrize("name", sorted(BUILTIN_AGGREGATORS))
@pytest.mark.parametrize("r2t", [False, True])
def test_every_builtin_gives_scores(name: str, r2t: bool) -> None:
    model, spec = _model(name, r2t)
    bag = _bag(20)
    s = score_bag(model, bag, spec)
    rows = N_OUT if name in ("clam_mb", "dsmil", "mean", "max") else 1
    assert s.all_scores.shape == (rows, bag.n)
    assert s.scores.shape == (bag.n,)
    if rows > 1:  # the predicted class's branch is drawn
        assert (s.scores == s.all_scores[s.predicted]).all()


def test_abmil_scores_are_its_attention() -> None:
    model, spec = _model("abmil", False)
    bag = _bag()
    with torch.no_grad():
        expected = torch.softmax(model.pool.attention(model.proj(bag.features)).squeeze(-1), dim=0)
    assert torch.allclose(torch.from_numpy(score_bag(model, bag, spec).scores), expected, atol=1e-6)


def test_r2t_wrapped_scores_are_attention_on_reembedded_instances() -> None:
    model, spec = _model("abmil", True)
    bag = _bag()
    inner = model.inner
    with torch.no_grad():
        h = model.stage(inner.proj(bag.features).unsqueeze(0), coords=bag.coords.unsqueeze(0),
                        patch_size=torch.tensor([bag.patch_size]))[0]
        expected = torch.softmax(inner.pool.attention(h).squeeze(-1), dim=0)
        plain = torch.softmax(inner.pool.attention(inner.proj(bag.features)).squeeze(-1), dim=0)
    got = torch.from_numpy(score_bag(model, bag, spec).scores)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)  # the stage did change what is scored


def test_clam_mb_draws_the_predicted_branch_attention() -> None:
    model, spec = _model("clam_mb", False)
    bag = _bag()
    with torch.no_grad():
        out = model(bag.features.unsqueeze(0))
    s = score_bag(model, bag, spec)
    expected = masked_softmax(out["attention_raw"][0], None)
    assert s.predicted == int(out["logits"].argmax())
    assert torch.allclose(torch.from_numpy(s.scores), expected[s.predicted], atol=1e-6)
    assert "branch 'a'" in s.row or "branch 'b'" in s.row or "branch 'c'" in s.row


def test_mean_mil_scores_are_instance_logits_through_its_classifier() -> None:
    model, spec = _model("mean", False)
    bag = _bag()
    with torch.no_grad():
        logits = model.classifier(model.proj(bag.features))  # (N, n_out)
    s = score_bag(model, bag, spec)
    assert torch.allclose(torch.from_numpy(s.all_scores), logits.T, atol=1e-6)


def test_survival_prediction_is_a_risk() -> None:
    torch.manual_seed(0)
    model = create_aggregator("abmil", D, 4, **SMALL).eval()
    s = score_bag(model, _bag(), ModelSpec("abmil", D, 4, task="survival", options=SMALL))
    assert s.predicted is None and s.risk is not None and s.risk < 0
    assert "risk" in s.prediction_text(ModelSpec("abmil", D, 4, task="survival"))


def test_a_model_without_instance_scores_is_a_clear_error() -> None:
    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(D, 2)

        def forward(self, batch):
            return {"logits": self.lin(batch.features).mean(1)}

    with pytest.raises(HeatmapError, match="no 'instance_scores'"):
        score_bag(Bare(), _bag(), ModelSpec("bare", D, 2, name="bare"))
