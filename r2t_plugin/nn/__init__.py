"""Building blocks shared by the R²T stage and the aggregators.

Kept below both (see ``docs/architecture.md``), so that ``r2t/`` never imports
``aggregators/`` and the other way round.
"""
from .activation import make_activation
from .aggregator import Aggregator
from .pooling import AttentionPool, GatedAttentionPool, masked_softmax
from .projection import projection

__all__ = ["Aggregator", "make_activation", "projection", "AttentionPool", "GatedAttentionPool", "masked_softmax"]
