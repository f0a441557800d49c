"""R²T-MIL (Tang et al., CVPR 2024): the R²T stage + ABMIL + a linear classifier."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..nn import Aggregator, AttentionPool
from .stage import R2T

__all__ = ["R2TABMIL"]


class R2TABMIL(Aggregator):
    """The paper's R²T-MIL, under the aggregator contract.

    ``forward(x, mask=None, coords=None, patch_size=None) -> {"logits": (B, n_out),
    "instance_scores": (B, N), "embedding": (B, dim)}``; ``x`` a (B, N, D) / (N, D) tensor
    or a :class:`~r2t_plugin.bag.BagBatch`. ``instance_scores`` are the ABMIL attention
    weights (softmax over the bag's real instances). ``label`` is accepted and unused (no
    auxiliary loss).

    Args:
        in_dim: width D of the instance features (B, N, D); the stage projects them to ``dim``.
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the stage and of ``embedding``.
        attn_act: activation of the ABMIL attention (tanh in every published run).
        hidden: width of the ABMIL attention network.
        **stage_options: passed to :class:`R2T` (``region_num``, ``layout``, ``mode``, ...).
    """

    def __init__(self, in_dim: int, n_out: int = 2, dim: int = 512, *,
                 attn_act: str = "relu", hidden: int = 128, **stage_options: Any) -> None:
        super().__init__(in_dim, n_out)
        self.stage = R2T(in_dim, dim, **stage_options)
        self.pool = AttentionPool(dim, hidden, attn_act)
        self.classifier = nn.Linear(dim, n_out)
        for m in [*self.pool.modules(), self.classifier]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def official(cls, in_dim: int = 1024, n_out: int = 2, dim: int = 512, **options: Any) -> "R2TABMIL":
        """R²T-MIL with the stage in the reference's exact mode."""
        options.pop("min_region_tokens", None)
        return cls(in_dim, n_out, dim, mode="official", **options)

    def aggregate(self, x: Tensor, mask: Tensor, *, coords: Tensor | None = None,
                  patch_size: Tensor | None = None, padded: bool = True, **_: Any) -> dict[str, Tensor]:
        # without a caller's mask the stage knows every bag's length without reading the device
        h = self.stage(x, mask=mask if padded else None, coords=coords, patch_size=patch_size)
        pooled, weights = self.pool(h, mask)
        return {"logits": self.classifier(pooled), "instance_scores": weights, "embedding": pooled}
