"""The two attention layers of R²T: R-MSA with EPEG (§3) and CR-MSA (§4).

Both work on a :class:`~r2t_plugin.r2t.regions.Regions` partition, so that the official
(zero-padded, unmasked) and the default (masked) behaviour share one implementation:
the partition alone says which slots are keys and which outputs go back.

EPEG uses the identity of §8: a (k x 1) convolution of the logits along the query axis
is attention with queries ``q + depthwise_conv1d(q)``; the bias cancels in the softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .regions import Regions

__all__ = ["RegionAttention", "CrossRegionAttention"]

# regions attended per call: bounds the logits held at once (chunk * heads * P * P floats)
_LOGIT_BUDGET = 2**24


def _attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """softmax(q kᵀ / sqrt(d)) v over the last two axes; ``key_mask`` (R, P) True = key."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class RegionAttention(nn.Module):
    """R-MSA: multi-head self-attention inside each region, with EPEG (§3).

    Parameters follow the reference: ``qkv`` Linear(C, 3C), ``proj`` Linear(C, C), and
    ``pe`` a depthwise (k x 1) convolution weight (heads, 1, k, 1) with a bias (heads,).
    """

    def __init__(self, dim: int, heads: int, epeg: bool = True, epeg_k: int = 15,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        if epeg and epeg_k % 2 == 0:
            raise ValueError(f"epeg_k must be odd (an even kernel changes the number of rows), got {epeg_k}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.pe = nn.Conv2d(heads, heads, (epeg_k, 1), padding=(epeg_k // 2, 0), groups=heads) if epeg else None

    def _queries(self, q: Tensor, active: Tensor) -> Tensor:
        """EPEG as a convolution of the queries along the region's slot axis (§8).

        ``q`` (R, h, P, d). Inactive slots are zero queries (default mode); in official
        mode every slot is active and the pads' queries enter like any other row.
        """
        q = q * active[:, None, :, None].to(q.dtype)
        if self.pe is None:
            return q
        r, h, p, d = q.shape
        w = self.pe.weight[:, 0, :, 0].to(q.dtype)  # (h, k)
        k = w.shape[1]
        x = q.permute(0, 3, 1, 2).reshape(r * d, h, p)
        conv = F.conv1d(x, w[:, None, :], padding=k // 2, groups=h)
        return q + conv.reshape(r, d, h, p).permute(0, 2, 3, 1)

    def forward(self, x: Tensor, regions: Regions) -> Tensor:
        """x (B, N, C) already layer-normed -> (B, N, C) attention output (not residual)."""
        tokens = regions.gather(x)  # (R, P, C)
        r, p, c = tokens.shape
        h, d = self.heads, self.head_dim
        chunk = max(1, _LOGIT_BUDGET // (h * p * p))
        key_mask = None if bool(regions.active.all()) else regions.active
        outs = []
        for s in range(0, r, chunk):
            t = tokens[s : s + chunk]
            active = regions.active[s : s + chunk]
            qkv = self.qkv(t).reshape(t.shape[0], p, 3, h, d).permute(2, 0, 3, 1, 4)
            q = self._queries(qkv[0], active)
            km = None if key_mask is None else key_mask[s : s + chunk]
            o = _attend(q, qkv[1], qkv[2], km)
            outs.append(o.transpose(1, 2).reshape(t.shape[0], p, c))
        y = self.drop(self.proj(torch.cat(outs)))
        return regions.scatter(y, x.shape)


class CrossRegionAttention(nn.Module):
    """CR-MSA (§4): K representatives per region, attention across regions, dispatch back.

    ``phi`` is a (C, K) parameter, or with ``mlp`` a Linear(C, C/4) -> Tanh -> Linear(C/4, K)
    without biases. ``qkv`` / ``proj`` are the cross-region multi-head attention.
    """

    def __init__(self, dim: int, k: int = 3, heads: int = 8, mlp: bool = False,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by crmsa_heads={heads}")
        if k < 1:
            raise ValueError(f"crmsa_k must be >= 1, got {k}")
        self.k, self.heads, self.head_dim = k, heads, dim // heads
        if mlp:
            self.phi = nn.Sequential(nn.Linear(dim, dim // 4, bias=False), nn.Tanh(),
                                     nn.Linear(dim // 4, k, bias=False))
        else:
            self.phi = nn.Parameter(torch.empty(dim, k))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def logits(self, tokens: Tensor) -> Tensor:
        """(R, P, C) -> (R, P, K)."""
        if isinstance(self.phi, nn.Parameter):
            return tokens @ self.phi.to(tokens.dtype)
        return self.phi(tokens)

    def _mhsa(self, s: Tensor, key_mask: Tensor | None) -> Tensor:
        """Plain multi-head self-attention over (G, R, C) sequences."""
        g, r, c = s.shape
        h, d = self.heads, self.head_dim
        qkv = self.qkv(s).reshape(g, r, 3, h, d).permute(2, 0, 3, 1, 4)
        o = _attend(qkv[0], qkv[1], qkv[2], key_mask)
        return self.drop(self.proj(o.transpose(1, 2).reshape(g, r, c)))

    def forward(self, x: Tensor, regions: Regions, per_bag: bool = True) -> Tensor:
        """x (B, N, C) already layer-normed -> (B, N, C) output (not residual).

        ``per_bag`` False reproduces the reference: the regions of every bag in the batch
        form one sequence (bags leak into each other).
        """
        tokens = regions.gather(x)  # (R, P, C)
        active = regions.active
        g = self.logits(tokens)  # (R, P, K)
        neg = torch.finfo(g.dtype).min
        keep = active[..., None]
        combine = torch.softmax(g.masked_fill(~keep, neg), dim=1)
        combine = combine * keep.to(combine.dtype)
        reps = combine.transpose(1, 2) @ tokens  # (R, K, C)
        if per_bag:
            mixed = self._per_bag(reps, regions.bag)
        else:
            mixed = self._mhsa(reps.transpose(0, 1), None).transpose(0, 1)
        dispatch = torch.softmax(g, dim=2)
        g_min = g.masked_fill(~keep, float("inf")).amin(dim=1, keepdim=True)
        g_max = g.masked_fill(~keep, float("-inf")).amax(dim=1, keepdim=True)
        minmax = (g - g_min) / (g_max - g_min + 1e-8)
        weights = (minmax * dispatch).masked_fill(~keep, 0.0)
        y = weights @ mixed  # (R, P, C)
        return regions.scatter(y, x.shape)

    def _per_bag(self, reps: Tensor, bag: Tensor) -> Tensor:
        """Attention across the regions of each bag separately; (R, K, C) -> (R, K, C)."""
        r, k, c = reps.shape
        counts = torch.bincount(bag)
        n_bags, rmax = counts.numel(), int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(r, device=reps.device) - starts[bag]
        seq = reps.new_zeros(n_bags, rmax, k, c)
        seq[bag, pos] = reps
        key_mask = torch.zeros(n_bags, rmax, dtype=torch.bool, device=reps.device)
        key_mask[bag, pos] = True
        seq = seq.permute(0, 2, 1, 3).reshape(n_bags * k, rmax, c)
        km = key_mask.repeat_interleave(k, dim=0)
        if bool(km.all()):
            km = None
        out = self._mhsa(seq, km).reshape(n_bags, k, rmax, c).permute(0, 2, 1, 3)
        return out[bag, pos]
