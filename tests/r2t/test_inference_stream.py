"""Inference (eval, no gradients) runs the encoder in place on one token-width buffer
(``R2T._stream``); it must give the values of the ordinary forward pass."""
from __future__ import annotations

import pytest
import torch

from r2t_plugin.r2t import R2T
from r2t_plugin.r2t import stage as stage_module


def _coords(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(4 * n, generator=g)[:n]
    side = 2 * int(n**0.5) + 2
    return torch.stack([cells % side, cells // side], dim=1).float() * 256


CASES = {
    "official": dict(mode="official", in_dim=24, dim=32, heads=4, crmsa_heads=4, crmsa_k=1, all_shortcut=True),
    "official_region4": dict(mode="official", in_dim=24, dim=32, heads=4, crmsa_heads=4, region_num=4,
                             all_shortcut=True),
    "default_head": dict(in_dim=24, dim=32, out_dim=8, heads=4, crmsa_heads=4, crmsa_k=3),
    "no_projection_mlp": dict(in_dim=None, dim=32, heads=4, crmsa_heads=2, crmsa_mlp=True, all_shortcut=True),
    "three_layers_no_epeg": dict(in_dim=24, dim=32, heads=4, crmsa_heads=4, n_layers=3, epeg=False,
                                 all_shortcut=True),
    "crmsa_only": dict(in_dim=24, dim=32, crmsa_heads=4, n_layers=1, all_shortcut=True),
    "rmsa_only": dict(in_dim=24, dim=32, heads=4, crmsa=False, all_shortcut=True),
    "coords": dict(in_dim=24, dim=32, heads=4, crmsa_heads=4, layout="coords", region_size=4, crmsa_k=2),
}


def _stage(name: str) -> R2T:
    torch.manual_seed(0)
    opts = dict(CASES[name])
    mode = opts.pop("mode", "default")
    stage = R2T.official(**opts) if mode == "official" else R2T(**opts)
    for p in stage.parameters():  # away from the init (zero biases would hide a missing term)
        p.data.add_(0.05 * torch.randn_like(p))
    return stage.eval()


def _graph_path(stage: R2T, *args, **kw) -> torch.Tensor:
    """The ordinary forward pass (with autograd on, the stream is not used)."""
    with torch.enable_grad():
        return stage(*args, **kw).detach()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("n", [7, 300, 2100])
def test_stream_gives_the_forward_values(name, n, monkeypatch):
    stage = _stage(name)
    width = stage.in_dim or stage.dim
    x = torch.randn(n, width)
    kw = dict(coords=_coords(n, 1), patch_size=256.0) if stage.layout == "coords" else {}
    calls = []
    real = stage_module.R2T._stream
    monkeypatch.setattr(stage_module.R2T, "_stream", lambda self, *a: calls.append(1) or real(self, *a))
    before = x.clone()
    with torch.no_grad():
        got = stage(x, **kw)
    assert calls, "eval + no_grad should take the in-place inference path"
    assert torch.equal(x, before), "the input must never be written"
    want = _graph_path(stage, x, **kw)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_stream_padded_batch_equals_bags_alone():
    stage = _stage("default_head")
    lengths = [300, 41, 1000]
    x = torch.randn(3, 1000, 24)
    mask = torch.arange(1000)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        batch = stage(x, mask)
        alone = [stage(x[i, :n]) for i, n in enumerate(lengths)]
    for i, n in enumerate(lengths):
        torch.testing.assert_close(batch[i, :n], alone[i], rtol=1e-5, atol=1e-5)
        assert batch[i, n:].abs().sum() == 0
    torch.testing.assert_close(batch, _graph_path(stage, x, mask), rtol=1e-5, atol=1e-5)


def test_training_mode_and_hooks_keep_the_ordinary_path(monkeypatch):
    stage = _stage("default_head")
    x = torch.randn(200, 24)
    calls = []
    monkeypatch.setattr(stage_module.R2T, "_stream", lambda self, *a: calls.append(1))
    seen = []
    handle = stage.layers[0].attn.register_forward_hook(lambda m, i, o: seen.append(1))
    with torch.no_grad():
        stage(x)
    assert seen and not calls, "a hook must see its module run"
    handle.remove()
    stage.train()
    with torch.no_grad():
        stage(x)
    assert not calls, "dropout in training mode draws per tensor, as the ordinary path does"


def test_stream_under_bf16_autocast_matches_the_forward():
    stage = _stage("official")
    x = torch.randn(1500, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = stage(x)
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = stage(x).detach()
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
