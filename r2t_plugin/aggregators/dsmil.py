"""DSMIL (Li et al., CVPR 2021): max-instance stream + critical-instance attention stream."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..nn import Aggregator, masked_softmax, projection

__all__ = ["DSMIL"]


class DSMIL(Aggregator):
    """Dual-stream MIL.

    Stream 1: an instance classifier, bag score = max over instances. Stream 2: per class,
    attention of every instance to that class's critical (top-scoring) instance in query
    space, bag embedding per class, a per-class 1-D convolution to the bag score.
    ``logits`` = mean of the two streams (also returned as ``"bag_logits"`` and
    ``"max_instance_logits"``); ``instance_scores``: attention per class (B, n_out, N).

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the instance projection.
        hidden: width of the query network.
        act: activation of the projection.
        dropout: dropout after the projection.
        value_dropout: dropout ahead of the value network.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, hidden: int = 128,
                 act: str = "relu", dropout: float = 0.25, value_dropout: float = 0.0) -> None:
        super().__init__(in_dim, n_out)
        self.proj = projection(in_dim, dim, act, dropout)
        self.instance_classifier = nn.Linear(dim, n_out)
        self.query = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.Tanh())
        self.value = nn.Sequential(nn.Dropout(value_dropout), nn.Linear(dim, dim), nn.ReLU())
        self.fcc = nn.Conv1d(n_out, n_out, kernel_size=dim)

    def aggregate(self, x: Tensor, mask: Tensor, **_) -> dict[str, Tensor]:
        h = self.proj(x)  # (B, N, C)
        inst = self.instance_classifier(h).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, N, K)
        max_logits, critical = inst.max(dim=1)  # (B, K)
        q = self.query(h)  # (B, N, H)
        q_crit = torch.gather(q, 1, critical.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # (B, K, H)
        attn = masked_softmax(q_crit @ q.transpose(1, 2) / math.sqrt(q.shape[-1]), mask.unsqueeze(1))
        bag = attn @ self.value(h)  # (B, K, C)
        bag_logits = self.fcc(bag).squeeze(-1)  # (B, K)
        return {"logits": 0.5 * (bag_logits + max_logits), "instance_scores": attn,
                "bag_logits": bag_logits, "max_instance_logits": max_logits}
