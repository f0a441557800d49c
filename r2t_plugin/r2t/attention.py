"""R-MSA with EPEG, the regional attention of R²T (Tang et al., CVPR 2024); CR-MSA is in
:mod:`r2t_plugin.r2t.cross_region`.

Both layers work on the batch's real tokens, flattened to (T, C), and a
:class:`~r2t_plugin.r2t.regions.Regions` partition, so that the official (zero-padded,
unmasked) and the default (masked) behaviour share one implementation.

R-MSA is token-wise projections around :func:`region_attention`, which attends inside
the regions one chunk at a time in the forward AND the backward pass: it never holds the
logits (or any slot-shaped temporary) of more than one chunk. EPEG uses an identity: a
(k x 1) convolution of the logits along the query axis is attention with queries
``q + depthwise_conv1d(q)`` (the bias cancels in the softmax), so every chunk is one call
of a fused attention kernel.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lean import Packer, dropout, no_hooks
from .regions import Chunk, Regions

__all__ = ["RegionAttention", "region_attention", "CHUNK_TOKENS", "STREAM_CHUNK_TOKENS"]

# slots per chunk of regions: bounds every temporary of the region attention
CHUNK_TOKENS = 4096
# inference (``add_into``) holds one token-width buffer, so its per-chunk temporaries are
# most of the rest: it attends fewer slots at a time (100k patches, coords layout: process
# peak 1.15 -> 0.98 GB, forward time within 3 %; bench/README.md)
STREAM_CHUNK_TOKENS = 1024
# on CPU, call the fused kernel and its backward directly (no forward recomputation)
_FUSED_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


def _take(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]``, zero rows where ``index == len(src)`` (an empty slot)."""
    n = src.shape[0]
    out = src.index_select(0, index.clamp(max=n - 1))
    return out.masked_fill_((index >= n)[:, None], 0)


