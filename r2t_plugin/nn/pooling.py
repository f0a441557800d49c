"""Attention pooling (Ilse et al., 2018), shared by the ABMIL-style aggregators and R2TABMIL."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .activation import make_activation

__all__ = ["AttentionPool", "GatedAttentionPool", "masked_softmax"]


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` with positions where ``mask`` is False given zero weight."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask.to(scores.dtype)


class AttentionPool(nn.Module):
    """``a = w2 · act(W1 h)`` (no biases, as the R²T reference), softmax over instances.

    ``forward(h (B, N, C), mask (B, N) | None) -> (pooled (B, C), weights (B, N))``.
    """

    def __init__(self, dim: int, hidden: int = 128, act: str = "tanh") -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden, bias=False), make_activation(act),
                                       nn.Linear(hidden, 1, bias=False))

    def forward(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        scores = self.attention(h).squeeze(-1)
        weights = masked_softmax(scores, mask)
        return (weights.unsqueeze(1) @ h).squeeze(1), weights


class GatedAttentionPool(nn.Module):
    """Gated attention (Ilse et al., 2018): ``a = w · (tanh(V h) ⊙ sigmoid(U h))``.

    ``forward(h (B, N, C), mask) -> (pooled (B, n_branches, C), weights (B, n_branches, N))``;
    one softmax per branch (``n_branches`` > 1 for multi-branch models such as CLAM-MB).
    """

    def __init__(self, dim: int, hidden: int = 128, n_branches: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, n_branches)

    def scores(self, h: Tensor) -> Tensor:
        """Raw attention logits (B, n_branches, N)."""
        return self.score(self.value(h) * self.gate(h)).transpose(1, 2)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = masked_softmax(self.scores(h), None if mask is None else mask.unsqueeze(1))
        return weights @ h, weights
