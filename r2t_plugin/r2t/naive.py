"""A straightforward R²T that stores every region's full logit map, as the reference does.

The yardstick of the fast path (tests) and of the benchmark. It shares an :class:`R2T`'s
parameters and partition but writes each layer the obvious way: all regions padded to
one size, logits (R, h, P, P), EPEG as the (k x 1) convolution of the logits (as in the paper),
masked softmax, explicit cross-region attention. Memory grows as R * P², so it only fits
moderate bags.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .regions import Regions, official_regions
from .stage import R2T

__all__ = ["NaiveR2T"]


class NaiveR2T(nn.Module):
    """``NaiveR2T(stage)(x, mask=None, coords=None, patch_size=None)``: same contract and
    result as ``stage(...)``, computed straightforwardly."""

    def __init__(self, stage: R2T) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None,
                patch_size: float | Tensor | None = None) -> Tensor:
        st = self.stage
        single = x.dim() == 2
        if single:
            x, mask = x[None], None if mask is None else mask[None]
            coords = None if coords is None else coords[None]
        b, n, _ = x.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        if patch_size is not None and not isinstance(patch_size, Tensor):
            patch_size = torch.full((b,), float(patch_size), device=x.device)
        if st.mode == "official":
            rm, cr = official_regions(b, n, st.region_num, x.device), official_regions(b, n, 8, x.device)
        else:
            rm = cr = st.partition(mask, coords, patch_size)
        h = st.proj(x) if st.proj is not None else x
        shortcut = h
        for layer in st.layers:
            h = h + _scatter(_rmsa(layer, h, rm), rm, h.shape)
        if st.crmsa is not None:
            h = h + _scatter(_crmsa(st.crmsa, h, cr, per_bag=st.mode != "official"), cr, h.shape)
        if st.all_shortcut:
            h = h + shortcut
        h = st.norm(h)
        h = st.head(h) if st.head is not None else h
        h = h * mask[..., None].to(h.dtype)
        return h[0] if single else h


def _positions(regions: Regions, n_positions: int) -> Tensor:
    """(R, P) batch position of every slot; ``n_positions`` for an empty slot."""
    if regions.tokens is None:
        return regions.index
    ext = torch.cat([regions.tokens, regions.tokens.new_tensor([n_positions])])
    return ext[regions.index]


def _gather(prenorm: nn.Module, h: Tensor, regions: Regions) -> Tensor:
    """LN, then the (R, P, C) slot tokens (empty slots and pads zero)."""
    a = prenorm.norm(h).reshape(-1, h.shape[-1])
    a = torch.cat([a, a.new_zeros(1, a.shape[-1])])
    return a[_positions(regions, a.shape[0] - 1)]


def _scatter(y: Tensor, regions: Regions, shape: torch.Size) -> Tensor:
    b, n, _ = shape
    pos = _positions(regions, b * n)
    real = regions.real
    out = y.new_zeros(b * n, y.shape[-1])
    out[pos[real]] = y[real]
    return out.reshape(b, n, -1)


def _rmsa(prenorm: nn.Module, h: Tensor, regions: Regions) -> Tensor:
    att = prenorm.attn
    t = _gather(prenorm, h, regions)
    r, p, c = t.shape
    heads, d = att.heads, att.head_dim
    qkv = att.qkv(t).reshape(r, p, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * d**-0.5, qkv[1], qkv[2]
    active = regions.active
    if not regions.pads_active:
        q = q * active[:, None, :, None].to(q.dtype)
    logits = q @ k.transpose(-1, -2)  # (R, h, P, P): all of them at once
    if att.pe is not None:
        logits = logits + att.pe(logits)
    if not regions.pads_active:
        logits = logits.masked_fill(~active[:, None, None, :], float("-inf"))
    o = torch.softmax(logits, dim=-1) @ v
    return att.drop(att.proj(o.transpose(1, 2).reshape(r, p, c)))


def _mhsa(att: nn.Module, s: Tensor) -> Tensor:
    """Explicit multi-head self-attention over one (L, C) sequence."""
    l, c = s.shape
    qkv = att.qkv(s).reshape(l, 3, att.heads, att.head_dim).permute(1, 2, 0, 3)
    a = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * att.head_dim**-0.5, dim=-1)
    return att.drop(att.proj((a @ qkv[2]).transpose(0, 1).reshape(l, c)))


def _crmsa(prenorm: nn.Module, h: Tensor, regions: Regions, per_bag: bool) -> Tensor:
    att = prenorm.attn
    t = _gather(prenorm, h, regions)
    g = att.logits(t)  # (R, P, K)
    keep = regions.active[..., None]
    combine = torch.softmax(g.masked_fill(~keep, float("-inf")), dim=1)
    reps = torch.einsum("rpk,rpc->rkc", combine, t)
    mixed = torch.zeros_like(reps)
    seqs = [regions.bag == i for i in range(int(regions.bag.max()) + 1)] if per_bag else [None]
    for sel in seqs:
        part = reps if sel is None else reps[sel]
        out = torch.stack([_mhsa(att, part[:, kk]) for kk in range(part.shape[1])], dim=1)
        if sel is None:
            mixed = out
        else:
            mixed[sel] = out
    dispatch = torch.softmax(g, dim=2)
    g_min = g.masked_fill(~keep, float("inf")).amin(dim=1, keepdim=True)
    g_max = g.masked_fill(~keep, float("-inf")).amax(dim=1, keepdim=True)
    weights = (g - g_min) / (g_max - g_min + 1e-8) * dispatch * keep.to(g.dtype)
    return torch.einsum("rpk,rkc->rpc", weights, mixed)
