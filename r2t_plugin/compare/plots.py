"""Figures of a comparison (PNG, matplotlib Agg), written atomically under ``plots/``.

- ``metrics.png``: each test metric per aggregator and variant, mean ± std with the runs as dots;
- ``roc.png`` (classification): mean test ROC over runs (vertical averaging, ±1 std band),
  one panel per aggregator, one curve per variant; multi-class: micro-averaged one-vs-rest;
- ``km.png`` (survival): Kaplan–Meier curves of the test cases split into high / low
  predicted risk at the median risk of each run's VALIDATION cases (no test information),
  pooled over folds x seeds, with the log-rank p-value and the numbers at risk under each
  panel; one panel per aggregator x variant; the time axis in the unit the time column's
  name gives (``survival_months``: months).
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes
from .config import CompareConfig
from .report import mean_std
from .results import metric_columns, with_status

__all__ = ["plot_all", "plot_metrics", "plot_roc", "plot_km", "km_figure", "numbers_at_risk", "time_unit"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_metrics(rows: list[dict[str, Any]], config: CompareConfig, path: Path) -> Path | None:
    """Bar chart (mean ± std) of every test metric, with each run as a dot."""
    ok = with_status(rows)
    metrics = [m for m in metric_columns({k for r in ok for k in r}) if not m.endswith("_loss")]
    if not metrics:
        return None
    plt = _plt()
    aggs, variants = [a.id for a in config.aggregators], [v.name for v in config.variants]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.3 * len(aggs) + 1.5) * len(metrics), 3.8),
                             squeeze=False)
    width = 0.8 / len(variants)
    for ax, metric in zip(axes[0], metrics):
        for j, var in enumerate(variants):
            xs = np.arange(len(aggs)) + (j - (len(variants) - 1) / 2) * width
            stats = [mean_std([r.get(metric) for r in ok if r["aggregator"] == a and r["variant"] == var]) for a in aggs]
            ax.bar(xs, [s[0] for s in stats], width * 0.9, yerr=[s[1] for s in stats], capsize=3,
                   label=var, color=f"C{j}", alpha=0.75)
            for x, a in zip(xs, aggs):
                pts = [r.get(metric) for r in ok if r["aggregator"] == a and r["variant"] == var]
                pts = [p for p in pts if p is not None and math.isfinite(p)]
                ax.plot([x] * len(pts), pts, "k.", ms=3, alpha=0.6)
        ax.set_xticks(np.arange(len(aggs)))
        ax.set_xticklabels(aggs, rotation=30, ha="right")
        ax.set_title(metric[5:])
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("test metrics: mean ± std over folds x seeds")
    return _save(fig, path)


def _roc_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    from sklearn.metrics import roc_curve

    if probs.shape[1] == 2:
        y, score = labels, probs[:, 1]
    else:  # micro-averaged one-vs-rest
        onehot = np.eye(probs.shape[1])[labels]
        y, score = onehot.ravel(), probs.ravel()
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def plot_roc(rows: list[dict[str, Any]], config: CompareConfig, predictions: dict[str, list[dict[str, Any]]],
             path: Path) -> Path | None:
    """Mean test ROC per aggregator (panel) and variant (curve)."""
    from sklearn.metrics import auc

    plt = _plt()
    grid = np.linspace(0, 1, 101)
    aggs = config.aggregators
    cols = min(3, len(aggs))
    fig, axes = plt.subplots(math.ceil(len(aggs) / cols), cols, figsize=(4.2 * cols, 4 * math.ceil(len(aggs) / cols)),
                             squeeze=False)
    drawn = False
    for ax, agg in zip(axes.flat, aggs):
        for j, var in enumerate(config.variants):
            curves, aucs = [], []
            for r in with_status(rows):
                if r["aggregator"] != agg.id or r["variant"] != var.name:
                    continue
                test = [p for p in predictions.get(r["run_id"], []) if p["part"] == "test"]
                if not test:
                    continue
                k = sum(1 for key in test[0] if key.startswith("prob_"))
                probs = np.array([[p[f"prob_{i}"] for i in range(k)] for p in test], dtype=float)
                pts = _roc_points(np.array([int(p["label"]) for p in test]), probs)
                if pts is None:
                    continue
                curves.append(np.interp(grid, *pts))
                aucs.append(float(auc(*pts)))
            if not curves:
                continue
            mean, std = np.mean(curves, axis=0), np.std(curves, axis=0)
            mean[0] = 0.0
            m, s, _ = mean_std(aucs)
            ax.plot(grid, mean, color=f"C{j}", label=f"{var.name} (AUC {m:.3f} ± {s:.3f})")
            ax.fill_between(grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=f"C{j}", alpha=0.15)
            drawn = True
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(agg.id)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(aggs):]:
        ax.axis("off")
    if not drawn:
        _plt().close(fig)
        return None
    fig.suptitle("test ROC (mean ± std over runs" + (", micro-averaged" if _n_classes(predictions) > 2 else "") + ")")
    return _save(fig, path)


def _n_classes(predictions: dict[str, list[dict[str, Any]]]) -> int:
    for preds in predictions.values():
        if preds:
            return sum(1 for key in preds[0] if key.startswith("prob_"))
    return 0


_TIME_UNITS = {"day": "days", "days": "days", "week": "weeks", "weeks": "weeks", "wk": "weeks", "wks": "weeks",
               "month": "months", "months": "months", "mo": "months", "mos": "months", "mon": "months",
               "mth": "months", "mths": "months", "year": "years", "years": "years", "yr": "years", "yrs": "years"}


def time_unit(column: str) -> str | None:
    """The time unit a column's name gives (``survival_months`` -> ``months``, ``OS.time`` -> None)."""
    words = re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", column).lower())
    return next((_TIME_UNITS[w] for w in words if w in _TIME_UNITS), None)


