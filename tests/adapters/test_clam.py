"""r2t_clam on the built-in CLAM (CLAM's interface) and on a third-party look-alike."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from r2t_clam import ClamWrapper, is_clam_like
from r2t_plugin import with_r2t
from r2t_plugin.aggregators import CLAM

from .clam_interface import CLAMInterface
from .conftest import REPLACING, STAGE, grads_reach, roundtrip

D = 12


class GatedNet(nn.Module):
    def __init__(self, w: int, k: int) -> None:
        super().__init__()
        self.u = nn.Sequential(nn.Linear(w, 8), nn.Tanh())
        self.v = nn.Sequential(nn.Linear(w, 8), nn.Sigmoid())
        self.out = nn.Linear(8, k)

    def forward(self, x):
        return self.out(self.u(x) * self.v(x)), x


class ThirdPartyClam(nn.Module):
    """Someone else's model with CLAM's calling convention (no relation to our classes)."""

    def __init__(self, n_classes: int = 2, w: int = 16) -> None:
        super().__init__()
        self.attention_net = nn.Sequential(nn.Linear(D, w), nn.ReLU(), nn.Dropout(0.1), GatedNet(w, 1))
        self.classifiers = nn.Linear(w, n_classes)

    def forward(self, h, label=None, instance_eval=False, return_features=False, attention_only=False):
        a, h = self.attention_net(h)
        a = a.transpose(1, 0)
        if attention_only:
            return a
        m = torch.softmax(a, dim=1) @ h
        logits = self.classifiers(m)
        results = {"features": m} if return_features else {}
        return logits, torch.softmax(logits, 1), logits.argmax(1, keepdim=True), a, results


def models():
    torch.manual_seed(0)
    return [ThirdPartyClam().eval(), CLAMInterface(D, 3, dim=16, hidden=8).eval(),
            CLAMInterface(D, 3, dim=16, hidden=8, multi_branch=True).eval()]


def test_recognised_by_interface():
    assert all(is_clam_like(m) for m in models())
    assert not is_clam_like(CLAM(D, 2, dim=16))  # contract form: the generic adapter takes it


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_identity_residual_and_outputs(idx):
    model = models()[idx]
    h = torch.randn(11, D)
    ref = model(h, return_features=True)
    ident = with_r2t(model, stage="identity")
    assert isinstance(ident, ClamWrapper) and ident.hook_path == "attention_net.2"
    for wrapped in (ident, with_r2t(model, residual=True, **STAGE).eval(),
                    with_r2t(model, residual=True, placement="input", **STAGE).eval()):
        out = wrapped(h, return_features=True)
        assert len(out) == 5
        for a, b in zip(out[:4], ref[:4]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(out[4]["features"], ref[4]["features"], rtol=0, atol=1e-6)
    wrapped = with_r2t(model, **REPLACING).eval()
    assert wrapped(h, attention_only=True).shape == ref[3].shape
    assert not torch.allclose(wrapped(h)[0], ref[0])


def test_builtin_clam_alone_equals_padded_batch():
    torch.manual_seed(0)
    iface = CLAMInterface(D, 3, dim=16, hidden=8).eval()
    contract = CLAM(D, 3, dim=16, hidden=8).eval()
    contract.load_state_dict(iface.state_dict())
    w_iface = with_r2t(iface, **REPLACING).eval()
    w_contract = with_r2t(contract, **REPLACING).eval()
    w_contract.load_state_dict(w_iface.state_dict())
    x = torch.randn(2, 10, D)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    batched = w_contract(x, mask=mask)["logits"]
    torch.testing.assert_close(w_iface(x[1, :6])[0][0], batched[1], rtol=1e-5, atol=1e-5)


def test_instance_eval_gradients_and_state_dict():
    model = models()[1].train()
    wrapped = with_r2t(model, **REPLACING)
    logits, _, _, _, results = wrapped(torch.randn(20, D), label=torch.tensor([1]), instance_eval=True)
    (logits.sum() + results["instance_loss"]).backward()
    assert grads_reach(wrapped) == (True, True)
    other = with_r2t(models()[1], **REPLACING)
    other.load_state_dict(roundtrip(wrapped))
    h = torch.randn(9, D)
    wrapped.eval(), other.eval()
    torch.testing.assert_close(other(h)[0], wrapped(h)[0])
