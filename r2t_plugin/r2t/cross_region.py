"""CR-MSA of R²T (Tang et al., CVPR 2024): attention across regions through K representatives per region.

The token-wise parts run chunk by chunk of regions, in the forward and the backward
pass (two autograd functions): the LayerNorm, Φ and the representatives
(:class:`_Summarise`), and the dispatch back to the tokens (:class:`_Dispatch`). Neither
stores a slot- or token-width tensor: the backward recomputes each chunk's normalised
rows from the layer's input. The attention across the R x K representatives and the
(M, K) weights are ordinary autograd.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CHUNK_TOKENS, STREAM_CHUNK_TOKENS, _norm_args, _take
from .lean import Packer
from .regions import Chunk, Regions

__all__ = ["CrossRegionAttention"]


def _normed(rows: Tensor, ln: tuple[Tensor, Tensor] | None, eps: float, ch: Chunk) -> Tensor:
    """(n, p, C) a chunk's slots: its tokens ``rows`` (c, C) layer-normed, empty slots zero."""
    c = rows.shape[1]
    a = rows if ln is None else F.layer_norm(rows, (c,), ln[0], ln[1], eps)
    if ch.pos is not None:
        a = a.new_zeros(ch.n * ch.p, c).index_copy(0, ch.pos, a)
    return a.view(ch.n, ch.p, c)


def _summary(a: Tensor, phi: Callable[[Tensor], Tensor], ch: Chunk) -> tuple[Tensor, Tensor]:
    """Φ logits (n, p, K) float32 and the representatives (n, K, C) of a chunk's slots ``a``.

    Softmaxes in float32 (the reference's 1e-8 in the min-max weights vanishes in half precision)."""
    keep = ch.active.view(ch.n, ch.p, 1)
    g = phi(a).float()
    combine = torch.softmax(g.masked_fill(~keep, torch.finfo(g.dtype).min), dim=1).masked_fill(~keep, 0)
    return g, combine.transpose(1, 2) @ a.to(combine.dtype)


class _Summarise(torch.autograd.Function):
    """(T, C) tokens -> (Φ logits g (M, K) float32, representatives (R, K, C))."""

    @staticmethod
    def forward(ctx, x: Tensor, ln_w: Tensor | None, ln_b: Tensor | None, regions: Regions, chunk_tokens: int,
                eps: float, phi: Callable[[Tensor], Tensor], *phi_params: Tensor) -> tuple[Tensor, Tensor]:
        dev = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ln = None if ln_w is None else (ln_w, ln_b)
        gs, reps = Packer(regions.slots.numel()), Packer(regions.n_regions)
        for ch in regions.chunks(chunk_tokens):
            g, r = _summary(_normed(x.index_select(0, ch.tok), ln, eps, ch), phi, ch)
            gs.add(g.reshape(ch.n * ch.p, -1))
            reps.add(r)
        ctx.save_for_backward(x, ln_w, ln_b, *phi_params)
        ctx.regions, ctx.chunk_tokens, ctx.eps, ctx.phi = regions, chunk_tokens, eps, phi
        return gs.buffer, reps.buffer

    @staticmethod
    def backward(ctx, grad_g: Tensor, grad_reps: Tensor):
        x, ln_w, ln_b, *params = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        ln = None if ln_w is None else (ln_w, ln_b)
        leaves = [t for t in ([] if ln is None else [ln_w, ln_b]) + params if t.requires_grad]
        grad_x = torch.empty_like(x) if need_x else None
        sums = {id(t): torch.zeros_like(t) for t in leaves}
        m0 = 0
        for ch in ctx.regions.chunks(ctx.chunk_tokens):
            rows = x.detach().index_select(0, ch.tok).requires_grad_(need_x)
            with torch.enable_grad(), torch.autocast(x.device.type, ctx.autocast[1], enabled=ctx.autocast[0]):
                g, r = _summary(_normed(rows, ln, ctx.eps, ch), ctx.phi, ch)
            gg = grad_g[m0 : m0 + ch.n * ch.p].view_as(g)
            m0 += ch.n * ch.p
            inputs = ([rows] if need_x else []) + leaves
            got = torch.autograd.grad([g, r], inputs, [gg, grad_reps[ch.first : ch.first + ch.n]], allow_unused=True)
            if need_x:
                grad_x.index_copy_(0, ch.tok, got[0])
            for t, d in zip(leaves, got[len(got) - len(leaves):]):
                if d is not None:
                    sums[id(t)] += d
        grads = [None if t is None else sums.get(id(t)) for t in [ln_w, ln_b, *params]]
        return (grad_x, grads[0], grads[1], None, None, None, None, *grads[2:])


