"""What ``summary.md`` may count: the configured grid's rows, complete pairs, real predictions.

- :func:`grid_rows`: the rows of the configured grid only. ``results.csv`` keeps every row it
  ever got (a removed seed, fold, aggregator or variant included), but the summary averages
  exactly the grid of the config it was run with.
- :func:`missing_pairs`: the (aggregator, R²T variant, fold, seed) pairs of the grid whose
  plain or R²T run has not finished, with the reason; the paired table leaves them out.
- :func:`constant_runs`: finished runs whose test predictions are all the same up to float
  rounding (:func:`r2t_plugin.tasks.tie_ranks`): their rank metrics are 0.5 by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tasks import tie_ranks
from .config import CompareConfig
from .grid import make_grid

__all__ = ["MissingPair", "grid_rows", "missing_pairs", "constant_runs"]


def grid_rows(rows: list[dict[str, Any]], config: CompareConfig) -> list[dict[str, Any]]:
    """The rows of ``config``'s grid (aggregator ids, variant names, folds, seeds), in order."""
    want = {c.run_id for c in make_grid(config)}
    return [r for r in rows if r.get("run_id") in want]


@dataclass(frozen=True)
class MissingPair:
    """A fold x seed of one aggregator whose plain / R²T pair is incomplete, and why."""

    aggregator: str
    variant: str
    fold: int
    seed: int
    reason: str

    def __str__(self) -> str:
        return f"`{self.aggregator}` {self.variant}, fold {self.fold}, seed {self.seed}: {self.reason}"


def _state(row: dict[str, Any] | None, name: str) -> str | None:
    if row is None:
        return f"{name} not run yet"
    if row.get("status") == "failed":
        return f"{name} failed ({row.get('error') or 'see its traceback.txt'})"
    return None if row.get("status") == "ok" else f"{name} has status {row.get('status')!r}"


def missing_pairs(rows: list[dict[str, Any]], config: CompareConfig) -> list[MissingPair]:
    """Every incomplete pair of the grid: an R²T variant's run and the plain run of the same
    aggregator, fold and seed, unless both finished."""
    plain = config.plain_variant
    if plain is None:
        return []
    by_id = {r["run_id"]: r for r in rows if "run_id" in r}
    cells = {(c.aggregator.id, c.variant.name, c.fold, c.seed): c.run_id for c in make_grid(config)}
    out = []
    for (agg, var, fold, seed), run_id in cells.items():
        if var == plain.name:
            continue
        base = by_id.get(cells[(agg, plain.name, fold, seed)])
        reasons = [r for r in (_state(base, plain.name), _state(by_id.get(run_id), var)) if r]
        if reasons:
            out.append(MissingPair(agg, var, fold, seed, "; ".join(reasons)))
    return out


def _constant(rows: list[dict[str, Any]]) -> bool:
    test = [r for r in rows if r.get("part", "test") == "test"]
    columns = [k for k in (test[0] if test else {}) if k.startswith("prob_") or k == "risk"]
    if len(test) < 2 or not columns:
        return False
    return all(int(tie_ranks([float(r[k]) for r in test]).max()) == 0 for k in columns)


def constant_runs(predictions: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Run ids whose test predictions (``prob_*`` or ``risk``) are constant up to rounding."""
    return [run_id for run_id, rows in predictions.items() if _constant(rows)]
