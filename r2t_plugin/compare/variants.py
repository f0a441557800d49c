"""``variants: ablation``: R²T's ablation (Tang et al., CVPR 2024, Table 5) for any cohort.

Paired against the plain aggregator: full R²T, R-MSA only (no CR-MSA), R²T without EPEG
and, where the bags have patch coordinates, the full R²T in the paper's sequence layout
beside the coords one (which then is the layout of the other R²T variants).
"""
from __future__ import annotations

from typing import Any

__all__ = ["ABLATION", "ABLATION_KEYS", "ablation_base", "ablation_variants"]

ABLATION = "ablation"
# what the ablation sets itself (not allowed among the shared options)
ABLATION_KEYS = ("layout", "crmsa", "epeg")


def ablation_variants(base: dict[str, Any] | None = None, coords: bool = False
                      ) -> list[tuple[str, dict[str, Any] | None]]:
    """``[(variant name, R²T options or None for plain)]``; ``base``: options they share
    (``residual`` defaults to True, as in the default variants: each starts as the plain model)."""
    full = {"residual": True, **(base or {}), "layout": "coords" if coords else "sequence"}
    out: list[tuple[str, dict[str, Any] | None]] = [
        ("plain", None), ("r2t", full), ("r2t_rmsa_only", {**full, "crmsa": False}),
        ("r2t_no_epeg", {**full, "epeg": False})]
    if coords:
        out.append(("r2t_sequence", {**full, "layout": "sequence"}))
    return out


def ablation_base(raw: Any) -> Any:
    """The shared options of ``variants: ablation`` (``{}``) or ``{ablation: {...}}`` as
    written (validated by the config); None for any other ``variants`` value."""
    if raw == ABLATION:
        return {}
    if isinstance(raw, dict) and list(raw) == [ABLATION]:
        return {} if raw[ABLATION] is None else raw[ABLATION]
    return None
