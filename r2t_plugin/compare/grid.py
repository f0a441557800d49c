"""The grid of a comparison: aggregator x variant x fold x seed, in a fixed order."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..io import safe_name
from .config import AggregatorConfig, CompareConfig, VariantConfig
from .variants import ablation_base, ablation_variants

__all__ = ["Cell", "make_grid", "resolve_variants"]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    aggregator: AggregatorConfig
    variant: VariantConfig
    fold: int
    seed: int

    @property
    def run_id(self) -> str:
        """A file-name-safe id, unique within the grid."""
        a = safe_name(self.aggregator.id)
        v = safe_name(self.variant.name)
        return f"{a}__{v}__fold{self.fold}__seed{self.seed}"

    def key(self) -> dict[str, Any]:
        """The key columns of this run's results row."""
        return {"run_id": self.run_id, "aggregator": self.aggregator.id, "variant": self.variant.name,
                "fold": self.fold, "seed": self.seed}


def make_grid(config: CompareConfig) -> list[Cell]:
    """Every run: for each seed, fold, aggregator, variant (plain and +R²T side by side).

    Seeds outermost so that a partial grid already holds complete, paired folds.
    """
    cells = [Cell(a, v, f, s) for s in config.seeds for f in range(config.folds)
             for a in config.aggregators for v in config.variants]
    ids = [c.run_id for c in cells]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"aggregator ids / variant names collide once made file-name safe: {dup[:5]}")
    return cells


def resolve_variants(config: CompareConfig, has_coords: bool) -> CompareConfig:
    """``config`` for its cohort: ``variants: ablation`` is parsed for bags without
    coordinates (sequence layout); bags with them get the coords layout too."""
    base = ablation_base(config.raw.get("variants"))
    if base is None or not has_coords:
        return config
    variants = tuple(VariantConfig(n, r) for n, r in ablation_variants(base, coords=True))
    return dataclasses.replace(config, variants=variants)
