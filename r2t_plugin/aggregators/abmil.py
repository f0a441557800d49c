"""ABMIL and gated ABMIL (Ilse et al., ICML 2018)."""
from __future__ import annotations

from torch import Tensor, nn

from ..nn import Aggregator, AttentionPool, GatedAttentionPool, projection

__all__ = ["ABMIL", "GatedABMIL"]


class ABMIL(Aggregator):
    """Projection → attention pooling (``attn_act``, tanh in Ilse et al.) → linear head.

    Output adds ``"embedding"`` (B, dim). ``instance_scores``: attention weights (B, N).

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the instance projection (and of ``embedding``).
        hidden: width of the attention network.
        act: activation of the projection.
        attn_act: activation of the attention network.
        dropout: dropout after the projection.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, hidden: int = 128,
                 act: str = "relu", attn_act: str = "tanh", dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_out)
        self.proj = projection(in_dim, dim, act, dropout)
        self.pool = AttentionPool(dim, hidden, attn_act)
        self.classifier = nn.Linear(dim, n_out)

    def aggregate(self, x: Tensor, mask: Tensor, **_) -> dict[str, Tensor]:
        h = self.proj(x)
        pooled, weights = self.pool(h, mask)
        return {"logits": self.classifier(pooled), "instance_scores": weights, "embedding": pooled}


class GatedABMIL(Aggregator):
    """Projection → gated attention pooling → linear head (Ilse et al.'s gated variant).

    Outputs as :class:`ABMIL`.

    Args:
        in_dim, n_out, dim, act, dropout: as :class:`ABMIL`.
        hidden: width of the gated attention network (tanh ⊙ sigmoid; no ``attn_act``).
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, hidden: int = 128,
                 act: str = "relu", dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_out)
        self.proj = projection(in_dim, dim, act, dropout)
        self.pool = GatedAttentionPool(dim, hidden)
        self.classifier = nn.Linear(dim, n_out)

    def aggregate(self, x: Tensor, mask: Tensor, **_) -> dict[str, Tensor]:
        h = self.proj(x)
        pooled, weights = self.pool(h, mask)
        pooled, weights = pooled[:, 0], weights[:, 0]
        return {"logits": self.classifier(pooled), "instance_scores": weights, "embedding": pooled}