def _dispatched(weights: Tensor, mixed: Tensor, regions: Regions, chunk_tokens: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(tokens, their dispatched rows ``weights @ mixed`` of their region), chunk by chunk."""
    m0 = 0
    for ch in regions.chunks(chunk_tokens):
        w = weights[m0 : m0 + ch.n * ch.p].view(ch.n, ch.p, -1)
        m0 += ch.n * ch.p
        y = (w.to(mixed.dtype) @ mixed[ch.first : ch.first + ch.n]).view(ch.n * ch.p, -1)
        yield ch.tok, (y if ch.pos is None else y.index_select(0, ch.pos))


class _Dispatch(torch.autograd.Function):
    """(M, K) weights, (R, K, C) mixed representatives -> (T, C): every token gets its
    slot's ``weights @ mixed`` of its region."""

    @staticmethod
    def forward(ctx, weights: Tensor, mixed: Tensor, regions: Regions, chunk_tokens: int) -> Tensor:
        out = None
        for tok, y in _dispatched(weights, mixed, regions, chunk_tokens):
            if out is None:
                out = y.new_empty(regions.n_tokens, y.shape[1])
            out.index_copy_(0, tok, y)
        ctx.save_for_backward(weights, mixed)
        ctx.regions, ctx.chunk_tokens, ctx.dtype = regions, chunk_tokens, out.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights, mixed = ctx.saved_tensors
        dt = ctx.dtype
        grad_w, grad_m = torch.empty_like(weights), torch.empty_like(mixed)
        m0 = 0
        for ch in ctx.regions.chunks(ctx.chunk_tokens):
            sl = slice(m0, m0 + ch.n * ch.p)
            m0 += ch.n * ch.p
            go = _take(grad, ch.idx).to(dt).view(ch.n, ch.p, -1)  # empty slots: zero
            m = mixed[ch.first : ch.first + ch.n].to(dt)
            grad_w[sl] = (go @ m.transpose(1, 2)).reshape(ch.n * ch.p, -1)
            grad_m[ch.first : ch.first + ch.n] = weights[sl].view(ch.n, ch.p, -1).to(dt).transpose(1, 2) @ go
        return grad_w, grad_m, None, None


class CrossRegionAttention(nn.Module):
    """CR-MSA (Tang et al., CVPR 2024): K representatives per region, attention across regions, dispatch back.

    ``phi`` is a (C, K) parameter, or with ``mlp`` a Linear(C, C/4) -> Tanh -> Linear(C/4, K)
    without biases. ``qkv`` / ``proj`` are the cross-region multi-head attention. The
    representatives and the dispatch run ``chunk_tokens`` slots at a time.
    """

    def __init__(self, dim: int, k: int = 3, heads: int = 8, mlp: bool = False,
                 dropout: float = 0.1, chunk_tokens: int = CHUNK_TOKENS) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by crmsa_heads={heads}")
        if k < 1:
            raise ValueError(f"crmsa_k must be >= 1, got {k}")
        self.k, self.heads, self.head_dim, self.chunk_tokens = k, heads, dim // heads, chunk_tokens
        if mlp:
            self.phi = nn.Sequential(nn.Linear(dim, dim // 4, bias=False), nn.Tanh(),
                                     nn.Linear(dim // 4, k, bias=False))
        else:
            self.phi = nn.Parameter(torch.empty(dim, k))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def logits(self, tokens: Tensor) -> Tensor:
        """(..., C) -> (..., K)."""
        if isinstance(self.phi, nn.Parameter):
            return tokens @ self.phi.to(tokens.dtype)
        return self.phi(tokens)

    def _mhsa(self, s: Tensor, key_mask: Tensor | None) -> Tensor:
        """Plain multi-head self-attention over (G, R, C) sequences; ``key_mask`` (G, R)."""
        g, r, c = s.shape
        h, d = self.heads, self.head_dim
        qkv = self.qkv(s).reshape(g, r, 3, h, d).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.drop(self.proj(o.transpose(1, 2).reshape(g, r, c)))

    def forward(self, x: Tensor, regions: Regions, per_bag: bool = True, norm: nn.LayerNorm | None = None) -> Tensor:
        """x (T, C) tokens, layer-normed unless ``norm`` is given (then applied inside,
        without storing its output) -> (T, C) output (not residual).

        ``per_bag`` False reproduces the reference: the regions of every bag in the batch
        form one sequence (bags leak into each other).
        """
        weights, mixed = self._combine(*self._summarise(x, regions, norm, self.chunk_tokens), regions, per_bag)
        return _Dispatch.apply(weights, mixed, regions, self.chunk_tokens)

    def add_into(self, x: Tensor, regions: Regions, per_bag: bool = True, norm: nn.LayerNorm | None = None) -> None:
        """Inference (no gradients, eval): ``x += CRMSA(LN(x))`` in place. The representatives
        are taken from all of ``x`` first; the dispatch then adds into it chunk by chunk."""
        chunk = min(self.chunk_tokens, STREAM_CHUNK_TOKENS)
        self.add_mixed(x, *self._summarise(x, regions, norm, chunk), regions, per_bag)

    def chunk_summary(self, rows: Tensor, ch: Chunk, norm: nn.LayerNorm | None) -> tuple[Tensor, Tensor]:
        """Inference: a chunk's Φ logits (n * p, K) and representatives (n, K, C) from its
        tokens ``rows`` (c, C), as :meth:`forward` takes them, for :meth:`add_mixed`."""
        ln, eps = _norm_args(norm)
        g, r = _summary(_normed(rows, ln, eps, ch), self.logits, ch)
        return g.reshape(ch.n * ch.p, -1), r

    def add_mixed(self, x: Tensor, g: Tensor, reps: Tensor, regions: Regions, per_bag: bool) -> None:
        """Inference: ``x += CRMSA`` from every slot's Φ logits ``g`` (M, K) and the
        representatives (R, K, C) of ``x``'s layer-normed tokens, dispatched chunk by chunk."""
        weights, mixed = self._combine(g, reps, regions, per_bag)
        for tok, y in _dispatched(weights, mixed, regions, min(self.chunk_tokens, STREAM_CHUNK_TOKENS)):
            x.index_add_(0, tok, y.to(x.dtype))

    def _summarise(self, x: Tensor, regions: Regions, norm: nn.LayerNorm | None, chunk_tokens: int
                   ) -> tuple[Tensor, Tensor]:
        """Φ logits (M, K) of every slot and the (R, K, C) representatives of LN(x)."""
        ln_w, ln_b, eps = (None, None, 0.0) if norm is None else (norm.weight, norm.bias, norm.eps)
        params = [self.phi] if isinstance(self.phi, nn.Parameter) else list(self.phi.parameters())
        return _Summarise.apply(x, ln_w, ln_b, regions, chunk_tokens, eps, self.logits, *params)

    def _combine(self, g: Tensor, reps: Tensor, regions: Regions, per_bag: bool) -> tuple[Tensor, Tensor]:
        """(M, K) dispatch x min-max weights of every slot and the (R, K, C) mixed representatives."""
        if per_bag:
            mixed = self._per_bag(reps, regions)
        else:
            mixed = self._mhsa(reps.transpose(0, 1), None).transpose(0, 1)
        weights, at = [], 0
        for s, e, p in regions.groups:
            n = e - s
            gr = g[at : at + n * p].view(n, p, -1)
            keep = regions.slot_active[at : at + n * p].view(n, p, 1)
            at += n * p
            dispatch = torch.softmax(gr, dim=2)
            g_min = gr.masked_fill(~keep, float("inf")).amin(dim=1, keepdim=True)
            g_max = gr.masked_fill(~keep, float("-inf")).amax(dim=1, keepdim=True)
            weights.append(((gr - g_min) / (g_max - g_min + 1e-8) * dispatch).masked_fill(~keep, 0.0).flatten(0, 1))
        return (torch.cat(weights) if len(weights) > 1 else weights[0]), mixed

    def _per_bag(self, reps: Tensor, regions: Regions) -> Tensor:
        """Attention across the regions of each bag separately; (R, K, C) -> (R, K, C)."""
        r, k, c = reps.shape
        counts = regions.bag_regions
        n_bags, rmax = len(counts), max(counts)
        if n_bags == 1:
            return self._mhsa(reps.transpose(0, 1), None).transpose(0, 1)
        bag = regions.bag
        first = torch.full((n_bags,), r, dtype=torch.long, device=reps.device)
        first.scatter_reduce_(0, bag, torch.arange(r, device=reps.device), "amin")
        pos = torch.arange(r, device=reps.device) - first[bag]
        seq = reps.new_zeros(n_bags, rmax, k, c).index_put((bag, pos), reps)
        km = None
        if min(counts) < rmax:
            km = torch.zeros(n_bags, rmax, dtype=torch.bool, device=reps.device).index_put_(
                (bag, pos), torch.ones(r, dtype=torch.bool, device=reps.device))
            km = km.repeat_interleave(k, dim=0)
        seq = seq.permute(0, 2, 1, 3).reshape(n_bags * k, rmax, c)
        out = self._mhsa(seq, km).reshape(n_bags, k, rmax, c).permute(0, 2, 1, 3)
        return out[bag, pos]
