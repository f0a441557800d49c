"""Mean and max pooling MIL over instance logits."""
from __future__ import annotations

from torch import Tensor, nn

from ..nn import Aggregator, projection

__all__ = ["MeanMIL", "MaxMIL"]


class _InstanceLogits(Aggregator):
    """Projection → per-instance linear head; subclasses pool the instance logits.

    Args:
        in_dim: width D of the instance features (B, N, D).
        n_out: number of outputs; ``logits`` (B, n_out).
        dim: width of the instance projection.
        act: activation of the projection.
        dropout: dropout after the projection.
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, act: str = "relu",
                 dropout: float = 0.25) -> None:
        super().__init__(in_dim, n_out)
        self.proj = projection(in_dim, dim, act, dropout)
        self.classifier = nn.Linear(dim, n_out)

    def instance_logits(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, n_out, N) per-instance logits, zero at padded positions."""
        s = self.classifier(self.proj(x)).transpose(1, 2)
        return s * mask.unsqueeze(1).to(s.dtype)


class MeanMIL(_InstanceLogits):
    """Bag logits = mean of the instance logits (= the head on the mean embedding).

    ``instance_scores``: per-instance logits, one row per output (B, n_out, N).
    Arguments as :class:`_InstanceLogits`: ``in_dim``, ``n_out``, ``dim``, ``act``, ``dropout``.
    """

    def aggregate(self, x: Tensor, mask: Tensor, **_) -> dict[str, Tensor]:
        s = self.instance_logits(x, mask)
        n = mask.sum(dim=1, keepdim=True).to(s.dtype)
        return {"logits": s.sum(dim=2) / n, "instance_scores": s}


class MaxMIL(_InstanceLogits):
    """Bag logits = per-output max of the instance logits over the real instances.

    ``instance_scores``: per-instance logits, one row per output (B, n_out, N).
    Arguments as :class:`_InstanceLogits`: ``in_dim``, ``n_out``, ``dim``, ``act``, ``dropout``.
    """

    def aggregate(self, x: Tensor, mask: Tensor, **_) -> dict[str, Tensor]:
        s = self.instance_logits(x, mask)
        logits = s.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=2)
        return {"logits": logits, "instance_scores": s}
