"""``summary.md``: mean ± std per aggregator x variant, and the paired +R²T − plain test."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .config import CompareConfig
from .integrity import constant_runs, grid_rows, missing_pairs
from .notes import bottom_line, memorisation_lines, stage_size_lines
from .results import metric_columns, with_status

__all__ = ["PairedDiff", "paired_differences", "summarize", "format_summary", "mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values (std 0 for one value, NaN for none)."""
    v = pd.Series(values, dtype=float).replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _frame(rows: list[dict[str, Any]], columns: Sequence[str], config: CompareConfig) -> pd.DataFrame:
    """The finished runs of ``config``'s grid: their keys, and ``columns`` as numbers
    (non-finite or absent: NaN)."""
    frame = pd.DataFrame(with_status(grid_rows(rows, config)), columns=["aggregator", "variant", "fold", "seed", *columns])
    frame[list(columns)] = frame[list(columns)].apply(pd.to_numeric).replace([np.inf, -np.inf], np.nan)
    return frame


@dataclass(frozen=True)
class PairedDiff:
    """+R²T − plain on one metric, paired over (fold, seed)."""

    aggregator: str
    variant: str
    metric: str
    n: int
    mean: float
    std: float
    wins: int
    ties: int
    losses: int
    p_value: float


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0, NaN for none)."""
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(d).pvalue)


def paired_differences(rows: list[dict[str, Any]], config: CompareConfig, metrics: Sequence[str]) -> list[PairedDiff]:
    """For each aggregator and each R²T variant: paired differences to the plain variant,
    over the complete pairs (both runs of a fold x seed finished) of the configured grid."""
    plain = config.plain_variant
    if plain is None:
        return []
    frame = _frame(rows, metrics, config)
    # (aggregator, seed, fold) x variant, one table per metric
    wide = {m: frame.pivot(index=["aggregator", "seed", "fold"], columns="variant", values=m) for m in metrics}
    out = []
    for agg in config.aggregators:
        for var in config.variants:
            if var.is_plain:
                continue
            for metric in metrics:
                pairs = wide[metric].reindex(columns=[var.name, plain.name])
                d = (pairs[var.name] - pairs[plain.name]).dropna()
                d = d[d.index.get_level_values("aggregator") == agg.id].to_numpy()
                m, s, n = mean_std(d)
                out.append(PairedDiff(agg.id, var.name, metric, n, m, s, int((d > 0).sum()), int((d == 0).sum()),
                                      int((d < 0).sum()), wilcoxon_p(d)))
    return out


def summarize(rows: list[dict[str, Any]], config: CompareConfig, split: str = "test") -> list[dict[str, Any]]:
    """Per aggregator x variant: ``{metric: (mean, std, n)}`` over the finished runs of the
    configured grid (other rows of ``results.csv`` are not counted)."""
    ok = with_status(rows)
    metrics = [m for m in metric_columns({k for r in ok for k in r}, split) if not m.endswith("_loss")]
    columns = [*metrics, "seconds", "params", "epochs"]
    groups = _frame(rows, columns, config).groupby(["aggregator", "variant"])
    stats = {c: groups[c].apply(mean_std) for c in columns}
    runs = groups.size()
    return [{"aggregator": a.id, "variant": v.name, "runs": int(runs.get((a.id, v.name), 0)),
             **{c: stats[c].get((a.id, v.name), mean_std([])) for c in columns}}
            for a in config.aggregators for v in config.variants]


def _fmt(ms: tuple[float, float, int], digits: int = 3) -> str:
    m, s, n = ms
    return "–" if n == 0 else f"{m:.{digits}f} ± {s:.{digits}f}"


def _p(p: float) -> str:
    return "–" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _counts_line(counts: dict[str, int], task: str) -> str:
    if task == "survival":
        return f"Cases: {counts.get('event', 0)} with an event, {counts.get('censored', 0)} censored."
    return "Cases per class: " + ", ".join(f"`{c}` {n}" for c, n in counts.items()) + "."


def format_summary(rows: list[dict[str, Any]], config: CompareConfig, *, title: str | None = None,
                   monitor: str | None = None, n_cases: int | None = None,
                   target_counts: dict[str, int] | None = None,
                   predictions: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """The markdown of ``summary.md``: exactly the configured grid's runs (``results.csv``
    may hold more); ``target_counts``: cases per class (or event / censored);
    ``predictions``: each finished run's rows, to flag constant predictions."""
    outside = len(with_status(rows)) - len(with_status(grid_rows(rows, config)))
    rows = grid_rows(rows, config)
    ok, failed = with_status(rows), with_status(rows, "failed")
    total = len(config.aggregators) * len(config.variants) * config.folds * len(config.seeds)
    parts = [f"# {title or 'r2t compare'}", ""]
    cohort = config.cohort
    parts.append(f"Cohort `{cohort.csv.name}` ({cohort.task}"
                 + (f", {n_cases} cases" if n_cases is not None else "") + f"); {config.folds} folds x "
                 f"{len(config.seeds)} seed(s) {list(config.seeds)}; {len(ok)} of {total} runs finished, "
                 f"{len(failed)} failed.")
    if target_counts:
        parts.append(_counts_line(target_counts, cohort.task))
    if outside:
        parts.append(f"{outside} other finished run(s) in `results.csv` are outside this grid (a seed, fold, "
                     "aggregator or variant no longer configured) and are not counted.")
    parts.append(f"Patient-level splits (`splits/`), validation carved from each training part; "
                 f"checkpoint chosen on validation{f' {monitor}' if monitor else ''}; test evaluated once per run.")
    parts.append("")
    test = summarize(rows, config, "test")
    metrics = [m for m in test[0] if m.startswith("test_")] if test else []
    if monitor and f"test_{monitor}" in metrics:  # the selection metric first
        metrics.remove(f"test_{monitor}")
        metrics.insert(0, f"test_{monitor}")
    parts += ["## Test metrics (mean ± std over folds x seeds)", ""]
    parts.append(_table(["aggregator", "variant", "runs", *[m[5:] for m in metrics]],
                        [[e["aggregator"], e["variant"], str(e["runs"]), *[_fmt(e[m]) for m in metrics]]
                         for e in test]))
    plain = config.plain_variant
    diffs = paired_differences(rows, config, metrics)
    if diffs:
        parts += ["", f"## +R²T − {plain.name} (paired over folds x seeds; Wilcoxon signed-rank, two-sided)", ""]
        lines = []
        for agg in config.aggregators:
            for var in config.variants:
                if var.is_plain:
                    continue
                mine = {d.metric: d for d in diffs if d.aggregator == agg.id and d.variant == var.name}
                cells = [f"{mine[m].mean:+.3f} ± {mine[m].std:.3f} (p={_p(mine[m].p_value)})"
                         if mine[m].n else "–" for m in metrics]
                first = mine[metrics[0]] if metrics else None
                wl = f"{first.wins}/{first.ties}/{first.losses}" if first and first.n else "–"
                lines.append([agg.id, var.name, str(first.n if first else 0), wl, *cells])
        parts.append(_table(["aggregator", "variant", "pairs", f"wins/ties/losses ({metrics[0][5:]})" if metrics else "w/t/l",
                             *[f"Δ {m[5:]}" for m in metrics]], lines))
        n_pairs = max((d.n for d in diffs), default=0)
        if n_pairs and n_pairs < 6:
            parts += ["", f"With {n_pairs} pairs the two-sided Wilcoxon test cannot reach p < 0.05 "
                          f"(smallest possible p = {2 / 2 ** n_pairs:.3f})."]
        if gaps := missing_pairs(rows, config):
            parts += ["", f"Pairs left out ({len(gaps)}; only complete pairs are compared):", ""]
            parts += [f"- {g}" for g in gaps[:20]] + ([f"- ... and {len(gaps) - 20} more"] if len(gaps) > 20 else [])
    if constant := [r for r in constant_runs(predictions or {}) if r in {x["run_id"] for x in ok}]:
        parts += ["", f"Constant predictions ({len(constant)} run(s)): every test case got the same score up to "
                      "float rounding, so these runs' rank metrics are 0.5 by construction (nothing was learnt):", ""]
        parts += [f"- `{r}`" for r in constant]
    val = summarize(rows, config, "val")
    vmetrics = [m.replace("test_", "val_", 1) for m in metrics if m.replace("test_", "val_", 1) in (val[0] if val else {})]
    if vmetrics:
        parts += ["", "## Validation metrics at the selected epoch (mean ± std)", ""]
        parts.append(_table(["aggregator", "variant", *[m[4:] for m in vmetrics]],
                            [[e["aggregator"], e["variant"], *[_fmt(e[m]) for m in vmetrics]] for e in val]))
    parts += ["", "## Cost (mean ± std per run)", ""]
    parts.append(_table(["aggregator", "variant", "parameters", "epochs", "seconds"],
                        [[e["aggregator"], e["variant"], _fmt(e["params"], 0), _fmt(e["epochs"], 1),
                          _fmt(e["seconds"], 1)] for e in test]))
    if sizes := stage_size_lines(rows, config):
        parts += ["", "R²T's share of the parameters (stage / plain aggregator):", "", *sizes]
    if warning := memorisation_lines(rows, config, monitor):
        parts += ["", *warning]
    if failed:
        parts += ["", "## Failed runs", ""]
        parts += [f"- `{r['run_id']}`: {r.get('error', '')} (traceback: `runs/{r['run_id']}/traceback.txt`)"
                  for r in failed]
    missing = total - len(ok) - len(failed)
    if missing > 0:
        parts += ["", f"{missing} run(s) not run yet: rerun the same command to finish the grid."]
    if metrics and (sentence := bottom_line(diffs, config, metrics[0])):
        parts += ["", sentence]
    return "\n".join(parts) + "\n"
