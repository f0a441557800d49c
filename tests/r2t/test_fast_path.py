"""The fast R²T path against the straightforward one (r2t_plugin/r2t/naive.py).

Outputs AND gradients, every option, both layouts, chunk boundaries, empty windows,
padded batches; bag alone == bag in a batch; autocast; no float64; no host syncs.
"""
import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import r2t_plugin.r2t.attention as attention
import r2t_plugin.r2t.stage as stage_module
from r2t_plugin import R2T, R2TABMIL
from r2t_plugin.r2t.naive import NaiveR2T

SMALL = dict(heads=2, crmsa_heads=2, epeg_k=5, crmsa_k=3)
TOL = dict(rtol=1e-5, atol=1e-5)


def make(seed=0, official=False, **kw):
    torch.manual_seed(seed)
    opts = {**SMALL, **kw}
    model = R2T.official(12, 16, **opts) if official else R2T(12, 16, **opts)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def sparse_coords(n, width, seed=0, patch=256):
    """n cells of a width-wide grid: a dense block plus scattered cells (empty windows and
    windows with a single instance), shuffled, as level-0 corners."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(width * width, generator=g)[:n]
    return torch.stack([cells % width, cells // width], dim=1).float() * patch + 512


def batch(sizes, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    nmax = max(sizes) + 3
    x = torch.randn(len(sizes), nmax, 12, generator=g)
    mask = torch.zeros(len(sizes), nmax, dtype=torch.bool)
    coords = torch.zeros(len(sizes), nmax, 2)
    for i, n in enumerate(sizes):
        mask[i, :n] = True
        coords[i, :n] = sparse_coords(n, 3 + int(1.6 * n**0.5), seed=seed + i)
    return x, mask, coords if layout == "coords" else None


def compare(model, x, mask=None, coords=None, chunk=None, fused=True, monkeypatch=None):
    """Fast and naive outputs and gradients (input and every parameter) agree."""
    if chunk is not None:
        for layer in model.layers:
            layer.attn.chunk_tokens = chunk
    if monkeypatch is not None:
        monkeypatch.setattr(attention, "_FUSED_CPU", fused)
    naive = NaiveR2T(model)
    results = []
    for fn in (model, naive):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out = fn(xi, mask=mask, coords=coords, patch_size=None if coords is None else 256)
        weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        (out * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), xi.grad, grads))
    (o1, gx1, g1), (o2, gx2, g2) = results
    torch.testing.assert_close(o1, o2, **TOL)
    torch.testing.assert_close(gx1, gx2, **TOL)
    params = dict(model.named_parameters())
    for name in set(g1) | set(g2):  # a missing gradient is zero (the EPEG bias cancels)
        zero = torch.zeros_like(params[name])
        want = g2.get(name, zero)
        # parameter gradients sum over every token: float32 tolerance relative to their scale
        torch.testing.assert_close(g1.get(name, zero), want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max()),
                                   msg=lambda m, name=name: f"{name}: {m}")
    return o1, g1


OPTIONS = [
    dict(),
    dict(epeg=False),
    dict(crmsa_k=1, all_shortcut=True),
    dict(crmsa_mlp=True, crmsa_k=5),
    dict(n_layers=3, epeg_k=7),
    dict(crmsa=False),
    dict(n_layers=1),
]


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("fused", [True, False])
def test_official_fast_equals_naive(opts, fused, monkeypatch):
    opts = {k: v for k, v in opts.items() if k != "crmsa"}  # the reference always has CR-MSA
    model = make(official=True, **opts)
    out, grads = compare(model, torch.randn(300, 12), chunk=None, fused=fused, monkeypatch=monkeypatch)
    has_epeg = opts.get("epeg", True) and len(model.layers) > 0  # n_layers=1: CR-MSA only
    if has_epeg:  # EPEG's kernel gets a gradient (its bias cancels in the softmax)
        assert grads["layers.0.attn.pe.weight"].abs().sum() > 0
    else:
        assert "layers.0.attn.pe.weight" not in grads


@pytest.mark.parametrize("chunk", [1, 7, 40, None])
@pytest.mark.parametrize("fused", [True, False])
def test_official_chunk_boundaries_and_batch(chunk, fused, monkeypatch):
    model = make(official=True, region_num=4)  # CR-MSA keeps 8 x 8: two partitions
    with pytest.warns(UserWarning, match="mixes regions"):
        compare(model, torch.randn(2, 150, 12), chunk=chunk, fused=fused, monkeypatch=monkeypatch)


@pytest.mark.parametrize("layout,regions", list(itertools.product(
    ["sequence", "coords"], [dict(region_num=8), dict(region_size=4), dict(region_size=5, region_num=None)])))
@pytest.mark.parametrize("fused", [True, False])
def test_default_fast_equals_naive_padded_batch(layout, regions, fused, monkeypatch):
    model = make(layout=layout, min_region_tokens=4, **regions)
    x, mask, coords = batch([150, 9, 61], layout)
    compare(model, x, mask, coords, chunk=30, fused=fused, monkeypatch=monkeypatch)


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("layout", ["sequence", "coords"])
def test_default_options(opts, layout, monkeypatch):
    model = make(layout=layout, region_size=4, **opts)
    x, mask, coords = batch([90, 40], layout, seed=3)
    compare(model, x, mask, coords, chunk=17, monkeypatch=monkeypatch)


def test_empty_windows_are_exercised():
    """The coords batches above do have empty slots and single-instance windows."""
    model = make(layout="coords", region_size=4, min_region_tokens=4)
    x, mask, coords = batch([150, 9, 61], "coords")
    r = model.partition(mask, coords, torch.full((3,), 256.0))
    filled = r.real.sum(1)
    assert (~r.real).any() and (filled == 1).any() and len(r.groups) == 1
    seq = make(region_num=8, min_region_tokens=4).partition(mask, None, None)
    assert len(seq.groups) > 1  # bags of different region sizes: no padding to the largest


@pytest.mark.parametrize("layout", ["sequence", "coords"])
def test_bag_alone_equals_bag_in_batch_with_gradients(layout):
    model = make(layout=layout, region_num=8)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    sizes = [70, 200, 5]
    x, mask, coords = batch(sizes, layout, seed=5)
    x.requires_grad_()
    out = model(x, mask=mask, coords=coords, patch_size=256)
    (out ** 2).sum().backward()
    for i, n in enumerate(sizes):
        xi = x[i, :n].detach().clone().requires_grad_()
        alone = model(xi, coords=None if coords is None else coords[i, :n], patch_size=256)
        (alone ** 2).sum().backward()
        torch.testing.assert_close(out[i, :n], alone, **TOL)
        torch.testing.assert_close(x.grad[i, :n], xi.grad, **TOL)
        assert x.grad[i, n:].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", [dict(official=True), dict(layout="coords", region_size=4), dict()])
def test_half_autocast_runs_and_is_close(kw, dtype):
    """Official N=400 has regions made only of pads (min = max in CR-MSA): finite in fp16 too."""
    model = make(**kw)
    x = torch.randn(400, 12)
    coords = sparse_coords(400, 30) if kw.get("layout") == "coords" else None
    want = model(x, coords=coords)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        got = model(x, coords=coords)
        got.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.autocast("cpu", dtype=dtype), torch.no_grad():
        got = model(x, coords=coords)
    assert (got.float() - want).abs().max() < 0.15 * want.abs().max()


class _Record(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes, self.ops = set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


@pytest.mark.parametrize("kw", [dict(official=True), dict(), dict(layout="coords", region_num=8),
                                dict(layout="coords", region_size=4)])
def test_no_float64_in_forward_and_backward(kw):
    model = make(**kw).train()
    x, mask, coords = batch([80, 33], kw.get("layout", "sequence"))
    if kw.get("official"):
        x, mask = x[0], None
    with _Record() as rec:
        out = model(x, mask=mask, coords=coords)  # coords layout: patch size inferred
        out.sum().backward()
    assert torch.float64 not in rec.dtypes and torch.float32 in rec.dtypes
    # and the recorder does see float64 when it occurs
    with _Record() as rec:
        torch.ones(2, dtype=torch.float64) + 1
    assert torch.float64 in rec.dtypes


@pytest.mark.parametrize("kw,mask,allowed", [
    (dict(official=True), False, 0), (dict(), False, 0), (dict(), True, 1),
    (dict(layout="coords", region_size=4), True, 1), (dict(layout="coords", region_num=8), False, 1)])
def test_host_transfers_only_in_the_partition(kw, mask, allowed, monkeypatch):
    """With the data checks made asynchronous (as on an accelerator), a forward reads
    device data on the host at most once (the partition), and never in the layers."""
    monkeypatch.setattr(stage_module, "_require", lambda cond, message, confirm=None: None)
    transfers = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: transfers.append(1) or real_tolist(self))
    model = make(**kw).train()
    x, m, coords = batch([70, 50] if mask else [70, 70], kw.get("layout", "sequence"))
    if not mask:
        x, m, coords = x[:, :70], None, None if coords is None else coords[:, :70]
    with _Record() as rec:
        model(x, mask=m, coords=coords).sum().backward()
    scalar_reads = [op for op in rec.ops if "_local_scalar_dense" in op or "aten.item" in op]
    assert scalar_reads == []
    assert len(transfers) <= allowed


@pytest.mark.parametrize("mask,allowed", [(False, 0), (True, 2)])
def test_r2t_abmil_host_transfers(mask, allowed, monkeypatch):
    """R2TABMIL (through the aggregator base) adds no host transfer to the stage's when the
    caller gives no mask, and one check of the mask when it does."""
    monkeypatch.setattr(stage_module, "_require", lambda cond, message, confirm=None: None)
    model = R2TABMIL(12, 2, 16, **SMALL).train()
    x, m, _ = batch([70, 50] if mask else [70, 70], "sequence")
    if not mask:
        x, m = x[:, :70], None
    transfers = []
    real_tolist, real_bool = torch.Tensor.tolist, torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: transfers.append(1) or real_tolist(self))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: transfers.append(1) or real_bool(self))
    model(x, mask=m)["logits"].sum().backward()
    assert len(transfers) == allowed


def test_module_backward_hooks_still_work():
    """The in-place residual sums must not break tools that hook the layers."""
    model = make(official=True).train()
    seen = []
    for layer in [*model.layers, model.crmsa]:
        layer.register_full_backward_hook(lambda mod, gin, gout: seen.append(mod))
    model(torch.randn(300, 12)).sum().backward()
    assert len(seen) == 2


def _saved(fn):
    """(result, dtypes and shapes of the tensors autograd saves while running fn)."""
    seen = {}  # one entry per storage

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), (t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, list(seen.values())


@pytest.mark.parametrize("relu", [True, False])
def test_lean_dropout_same_values_and_gradients_as_nn_dropout(relu):
    """r2t/lean.py: the random numbers, outputs and gradients of ReLU -> Dropout and of
    Dropout, but only the output (resp. a bool mask) is kept for the backward."""
    from r2t_plugin.r2t import lean

    act, drop = torch.nn.ReLU(), torch.nn.Dropout(0.3).train()
    z0 = torch.randn(500, 64)
    results = []
    for fast in (True, False):
        z = z0.clone().requires_grad_()
        torch.manual_seed(7)
        if relu:
            out, saved = _saved(lambda: lean.relu_dropout(z * 1, act, drop) if fast else drop(act(z * 1)))
        else:
            out, saved = _saved(lambda: lean.dropout(z * 1, drop) if fast else drop(z * 1))
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        results.append((out.detach(), z.grad, saved))
    (o1, g1, s1), (o2, g2, s2) = results
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    big = [s for s in s1 if s[1] == (500, 64)]
    assert big == ([(torch.float32, (500, 64))] if relu else [(torch.bool, (500, 64))])
    nn_big = [s for s in s2 if s[1] == (500, 64)]
    assert len(nn_big) == (2 if relu else 1) and all(d == torch.float32 for d, _ in nn_big)  # nn's way keeps more


@pytest.mark.parametrize("kw", [dict(official=True, region_num=4), dict(layout="coords", region_size=4),
                                dict(region_num=8), dict(crmsa=False), dict(crmsa_mlp=True, all_shortcut=True)])
def test_recomputed_tail_gives_identical_outputs_and_gradients(kw, monkeypatch):
    """Training (dropout on): recomputing everything after the last R-MSA attention in the
    backward gives the same output and gradients, bit for bit, while storing less."""
    model = make(**kw).train()
    x, mask, coords = batch([90, 40], kw.get("layout", "sequence"), seed=2)
    if kw.get("official"):
        x, mask, coords = x[0], None, None
    results = []
    for recompute in (True, False):
        if not recompute:  # the checkpoint replaced by a plain call: every tensor stored
            monkeypatch.setattr(stage_module, "checkpoint", lambda fn, *a, **k: fn(*a))
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        torch.manual_seed(3)
        out, saved = _saved(lambda: model(xi, mask=mask, coords=coords))
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), xi.grad, grads, sum(1 for _, s in saved if s[-1:] == (16,) and math.prod(s) >= 90 * 16)))
    (o1, gx1, g1, n1), (o2, gx2, g2, n2) = results
    assert torch.equal(o1, o2) and torch.equal(gx1, gx2) and g1.keys() == g2.keys()
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name
    assert n1 < n2  # fewer token-width tensors stored


def test_regions_fill_counts_the_tokens_of_each_region():
    x, mask, coords = batch([150, 9, 61], "coords")
    parts = [make(layout=layout, min_region_tokens=4, **reg).partition(mask, coords, torch.full((3,), 256.0))
             for layout in ("sequence", "coords") for reg in (dict(region_num=8), dict(region_size=4))]
    from r2t_plugin.r2t.regions import official_regions
    parts += [official_regions(2, 150, 8), official_regions(1, 1000, 4)]
    for r in parts:
        assert list(r.fill) == r.real.sum(1).tolist()
        # the chunks' token lists cover every token once, and pos points at their slots
        seen = torch.cat([ch.tok for ch in r.chunks(37)])
        assert torch.equal(seen.sort().values, torch.arange(r.n_tokens))
        for ch in r.chunks(37):
            assert torch.equal(ch.idx if ch.pos is None else ch.idx[ch.pos], ch.tok)


def test_projections_skip_empty_slots():
    """Coords layout with many empty slots: the qkv projection (forward, recomputation and
    both gradients) runs on the tokens, not on the slots."""
    from torch.utils.flop_counter import FlopCounterMode

    from r2t_plugin.r2t import bench

    model = bench.build("coords", region_size=4).train()
    n, c = 120, bench.DIM
    coords = sparse_coords(n, 40)  # about 1 % of the grid: most slots are empty
    r = model.stage.partition(torch.ones(1, n, dtype=torch.bool), coords[None], torch.tensor([256.0]))
    slots = sum((e - s) * p for s, e, p in r.groups)
    assert slots > 5 * n
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(n, bench.D_IN), coords=coords, patch_size=256.0)["logits"].sum().backward()
    flops = counter.get_flop_counts()["Global"]
    matmuls = sum(v for k, v in flops.items() if str(k) in ("aten.mm", "aten.addmm", "aten.bmm"))
    qkv_on_tokens, qkv_on_slots = (4 * 2 * m * c * 3 * c for m in (n, slots))
    assert qkv_on_tokens < matmuls < qkv_on_slots


@pytest.mark.parametrize("kw", [dict(official=True), dict(layout="coords", region_size=4)])
def test_inference_in_place_path_equals_the_training_path(kw):
    """Without gradients the input projection's ReLU and R-MSA's output projection run in
    place; the result is the same, bit for bit."""
    model = R2TABMIL(12, 2, 16, mode="official" if kw.pop("official", False) else "default", **SMALL, **kw).eval()
    x = torch.randn(300, 12)
    coords = sparse_coords(300, 25) if kw else None
    with torch.no_grad():
        fast = model(x, coords=coords)["embedding"]
    assert torch.equal(fast, model(x, coords=coords)["embedding"].detach())
