"""CLAM-SB and CLAM-MB (Lu et al., Nature BME 2021), with the instance-clustering loss.

:class:`CLAM` follows the aggregator contract; models called the way CLAM's own code calls
them (``forward(h, label=None, instance_eval=False, ...)``) are wrapped by the ``r2t_clam``
adapter instead.

Instance clustering (needs the bag label): for the true class, the ``k_sample`` instances
with the highest attention (of that class's branch) are positives and the ``k_sample``
lowest are negatives for that class's instance classifier; with ``subtyping=True`` the
other classes' top-attended instances are negatives for them. ``k`` shrinks to half the bag
for small bags. ``aux_loss = aux_weight × instance loss`` (CLAM weighs bag : instance
losses 0.7 : 0.3, hence ``aux_weight = 0.3 / 0.7``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import Aggregator, masked_softmax

__all__ = ["CLAM"]


class _GatedScores(nn.Module):
    """Gated attention network returning ``(A_raw (B, N, K), h)`` as CLAM's does."""

    def __init__(self, dim: int, hidden: int, n_branches: int, dropout: float) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.c = nn.Linear(hidden, n_branches)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.c(self.a(h) * self.b(h)), h


class CLAM(Aggregator):
    """CLAM: projection + gated attention; single branch (SB) or one branch per class (MB).

    Output: ``logits`` (B, n_out), ``instance_scores`` (B, N) for SB or (B, n_out, N) for
    MB, ``attention_raw`` (B, branches, N) before the softmax, ``embedding``; with
    ``label`` (B,): ``instance_loss`` and ``aux_loss``.

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of classes; ``logits`` (B, n_out).
        dim: width of the instance projection (``attention_net[0]``).
        hidden: width of the gated attention network.
        multi_branch: one attention branch and bag classifier per class (CLAM-MB).
        dropout: dropout after the projection and inside the attention network.
        k_sample: instances taken as positives / negatives for the instance loss.
        subtyping: the other classes' top instances are negatives for their classifiers.
        aux_weight: weight of the instance loss in ``aux_loss``.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, hidden: int = 256,
                 multi_branch: bool = False, dropout: float = 0.25, k_sample: int = 8,
                 subtyping: bool = False, aux_weight: float = 0.3 / 0.7) -> None:
        super().__init__(in_dim, n_out)
        self.multi_branch, self.k_sample, self.subtyping, self.aux_weight = multi_branch, k_sample, subtyping, aux_weight
        branches = n_out if multi_branch else 1
        self.attention_net = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                           _GatedScores(dim, hidden, branches, dropout))
        if multi_branch:
            self.classifiers = nn.ModuleList(nn.Linear(dim, 1) for _ in range(n_out))
        else:
            self.classifiers = nn.Linear(dim, n_out)
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(n_out))

    def aggregate(self, x: Tensor, mask: Tensor, *, label: Tensor | None = None, **_) -> dict[str, Tensor]:
        a_raw, h = self.attention_net(x)
        a_raw = a_raw.transpose(1, 2)  # (B, K, N)
        weights = masked_softmax(a_raw, mask.unsqueeze(1))
        m = weights @ h  # (B, K, C)
        if self.multi_branch:
            logits = torch.cat([clf(m[:, c]) for c, clf in enumerate(self.classifiers)], dim=1)
        else:
            logits = self.classifiers(m[:, 0])
        out = {"logits": logits, "instance_scores": weights if self.multi_branch else weights[:, 0],
               "attention_raw": a_raw, "embedding": m if self.multi_branch else m[:, 0]}
        if label is not None:
            loss = torch.stack([self._instance_loss(h[b][mask[b]], a_raw[b][:, mask[b]], int(label[b]))
                                for b in range(h.shape[0])]).mean()
            out["instance_loss"] = loss
            out["aux_loss"] = self.aux_weight * loss
        return out

    def _instance_loss(self, h: Tensor, a_raw: Tensor, label: int) -> Tensor:
        if not 0 <= label < self.n_out:
            raise ValueError(f"label {label} out of range for {self.n_out} classes")
        k = min(self.k_sample, h.shape[0] // 2)
        losses = []
        if k > 0:
            for c, clf in enumerate(self.instance_classifiers):
                a = a_raw[c if self.multi_branch else 0]
                top = torch.topk(a, k).indices
                if c == label:
                    bottom = torch.topk(-a, k).indices
                    feats = torch.cat([h[top], h[bottom]])
                    target = torch.cat([torch.ones(k, dtype=torch.long, device=h.device),
                                        torch.zeros(k, dtype=torch.long, device=h.device)])
                elif self.subtyping:
                    feats, target = h[top], torch.zeros(k, dtype=torch.long, device=h.device)
                else:
                    continue
                losses.append(F.cross_entropy(clf(feats), target))
        return torch.stack(losses).mean() if losses else h.sum() * 0.0
