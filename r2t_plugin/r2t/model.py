"""R²T-MIL (Tang et al., CVPR 2024): the R²T stage + ABMIL + a linear classifier."""
from __future__ import annotations

from torch import Tensor, nn

from ..nn import AttentionPool
from ..bag import BagBatch
from .stage import R2T

__all__ = ["R2TABMIL"]


class R2TABMIL(nn.Module):
    """The paper's R²T-MIL.

    ``forward(x, mask=None, coords=None, patch_size=None) -> {"logits": (B, n_classes),
    "instance_scores": (B, N), "embedding": (B, dim)}``; ``x`` a (B, N, D) / (N, D) tensor
    or a :class:`BagBatch`. ``instance_scores`` are the ABMIL attention weights (softmax
    over the bag's real instances). ``abmil_act``: tanh in every published run.
    Stage options (``region_num``, ``layout``, ``mode``, ...) pass through to :class:`R2T`.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, dim: int = 512, *,
                 abmil_act: str = "relu", abmil_hidden: int = 128, **stage_options) -> None:
        super().__init__()
        self.stage = R2T(in_dim, dim, **stage_options)
        self.pool = AttentionPool(dim, abmil_hidden, abmil_act)
        self.classifier = nn.Linear(dim, n_classes)
        self.n_classes = n_classes
        for m in [*self.pool.modules(), self.classifier]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def official(cls, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, **options) -> "R2TABMIL":
        """R²T-MIL with the stage in the reference's exact mode."""
        options.pop("min_region_tokens", None)
        return cls(in_dim, n_classes, dim, mode="official", **options)

    def forward(self, x: Tensor | BagBatch, mask: Tensor | None = None,
                coords: Tensor | None = None, patch_size=None, label: Tensor | None = None
                ) -> dict[str, Tensor]:
        """``label`` is accepted for the aggregator contract and unused (no auxiliary loss)."""
        if isinstance(x, BagBatch):
            x, mask, coords, patch_size = x.features, x.mask, x.coords, x.patch_size
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
            coords = None if coords is None else coords.unsqueeze(0)
        h = self.stage(x, mask=mask, coords=coords, patch_size=patch_size)
        pooled, weights = self.pool(h, mask)
        return {"logits": self.classifier(pooled), "instance_scores": weights, "embedding": pooled}
