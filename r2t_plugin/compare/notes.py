"""Plain-language notes at the end of ``summary.md``: how big the stage is next to its
aggregator, runs that memorised, and one closing sentence on the paired difference."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .config import CompareConfig
from .results import with_status

__all__ = ["CHANCE", "stage_size_lines", "memorising", "memorisation_lines", "bottom_line"]

# the validation score of a model that knows nothing
CHANCE = {"auc": 0.5, "c_index": 0.5}
# memorising: the last epoch's training loss at most this fraction of the first epoch's ...
LOSS_DROP = 0.2
# ... while the selected (best) validation score stays within this margin of chance
NEAR_CHANCE = 0.1


def _mean_by(rows: list[dict[str, Any]], column: str) -> dict[tuple[str, str], float]:
    frame = pd.DataFrame(with_status(rows), columns=["aggregator", "variant", column])
    values = pd.to_numeric(frame[column], errors="coerce")
    return values.groupby([frame["aggregator"], frame["variant"]]).mean().dropna().to_dict()


def stage_size_lines(rows: list[dict[str, Any]], config: CompareConfig) -> list[str]:
    """One line per aggregator x R²T variant: the parameters R²T adds, as a ratio of the
    plain aggregator's."""
    plain = config.plain_variant
    params = _mean_by(rows, "params")
    lines = []
    for agg in config.aggregators:
        base = params.get((agg.id, plain.name)) if plain else None
        for var in config.variants:
            total = params.get((agg.id, var.name))
            if var.is_plain or not base or total is None:
                continue
            lines.append(f"- {agg.id} + {var.name}: the stage adds {total - base:,.0f} parameters, "
                         f"{(total - base) / base:.2f} x the aggregator's {base:,.0f}")
    return lines


def memorising(row: dict[str, Any], monitor: str) -> bool:
    """Whether a finished run fitted its training bags (loss down to ``LOSS_DROP`` of the
    first epoch's) while its best validation score stayed near chance."""
    chance = CHANCE.get(monitor)
    try:
        first, last = float(row["train_loss_first"]), float(row["train_loss_last"])
        val = float(row[f"val_{monitor}"])
    except (KeyError, TypeError, ValueError):
        return False
    if chance is None or not all(map(math.isfinite, (first, last, val))) or first <= 0:
        return False
    return last <= LOSS_DROP * first and val <= chance + NEAR_CHANCE


def memorisation_lines(rows: list[dict[str, Any]], config: CompareConfig, monitor: str | None) -> list[str]:
    """A warning per aggregator x variant with memorising runs (empty when there are none)."""
    if monitor not in CHANCE:
        return []
    lines = []
    ok = with_status(rows)
    for agg in config.aggregators:
        for var in config.variants:
            mine = [r for r in ok if r["aggregator"] == agg.id and r["variant"] == var.name]
            n = sum(memorising(r, monitor) for r in mine)
            if n:
                lines.append(f"- {agg.id} ({var.name}): in {n} of {len(mine)} runs the training loss fell to "
                             f"≤ {LOSS_DROP:.0%} of its first epoch while the best validation {monitor} stayed "
                             f"≤ {CHANCE[monitor] + NEAR_CHANCE:.2f} (chance {CHANCE[monitor]:.2f})")
    if not lines:
        return []
    return ["**Memorisation warning**: the runs below learned their training bags, not the task, so "
            "their test numbers say nothing about R²T; where most runs of the plain variant memorise "
            "too, nothing learns this cohort with these settings (more data, fewer parameters, "
            "stronger regularisation).", "", *lines]


def bottom_line(diffs: list[Any], config: CompareConfig, metric: str) -> str:
    """One sentence: what was compared, the paired difference on ``metric``, what it means."""
    plain = config.plain_variant
    mine = [d for d in diffs if d.metric == metric and d.n]
    if plain is None or not mine:
        return ""
    name = metric.removeprefix("test_")
    many = len(config.variants) > 2
    parts = [f"{d.mean:+.3f} for {d.aggregator}{f' ({d.variant})' if many else ''} (better in {d.wins} "
             f"of {d.n} paired runs, p = {d.p_value:.2g})" for d in mine]
    won = [d.mean > 0 and d.p_value < 0.05 for d in mine]
    if all(won):
        meaning = "R²T helped beyond what chance explains"
    elif any(won):
        meaning = "R²T helped beyond chance where p < 0.05, elsewhere the difference is within chance"
    elif all(d.mean > 0 for d in mine):
        meaning = "gains, but too few or too noisy pairs to tell them from chance"
    elif any(d.mean > 0 for d in mine):
        meaning = "mixed, and no difference beyond chance"
    else:
        meaning = "R²T did not help on this cohort"
    return (f"**In one sentence:** with R²T in front, trained and tested on the same splits and seeds as "
            f"the {plain.name} model, the test {name} changed by " + ", ".join(parts) + f": {meaning}.")