# ---------------------------------------------------------------- region attention
def _epeg(q: Tensor, w: Tensor | None, n: int, p: int) -> Tensor:
    """``q + conv(q)`` along the slot axis, as one depthwise convolution whose centre tap
    is ``w + 1``. ``q`` (n * p, C) contiguous slot rows of n regions of p slots, ``w``
    (h, k) or None. Returns (n, p, C) (channels-last convolution: no layout copies)."""
    c = q.shape[1]
    if w is None:
        return q.view(n, p, c)
    h, k = w.shape
    centre = torch.zeros_like(w)
    centre[:, k // 2] = 1
    weight = (w + centre).repeat_interleave(c // h, dim=0)[:, None, :, None]  # (C, 1, k, 1)
    x = q.view(n, p, 1, c).permute(0, 3, 1, 2)  # (n, C, p, 1) in channels-last memory
    return F.conv2d(x, weight, padding=(k // 2, 0), groups=c).permute(0, 2, 3, 1).reshape(n, p, c)


def _additive_mask(active: Tensor, n: int, p: int, dtype: torch.dtype) -> Tensor:
    """(n, 1, 1, p) 0 for keys, -inf for the rest."""
    m = torch.zeros(n, 1, 1, p, dtype=dtype, device=active.device)
    return m.masked_fill_(~active.view(n, 1, 1, p), float("-inf"))


def _heads(x: Tensor, n: int, p: int, h: int) -> Tensor:
    """(n * p, h * d) or (n, p, h * d) rows -> (n, h, p, d) view."""
    return x.view(n, p, h, -1).transpose(1, 2)


def _project(rows: Tensor, ln: tuple[Tensor, Tensor] | None, weight: Tensor, bias: Tensor, pos: Tensor | None,
             n_slots: int, pads_active: bool, eps: float, dt: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(normalised rows, q rows (n_slots, C), k | v rows (n_slots, 2C)) of a chunk.

    ``rows`` (c, C) the chunk's tokens, at slots ``pos`` of the chunk (None: every slot).
    Only they are normalised and projected; empty slots are zero tokens after the
    LayerNorm, whose projection is the bias when ``pads_active`` (official pads), else
    zero. The normalised rows keep the autograd graph of ``rows`` and of the LayerNorm
    (when they require grad); q and k | v do not."""
    c = rows.shape[1]
    a = rows if ln is None else F.layer_norm(rows, (c,), ln[0], ln[1], eps)
    with torch.no_grad():
        a_d = a.detach().to(dt)
        q = torch.addmm(bias[:c], a_d, weight[:c].t())
        kv = torch.addmm(bias[c:], a_d, weight[c:].t())
        if pos is not None:
            q, kv = (_spread(z, pos, n_slots, b if pads_active else None) for z, b in ((q, bias[:c]), (kv, bias[c:])))
    return a, q, kv


def _spread(z: Tensor, pos: Tensor, n_slots: int, fill: Tensor | None) -> Tensor:
    """(c, W) rows -> (n_slots, W), row ``pos[i]`` = ``z[i]``, the others ``fill`` (or zero)."""
    out = z.new_zeros(n_slots, z.shape[1]) if fill is None else fill.expand(n_slots, -1).clone()
    return out.index_copy_(0, pos, z)


def _norm_args(norm: nn.LayerNorm | None) -> tuple[tuple[Tensor, Tensor] | None, float]:
    """(weight, bias) and eps of a LayerNorm applied inside a layer, or (None, 0.0)."""
    return (None, 0.0) if norm is None else ((norm.weight, norm.bias), norm.eps)


def _attend_chunk(rows: Tensor, ch: Chunk, ln: tuple[Tensor, Tensor] | None, wt: Tensor, b: Tensor,
                  w: Tensor | None, heads: int, pads_active: bool, eps: float, dt: torch.dtype,
                  fused: bool) -> tuple[Tensor, Tensor | None]:
    """The attention output (c, C) of a chunk's tokens ``rows`` (c, C), before the output
    projection, and on the ``fused`` CPU path its log-sum-exp (else None)."""
    n, p, c = ch.n, ch.p, rows.shape[1]
    _, q_rows, kv_rows = _project(rows, ln, wt, b, ch.pos, n * p, pads_active, eps, dt)
    kv = kv_rows.view(n, p, 2, heads, -1)
    q = _heads(_epeg(q_rows, w, n, p), n, p, heads)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    mask = None if pads_active else _additive_mask(ch.active, n, p, dt)
    lse = None
    if fused:
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = o.transpose(1, 2).reshape(n * p, c)
    return (o if ch.pos is None else o.index_select(0, ch.pos)), lse


class _RegionAttention(torch.autograd.Function):
    """``a = LN(h)``, ``qkv = a W^T + b``, then softmax(q̃ kᵀ / sqrt(d)) v inside every
    region, chunk by chunk.

    ``h`` (T, C) tokens (the residual stream); ``ln_w``/``ln_b`` the LayerNorm, or None when
    ``h`` is already normalised. The LayerNorm and the projection run per chunk, on the
    chunk's tokens only (every token sits in one slot, so this costs one projection of the
    tokens; empty slots cost nothing there). Saved for the backward: ``h``, the parameters,
    the output (T, C) and, on the fused CPU path, the log-sum-exp. The backward recomputes
    each chunk's normalised rows, projections and EPEG queries (and, off that path, its
    attention), so no token-width intermediate (``LN(h)``, q, k, v) and no more than one
    chunk's temporaries are ever held; its projection and LayerNorm gradients also skip
    empty slots.
    """

    @staticmethod
    def forward(ctx, h: Tensor, ln_w: Tensor | None, ln_b: Tensor | None, weight: Tensor, bias: Tensor,
                w: Tensor | None, regions: Regions, heads: int, chunk_tokens: int, eps: float) -> Tensor:
        t, c = h.shape
        dt = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        fused = _FUSED_CPU and h.device.type == "cpu"
        ln = None if ln_w is None else (ln_w, ln_b)
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            wt, b = weight.to(dt), bias.to(dt)
            w_c = None if w is None else w.to(dt)
            out = h.new_empty(t, c, dtype=dt)
            lse, packed = [], Packer(heads * regions.slots.numel())
            for ch in regions.chunks(chunk_tokens):
                o, l = _attend_chunk(h.index_select(0, ch.tok), ch, ln, wt, b, w_c, heads, regions.pads_active,
                                     eps, dt, fused)
                lse.append(None if l is None else packed.add(l.reshape(-1)).view_as(l))
                out.index_copy_(0, ch.tok, o)
        ctx.save_for_backward(h, ln_w, ln_b, weight, bias, w, out)
        ctx.lse, ctx.regions, ctx.heads, ctx.chunk_tokens, ctx.fused = lse, regions, heads, chunk_tokens, fused
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, ln_w, ln_b, weight, bias, w, out = ctx.saved_tensors
        regions, heads = ctx.regions, ctx.heads
        t, c = h.shape
        dt = out.dtype
        need_h, need_lw, need_lb, need_wt, need_b, need_w = ctx.needs_input_grad[:6]
        need_ln = ln_w is not None and (need_lw or need_lb)
        wt, b = weight.detach().to(dt), bias.detach().to(dt)
        f32 = dict(dtype=torch.float32, device=h.device)
        grad_h = h.new_empty(t, c) if need_h else None  # every row written once (every token is in one slot)
        grad_wt = torch.zeros(3 * c, c, **f32) if need_wt else None
        grad_b = torch.zeros(3 * c, **f32) if need_b else None
        grad_w = torch.zeros(w.shape, **f32) if need_w else None
        grad_ln = [torch.zeros(c, **f32), torch.zeros(c, **f32)] if need_ln else None
        w_c = None if w is None else w.detach().to(dt)
        ln = None if ln_w is None else (ln_w.detach().requires_grad_(need_ln), ln_b.detach().requires_grad_(need_ln))
        with torch.autocast(h.device.type, enabled=False):
            for i, (idx, act, n, p, pos, tok, _) in enumerate(regions.chunks(ctx.chunk_tokens)):
                go = _heads(_take(grad_out, idx), n, p, heads)
                mask = None if regions.pads_active else _additive_mask(act, n, p, dt)
                h_rows = h.index_select(0, tok).requires_grad_(need_h)
                with torch.enable_grad():
                    # the chunk's normalised rows and projections, recomputed
                    a, q_rows, kv_rows = _project(h_rows, ln, wt, b, pos, n * p, regions.pads_active, ctx.eps, dt)
                    q_in = q_rows.requires_grad_()
                    kv = kv_rows.requires_grad_(not ctx.fused).view(n, p, 2, heads, -1)
                    w_l = None if w_c is None else w_c.requires_grad_(need_w)
                    q = _heads(_epeg(q_in, w_l, n, p), n, p, heads)
                    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
                    wanted = [q_in] + ([w_l] if need_w else [])
                    if ctx.fused:
                        # an empty slot's output only meets its zero gradient (in rowsum(dO * O))
                        o = _heads(_take(out, idx), n, p, heads)
                        gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                            go, q.detach(), k, v, o, ctx.lse[i], 0.0, False, attn_mask=mask)
                        grads = torch.autograd.grad(q, wanted, gq)
                    else:
                        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                        grads = torch.autograd.grad(o, wanted + [kv_rows], go)
                        gk, gv = (g.transpose(1, 2) for g in grads[-1].view(n, p, 2, heads, -1).unbind(2))
                if need_w:
                    grad_w += grads[1].float()
                parts = [grads[0].view(n * p, c), gk.transpose(1, 2).reshape(n * p, c),
                         gv.transpose(1, 2).reshape(n * p, c)]
                if need_b and regions.pads_active:  # pads are zero tokens: their projection is the bias
                    for j in range(3):
                        grad_b[j * c : (j + 1) * c] += parts[j].sum(0, dtype=torch.float32)
                if pos is not None:  # the slots holding a token
                    parts = [g.index_select(0, pos) for g in parts]
                if need_b and not regions.pads_active:
                    for j in range(3):
                        grad_b[j * c : (j + 1) * c] += parts[j].sum(0, dtype=torch.float32)
                if not (need_h or need_wt or need_ln):
                    continue
                # the projection (and LayerNorm) gradients, chunk by chunk: no (T, 3C) buffer
                if need_wt:
                    a_d = a.detach().to(dt)
                    for j in range(3):
                        if dt == torch.float32:
                            grad_wt[j * c : (j + 1) * c].addmm_(parts[j].t(), a_d)
                        else:
                            grad_wt[j * c : (j + 1) * c] += (parts[j].t() @ a_d).float()
                if need_h or need_ln:
                    ga = parts[0] @ wt[:c]
                    for j in (1, 2):
                        ga.addmm_(parts[j], wt[j * c : (j + 1) * c])
                    inputs = ([h_rows] if need_h else []) + (list(ln) if need_ln else [])
                    got = torch.autograd.grad(a, inputs, ga.to(a.dtype))
                    if need_h:
                        grad_h.index_copy_(0, tok, got[0])
                    if need_ln:
                        grad_ln[0] += got[-2].float()
                        grad_ln[1] += got[-1].float()
        return (grad_h,
                None if not need_ln else grad_ln[0].to(ln_w.dtype),
                None if not need_ln else grad_ln[1].to(ln_b.dtype),
                None if grad_wt is None else grad_wt.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype),
                None if grad_w is None else grad_w.to(w.dtype), None, None, None, None)


def region_attention(h: Tensor, norm: nn.LayerNorm | None, weight: Tensor, bias: Tensor, w: Tensor | None,
                     regions: Regions, heads: int, chunk_tokens: int = CHUNK_TOKENS) -> Tensor:
    """(T, C) tokens -> (T, C) attention output inside regions, with ``qkv = LN(h) W^T + b``.

    ``norm``: the layer's LayerNorm (None: ``h`` is already normalised). ``w`` (h, k): the
    EPEG kernel, or None. Regions are attended ``chunk_tokens`` slots at a time. Official
    pads (``regions.pads_active``) are zero tokens (their projection is ``b``); in the
    default mode empty slots have q = 0 and are never keys.
    """
    ln_w, ln_b, eps = (None, None, 0.0) if norm is None else (norm.weight, norm.bias, norm.eps)
    return _RegionAttention.apply(h, ln_w, ln_b, weight, bias, w, regions, heads, chunk_tokens, eps)


class RegionAttention(nn.Module):
    """R-MSA: multi-head self-attention inside each region, with EPEG (the embedded
    position encoding of Tang et al., CVPR 2024).

    Parameters follow the reference: ``qkv`` Linear(C, 3C), ``proj`` Linear(C, C), and
    ``pe`` a depthwise (k x 1) convolution weight (heads, 1, k, 1) with a bias (heads,)
    (the bias is kept for checkpoints; it cancels in the softmax).
    """

    def __init__(self, dim: int, heads: int, epeg: bool = True, epeg_k: int = 15,
                 dropout: float = 0.1, chunk_tokens: int = CHUNK_TOKENS) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        if epeg and epeg_k % 2 == 0:
            raise ValueError(f"epeg_k must be odd (an even kernel changes the number of rows), got {epeg_k}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.heads, self.head_dim, self.chunk_tokens = heads, dim // heads, chunk_tokens
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.pe = nn.Conv2d(heads, heads, (epeg_k, 1), padding=(epeg_k // 2, 0), groups=heads) if epeg else None

    def forward(self, x: Tensor, regions: Regions, norm: nn.LayerNorm | None = None) -> Tensor:
        """x (T, C) tokens, layer-normed unless ``norm`` is given (then applied inside, without
        storing its output) -> (T, C) attention output (not residual)."""
        return self.output(self.attend(x, regions, norm))

    def attend(self, x: Tensor, regions: Regions, norm: nn.LayerNorm | None = None) -> Tensor:
        """The attention inside the regions, before the output projection: (T, C) -> (T, C)."""
        w = None if self.pe is None else self.pe.weight[:, 0, :, 0]
        return region_attention(x, norm, self.qkv.weight, self.qkv.bias, w, regions, self.heads, self.chunk_tokens)

    def add_into(self, x: Tensor, regions: Regions, norm: nn.LayerNorm | None = None, *,
                 visit: Callable[[Chunk, Tensor], None] | None = None, twice: bool = False) -> None:
        """Inference (no gradients, eval): ``x += R-MSA(LN(x))`` in place, one chunk of
        regions at a time. A chunk reads and writes only its own tokens (each token sits in
        one slot), so no token-width temporary is ever made.

        ``visit(chunk, rows)`` sees each chunk's new rows before they are written (CR-MSA
        takes its representatives there); ``twice`` writes ``x + (x + R-MSA(LN(x)))``
        instead: the encoder's shortcut added, while ``x`` still is the encoder's input."""
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        ln, eps = _norm_args(norm)
        wt, b = self.qkv.weight.to(dt), self.qkv.bias.to(dt)
        w = None if self.pe is None else self.pe.weight[:, 0, :, 0].to(dt)
        for ch in regions.chunks(min(self.chunk_tokens, STREAM_CHUNK_TOKENS)):
            rows = x.index_select(0, ch.tok)
            with torch.autocast(dev, enabled=False):
                o, _ = _attend_chunk(rows, ch, ln, wt, b, w, self.heads, regions.pads_active, eps, dt, fused=False)
            new = self.drop(self.proj(o)).to(x.dtype).add_(rows)
            if visit is not None:
                visit(ch, new)
            x.index_copy_(0, ch.tok, new.add_(rows) if twice else new)

    def output(self, o: Tensor) -> Tensor:
        """The output projection and dropout of :meth:`attend`'s result (without gradients:
        projected in place, block by block, as nothing else holds ``o``)."""
        if torch.is_grad_enabled() or not no_hooks(self.proj):
            return dropout(self.proj(o), self.drop)  # keeps a bool mask, not a float one
        for i in range(0, o.shape[0], CHUNK_TOKENS):
            o[i : i + CHUNK_TOKENS] = self.proj(o[i : i + CHUNK_TOKENS])
        return self.drop(o)
