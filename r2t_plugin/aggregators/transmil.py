"""TransMIL (Shao et al., NeurIPS 2021): Nyström self-attention + PPEG, per bag (mask-correct).

Each bag of a padded batch is processed on its real instances only (squared by repeating
its first instances, as TransMIL does), so a bag gives the same output alone and in a batch.
Landmarks are the means of ``m = min(landmarks, n)`` contiguous segments of the sequence
(no zero padding of the sequence, unlike the reference implementation).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..nn import Aggregator, projection

__all__ = ["TransMIL", "NystromAttention", "PPEG"]


def iterative_pinv(k: Tensor, iters: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``k`` (..., m, m) by the Razavi et al. iteration."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    scale = k.abs().sum(-1).amax(-1) * k.abs().sum(-2).amax(-1)
    z = k.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iters):
        kz = k @ z
        z = 0.25 * z @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nyström attention with a depthwise residual convolution on the values.

    ``forward(x (1, n, C)) -> (out (1, n, C), attn_row0 (n,))``: ``attn_row0`` is the
    head-averaged attention of token 0 (the class token) over the sequence.
    """

    def __init__(self, dim: int, heads: int = 8, landmarks: int = 256, pinv_iters: int = 6,
                 conv_kernel: int = 33, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.landmarks, self.pinv_iters = heads, landmarks, pinv_iters
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.conv = nn.Conv2d(heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0),
                              groups=heads, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, c = x.shape[1], x.shape[2]
        d = c // self.heads
        q, k, v = self.qkv(x[0]).view(n, 3, self.heads, d).permute(1, 2, 0, 3)  # each (h, n, d)
        q = q * d ** -0.5
        m = min(self.landmarks, n)
        seg = torch.div(torch.arange(n, device=x.device) * m, n, rounding_mode="floor")
        count = torch.bincount(seg, minlength=m).to(x.dtype)[None, :, None]
        q_l = q.new_zeros(self.heads, m, d).index_add_(1, seg, q) / count
        k_l = k.new_zeros(self.heads, m, d).index_add_(1, seg, k) / count
        k1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)
        k2 = iterative_pinv(torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1), self.pinv_iters)
        k3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
        out = k1 @ (k2 @ (k3 @ v)) + self.conv(v.unsqueeze(0))[0]
        row0 = (k1[:, :1] @ k2 @ k3)[:, 0].mean(0)
        return self.out(out.transpose(0, 1).reshape(1, n, c)), row0


class PPEG(nn.Module):
    """Pyramid position encoding: depthwise 7/5/3 convolutions over the squared tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: Tensor, side: int) -> Tensor:
        cls, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(1, x.shape[2], side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, landmarks: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads, landmarks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, row0 = self.attn(self.norm(x))
        return x + out, row0


class TransMIL(Aggregator):
    """Projection → [CLS] + squared bag → Nyström layer → PPEG → Nyström layer → LN → head.

    ``instance_scores``: the class token's attention over the instances in the last layer
    (B, N), copies made by the squaring summed back onto their instance.

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the projection and the transformer (divisible by ``heads``).
        heads: attention heads.
        landmarks: Nyström landmarks (default ``dim // 2``).
        act: activation of the projection.
        dropout: dropout after the projection.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, heads: int = 8,
                 landmarks: int | None = None, act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__(in_dim, n_out)
        self.proj = projection(in_dim, dim, act, dropout)
        landmarks = landmarks or max(dim // 2, 1)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = _Layer(dim, heads, landmarks)
        self.ppeg = PPEG(dim)
        self.layer2 = _Layer(dim, heads, landmarks)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_out)

    def aggregate(self, x: Tensor, mask: Tensor, **_) -> dict[str, Tensor]:
        h = self.proj(x)
        logits, scores = [], torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        for b in range(h.shape[0]):
            hb = h[b][mask[b]]
            n = hb.shape[0]
            side = math.ceil(math.sqrt(n))
            fill = torch.arange(side * side - n, device=h.device) % n
            seq = torch.cat([self.cls_token, torch.cat([hb, hb[fill]]).unsqueeze(0)], dim=1)
            seq, _ = self.layer1(seq)
            seq = self.ppeg(seq, side)
            seq, row0 = self.layer2(seq)
            logits.append(self.classifier(self.norm(seq[:, 0]))[0])
            tok = row0[1:]
            s = tok[:n].clone().index_add_(0, fill, tok[n:])
            scores[b, mask[b]] = s
        return {"logits": torch.stack(logits), "instance_scores": scores}
