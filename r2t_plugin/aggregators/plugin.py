"""Built-in plugin: registers the built-in aggregators through ``r2t_register_aggregators``.

Every factory is ``factory(in_dim, n_out, **options)``; ``n_out`` = number of classes, or
the number of hazard-logit bins for survival (the same head).
"""
from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from .abmil import ABMIL, GatedABMIL
from .simple import MaxMIL, MeanMIL

BUILTIN_AGGREGATORS = {
    "abmil": ABMIL,
    "gated_abmil": GatedABMIL,
    "mean": MeanMIL,
    "max": MaxMIL,
}


@hookimpl
def r2t_register_aggregators(registry: Any) -> None:
    for name, cls in BUILTIN_AGGREGATORS.items():
        registry.add(name, cls)
