"""Built-in aggregators (registered through the ``r2t_register_aggregators`` hook)."""
from .abmil import ABMIL, GatedABMIL
from .base import Aggregator
from .pooling import AttentionPool, GatedAttentionPool, masked_softmax
from .simple import MaxMIL, MeanMIL

__all__ = ["Aggregator", "ABMIL", "GatedABMIL", "MeanMIL", "MaxMIL", "AttentionPool",
           "GatedAttentionPool", "masked_softmax"]
