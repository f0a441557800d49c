"""Built-in aggregators (registered through the ``r2t_register_aggregators`` hook)."""
from ..nn import AttentionPool, GatedAttentionPool, masked_softmax
from .abmil import ABMIL, GatedABMIL
from .base import Aggregator
from .clam import CLAM, CLAMInterface
from .dsmil import DSMIL
from .dtfd import DTFD
from .patch_gcn import PatchGCN
from .simple import MaxMIL, MeanMIL
from .transmil import TransMIL

__all__ = ["Aggregator", "ABMIL", "GatedABMIL", "MeanMIL", "MaxMIL", "TransMIL", "DSMIL", "CLAM",
           "CLAMInterface", "DTFD", "PatchGCN", "AttentionPool", "GatedAttentionPool", "masked_softmax"]
