"""Built-in aggregators (registered through the ``r2t_register_aggregators`` hook).

Every one subclasses :class:`r2t_plugin.nn.Aggregator` and takes ``in_dim`` and ``n_out``
first, then (where it has them) ``dim`` (projection width), ``hidden`` (attention width),
``act`` (projection activation), ``attn_act`` (attention activation) and ``dropout``.
"""
from ..nn import Aggregator
from .abmil import ABMIL, GatedABMIL
from .clam import CLAM
from .dsmil import DSMIL
from .dtfd import DTFD
from .patch_gcn import PatchGCN
from .simple import MaxMIL, MeanMIL
from .transmil import TransMIL

__all__ = ["Aggregator", "ABMIL", "GatedABMIL", "MeanMIL", "MaxMIL", "TransMIL", "DSMIL", "CLAM",
           "DTFD", "PatchGCN"]
