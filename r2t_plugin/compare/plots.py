"""Figures of a comparison (PNG, matplotlib Agg), written atomically under ``plots/``.

- ``metrics.png``: each test metric per aggregator and variant, mean ± std with the runs as dots;
- ``roc.png`` (classification): mean test ROC over runs (vertical averaging, ±1 std band),
  one panel per aggregator, one curve per variant; multi-class: micro-averaged one-vs-rest;
- ``km.png`` (survival): Kaplan–Meier curves of the test cases split into high / low
  predicted risk at the median risk of each run's VALIDATION cases (no test information),
  pooled over folds x seeds, with the log-rank p-value; one panel per aggregator x variant.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes
from .config import CompareConfig
from .report import mean_std
from .results import metric_columns, with_status

__all__ = ["plot_all", "plot_metrics", "plot_roc", "plot_km"]


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


def plot_km(rows: list[dict[str, Any]], config: CompareConfig, predictions: dict[str, list[dict[str, Any]]],
            path: Path) -> Path | None:
    """Kaplan–Meier of test cases in high / low predicted risk (split at the validation median)."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    plt = _plt()
    aggs, variants = config.aggregators, config.variants
    fig, axes = plt.subplots(len(aggs), len(variants), figsize=(4.2 * len(variants), 3.6 * len(aggs)), squeeze=False)
    drawn = False
    for i, agg in enumerate(aggs):
        for j, var in enumerate(variants):
            ax = axes[i][j]
            time, event, high = [], [], []
            for r in with_status(rows):
                if r["aggregator"] != agg.id or r["variant"] != var.name:
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
            ax.set_title(f"{agg.id} / {var.name}", fontsize=9)
            if not time:
                ax.axis("off")
                continue
            t, e, h = np.array(time), np.array(event), np.array(high)
            for group, name, color in ((False, "low risk", "C0"), (True, "high risk", "C3")):
                sel = h == group
                if sel.sum() == 0:
                    continue
                x, y = kaplan_meier_estimator(e[sel], t[sel])
                ax.step(x, y, where="post", color=color, label=f"{name} (n={int(sel.sum())})")
            label = ""
            if 0 < h.sum() < len(h) and e.any():
                y_struct = np.array(list(zip(e, t)), dtype=[("event", bool), ("time", float)])
                _, p = compare_survival(y_struct, h.astype(int))
                label = f"log-rank p={p:.2g}"
            ax.set_xlabel("time")
            ax.set_ylabel("survival")
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7, title=label, title_fontsize=7)
            drawn = True
    if not drawn:
        _plt().close(fig)
        return None
    fig.suptitle("test cases by predicted risk (cut at each run's validation median), pooled over runs")
    return _save(fig, path)


def plot_all(rows: list[dict[str, Any]], config: CompareConfig, predictions: dict[str, list[dict[str, Any]]],
             out_dir: Path) -> list[Path]:
    """Every figure that applies to the task; returns the files written."""
    out = [plot_metrics(rows, config, out_dir / "metrics.png")]
    if config.cohort.task == "classification":
        out.append(plot_roc(rows, config, predictions, out_dir / "roc.png"))
    else:
        out.append(plot_km(rows, config, predictions, out_dir / "km.png"))
    return [p for p in out if p is not None]