def numbers_at_risk(times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """How many cases are still under observation (time >= t) at each time of ``at``."""
    times = np.asarray(times, dtype=float)
    return (times[None, :] >= np.asarray(at, dtype=float)[:, None]).sum(axis=1)


def _km_groups(rows, agg: str, var: str, predictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled test (time, event, high risk) of every run of ``agg`` x ``var``, each split at
    its own validation median risk."""
    time, event, high = [], [], []
    for r in with_status(rows):
        if r["aggregator"] != agg or r["variant"] != var:
            continue
        preds = predictions.get(r["run_id"], [])
        val = [p["risk"] for p in preds if p["part"] == "val"]
        if not val:
            continue
        cut = float(np.median(val))
        for p in preds:
            if p["part"] == "test":
                time.append(float(p["time"]))
                event.append(bool(int(p["event"])))
                high.append(p["risk"] > cut)
    return np.array(time, dtype=float), np.array(event, dtype=bool), np.array(high, dtype=bool)


_KM_GROUPS = ((False, "low risk", "C0"), (True, "high risk", "C3"))


def _km_panel(ax, risk_ax, t: np.ndarray, e: np.ndarray, h: np.ndarray, xlabel: str) -> None:
    """One Kaplan–Meier panel and its numbers-at-risk row below it."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    for group, name, color in _KM_GROUPS:
        sel = h == group
        if sel.any():
            x, y = kaplan_meier_estimator(e[sel], t[sel])
            ax.step(np.r_[0.0, x], np.r_[1.0, y], where="post", color=color, label=f"{name} (n={int(sel.sum())})")
    label = ""
    if 0 < h.sum() < len(h) and e.any():
        y_struct = np.array(list(zip(e, t)), dtype=[("event", bool), ("time", float)])
        _, p = compare_survival(y_struct, h.astype(int))
        label = f"log-rank p={p:.2g}"
    from matplotlib.ticker import MaxNLocator

    hi = float(t.max()) * 1.02
    ticks = np.array([v for v in MaxNLocator(nbins=5).tick_values(0.0, hi) if 0.0 <= v <= hi])
    ax.set_xlim(0, hi)
    ax.set_xticks(ticks)  # fixed: the counts below stay under their ticks whatever the layout
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("survival")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, title=label, title_fontsize=7)
    risk_ax.sharex(ax)
    risk_ax.set_ylim(-0.5, 1.5)
    risk_ax.set_yticks([1, 0], ["low", "high"], fontsize=7)
    risk_ax.tick_params(axis="x", bottom=False, labelbottom=False)
    risk_ax.tick_params(axis="y", left=False)
    for spine in risk_ax.spines.values():
        spine.set_visible(False)
    risk_ax.set_title("number at risk", fontsize=7, loc="left")
    for group, _, color in _KM_GROUPS:
        for x, n in zip(ticks, numbers_at_risk(t[h == group], ticks)):
            risk_ax.text(x, 0 if group else 1, str(int(n)), ha="center", va="center", fontsize=7, color=color)


def km_figure(rows: list[dict[str, Any]], config: CompareConfig, predictions: dict[str, list[dict[str, Any]]]):
    """The Kaplan–Meier figure (a matplotlib Figure), or None when no run has test predictions."""
    plt = _plt()
    aggs, variants = config.aggregators, config.variants
    column = config.cohort.time_column
    unit = time_unit(column)
    xlabel = f"time ({unit})" if unit else column
    fig, axes = plt.subplots(2 * len(aggs), len(variants), figsize=(4.2 * len(variants), 4.4 * len(aggs)),
                             height_ratios=[3.2, 0.8] * len(aggs), squeeze=False, layout="constrained")
    drawn = False
    for i, agg in enumerate(aggs):
        for j, var in enumerate(variants):
            ax, risk_ax = axes[2 * i][j], axes[2 * i + 1][j]
            ax.set_title(f"{agg.id} / {var.name}", fontsize=9)
            t, e, h = _km_groups(rows, agg.id, var.name, predictions)
            if not t.size:
                ax.axis("off")
                risk_ax.axis("off")
                continue
            _km_panel(ax, risk_ax, t, e, h, xlabel)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle("test cases by predicted risk (cut at each run's validation median), pooled over runs", fontsize=10)
    return fig


def plot_km(rows: list[dict[str, Any]], config: CompareConfig, predictions: dict[str, list[dict[str, Any]]],
            path: Path) -> Path | None:
    """Kaplan–Meier of test cases in high / low predicted risk (split at the validation median),
    with the numbers at risk under each panel."""
    fig = km_figure(rows, config, predictions)
    return None if fig is None else _save(fig, path)


def plot_all(rows: list[dict[str, Any]], config: CompareConfig, predictions: dict[str, list[dict[str, Any]]],
             out_dir: Path) -> list[Path]:
    """Every figure that applies to the task; returns the files written."""
    out = [plot_metrics(rows, config, out_dir / "metrics.png")]
    if config.cohort.task == "classification":
        out.append(plot_roc(rows, config, predictions, out_dir / "roc.png"))
    else:
        out.append(plot_km(rows, config, predictions, out_dir / "km.png"))
    return [p for p in out if p is not None]
