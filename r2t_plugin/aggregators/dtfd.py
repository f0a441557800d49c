"""DTFD-MIL (Zhang et al., CVPR 2022): double-tier feature distillation over pseudo-bags.

Each bag is split into ``n_groups`` pseudo-bags (contiguous in eval mode, a random split
in training mode). Tier 1: gated attention pooling per pseudo-bag and a classifier per
pseudo-bag (its cross-entropy against the bag label is ``aux_loss`` when ``label`` is
given). Distillation: the pseudo-bag's attention-pooled feature (the paper's AFS). Tier 2:
gated attention over the pseudo-bag features and the bag classifier. ``instance_scores``:
tier-1 weight × tier-2 weight of the instance's pseudo-bag (B, N), summing to 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import Aggregator, GatedAttentionPool, projection

__all__ = ["DTFD"]


class DTFD(Aggregator):
    """Two-tier MIL with pseudo-bags; outputs add ``pseudo_logits`` (list of (G, n_out)).

    ``instance_scores`` (B, N); with ``label`` (B,): ``aux_loss`` (the pseudo-bag loss).

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the instance projection.
        hidden: width of both gated attention networks.
        n_groups: pseudo-bags G per bag (fewer for bags of fewer instances).
        act: activation of the projection.
        dropout: dropout after the projection.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, hidden: int = 128,
                 n_groups: int = 4, act: str = "relu", dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_out)
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        self.n_groups = n_groups
        self.proj = projection(in_dim, dim, act, dropout)
        self.tier1_pool = GatedAttentionPool(dim, hidden)
        self.tier1_classifier = nn.Linear(dim, n_out)
        self.tier2_pool = GatedAttentionPool(dim, hidden)
        self.classifier = nn.Linear(dim, n_out)

    def aggregate(self, x: Tensor, mask: Tensor, *, label: Tensor | None = None, **_) -> dict[str, Tensor]:
        h = self.proj(x)
        logits, pseudo_logits, aux = [], [], []
        scores = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        for b in range(h.shape[0]):
            idx = torch.nonzero(mask[b]).flatten()
            if self.training:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)]
            groups = torch.tensor_split(idx, min(self.n_groups, idx.numel()))
            pooled, weights = zip(*(self.tier1_pool(h[b, g].unsqueeze(0)) for g in groups))
            pseudo = torch.cat([p[:, 0] for p in pooled])  # (G, C)
            pl = self.tier1_classifier(pseudo)
            bag, w2 = self.tier2_pool(pseudo.unsqueeze(0))
            logits.append(self.classifier(bag[0, 0]))
            pseudo_logits.append(pl)
            for gi, (g, w) in enumerate(zip(groups, weights)):
                scores[b, g] = w[0, 0] * w2[0, 0, gi]
            if label is not None:
                aux.append(F.cross_entropy(pl, label[b].expand(pl.shape[0])))
        out = {"logits": torch.stack(logits), "instance_scores": scores, "pseudo_logits": pseudo_logits}
        if label is not None:
            out["aux_loss"] = torch.stack(aux).mean()
        return out
