"""Built-in plugin: registers the built-in aggregators through ``r2t_register_aggregators``.

Every factory is ``factory(in_dim, n_out, **options)``; ``n_out`` = number of classes, or
the number of hazard-logit bins for survival (the same head).
"""
from __future__ import annotations

from functools import partial

from ..hookspecs import Registrar, hookimpl
from .abmil import ABMIL, GatedABMIL
from .clam import CLAM
from .dsmil import DSMIL
from .dtfd import DTFD
from .patch_gcn import PatchGCN
from .simple import MaxMIL, MeanMIL
from .transmil import TransMIL

BUILTIN_AGGREGATORS = {
    "abmil": ABMIL,
    "gated_abmil": GatedABMIL,
    "mean": MeanMIL,
    "max": MaxMIL,
    "transmil": TransMIL,
    "dsmil": DSMIL,
    "clam_sb": partial(CLAM, multi_branch=False),
    "clam_mb": partial(CLAM, multi_branch=True),
    "dtfd": DTFD,
    "patch_gcn": PatchGCN,
}


@hookimpl
def r2t_register_aggregators(registry: Registrar) -> None:
    """Every aggregator of :data:`BUILTIN_AGGREGATORS` under its name."""
    for name, cls in BUILTIN_AGGREGATORS.items():
        registry.add(name, cls)
