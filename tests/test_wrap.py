"""with_r2t(): the generic fallback adapter, placements, residual, unwrap, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from r2t_plugin import create_aggregator, with_r2t
from r2t_plugin.wrap import AdapterError, ResidualStage, find_projection

STAGE = dict(heads=2, region_num=2, min_region_tokens=2, crmsa_heads=2)


class MyMIL(nn.Module):
    """A user's own model: (B, N, D) + mask -> logits, with an fc projection."""

    def __init__(self, d: int = 12, w: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, w), nn.GELU())
        self.attn = nn.Sequential(nn.Linear(w, 8), nn.Tanh(), nn.Linear(8, 1))
        self.head = nn.Linear(w, 3)

    def forward(self, x, mask=None):
        h = self.fc(x)
        a = self.attn(h).squeeze(-1)
        if mask is not None:
            a = a.masked_fill(~mask, float("-inf"))
        return self.head((torch.softmax(a, -1).unsqueeze(-1) * h).sum(-2))


class NoProjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(torch.relu(x).mean(-2))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 12)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    return x, mask


def test_find_projection_ignores_nested_attention():
    assert find_projection(MyMIL()) == ("fc", 16)
    nested = nn.Module()
    nested.pool = nn.Module()
    nested.pool.attention = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    assert find_projection(nested) is None


def test_generic_wrapper(batch):
    x, mask = batch
    model = MyMIL().eval()
    ref = model(x, mask)
    w = with_r2t(model, residual=False, **STAGE).eval()  # the replacing stage: changes the outputs
    assert (w.placement, w.hook_path) == ("after_projection", "fc")
    assert w.inner is model
    out_pos, out_kw = w(x, mask), w(x, mask=mask)
    torch.testing.assert_close(out_pos, out_kw)
    torch.testing.assert_close(w(x[1:, :5]), out_kw[1:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_kw, ref)
    # the original model is untouched while called outside the wrapper
    torch.testing.assert_close(model(x, mask), ref)
    assert torch.equal(with_r2t(model, stage="identity")(x, mask), ref)


def test_input_placement_and_residual(batch):
    x, mask = batch
    model = NoProjection().eval()
    w = with_r2t(model, **STAGE)
    assert w.placement == "input" and w.hook_path is None
    res = with_r2t(model, residual=True, dim=8, **STAGE).eval()
    assert isinstance(res.stage, ResidualStage)
    assert torch.equal(res(x[0]), model(x[0]))
    res.stage.gate.weight.data.normal_()
    assert not torch.allclose(res(x[0]), model(x[0]))
    with pytest.raises(AdapterError, match="placement='input'"):
        with_r2t(model, placement="after_projection")


def test_unwrap(batch):
    x, mask = batch
    model = MyMIL().eval()
    ref = model(x, mask)
    w = with_r2t(model, **STAGE)
    assert w.unwrap() is model
    assert not model.fc._forward_hooks
    torch.testing.assert_close(model(x, mask), ref)
    with pytest.raises(RuntimeError, match="unwrap"):
        w(x, mask)


def test_errors(batch):
    x, mask = batch
    with pytest.raises(AdapterError, match=r"no adapter recognises .*adapters asked: .*r2t_plugin.wrap"):
        with_r2t(nn.ReLU())
    with pytest.raises(ValueError, match="placement"):
        with_r2t(MyMIL(), placement="middle")
    with pytest.raises(KeyError, match="registered: identity, r2t"):
        with_r2t(MyMIL(), stage="nope")
    with pytest.raises(AdapterError, match=r"\(N, D\) or \(B, N, D\)"):
        with_r2t(MyMIL(), **STAGE)(torch.randn(12))


def test_deepcopy_keeps_hooks_consistent(batch):
    import copy

    x, mask = batch
    w = with_r2t(MyMIL(), residual=False, **STAGE).eval()
    c = copy.deepcopy(w)
    torch.testing.assert_close(c(x, mask), w(x, mask))
    c.stage.norm.bias.data += 1.0  # the copy's hook uses the copy's stage
    assert not torch.allclose(c(x, mask), w(x, mask))
    c.unwrap()  # removes the copy's hook only
    assert not c.inner.fc._forward_hooks and len(w.inner.fc._forward_hooks) == 1


@pytest.mark.parametrize("make,masked", [(MyMIL, True), (NoProjection, False),
                                         (lambda: create_aggregator("abmil", 12, 3, dim=16), True)],
                         ids=["projection", "input", "builtin"])
def test_default_is_residual_and_starts_as_the_plain_model(batch, make, masked):
    """``with_r2t(model)`` is the recipe ``r2t compare`` measured: x + Z(R²T(x)), Z zero."""
    import inspect

    assert inspect.signature(with_r2t).parameters["residual"].default is True
    x, mask = batch
    kw = {"mask": mask} if masked else {}
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        ref = model(x, **kw)
        w = with_r2t(model, **STAGE).eval()
        assert isinstance(w.stage, ResidualStage)
        torch.testing.assert_close(w(x, **kw), ref, rtol=0, atol=1e-6)
        w.stage.gate.weight.normal_()  # the stage runs inside: moving Z moves the outputs
        got = w(x, **kw)
    unpack = (lambda o: o["logits"]) if isinstance(ref, dict) else (lambda o: o)
    assert not torch.allclose(unpack(got), unpack(ref), atol=1e-4)
    assert not isinstance(with_r2t(model, residual=False, **STAGE).stage, ResidualStage)
