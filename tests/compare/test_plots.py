"""Figures from fabricated results (no training): multi-class ROC and survival KM."""
from __future__ import annotations

import numpy as np

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.plots import plot_all

PNG = b"\x89PNG\r\n\x1a\n"


def _config(task):
    return parse_config({"cohort": {"csv": "c.csv", "features": "f", "task": task},
                         "aggregators": ["abmil"], "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {}}],
                         "folds": 2, "output": "o"}, "/x")


def _rows(metric):
    return [{"run_id": f"abmil__{v}__fold{f}__seed0", "aggregator": "abmil", "variant": v, "fold": f, "seed": 0,
             "status": "ok", f"test_{metric}": 0.6 + 0.1 * f} for v in ("plain", "r2t") for f in (0, 1)]


def test_multiclass_roc_and_metrics(tmp_path):
    rng = np.random.default_rng(0)
    preds = {}
    for r in _rows("auc"):
        labels = rng.integers(0, 3, size=20)
        probs = rng.dirichlet(np.ones(3), size=20)
        probs[np.arange(20), labels] += 0.5
        probs /= probs.sum(1, keepdims=True)
        preds[r["run_id"]] = [{"case_id": f"c{i}", "part": "test", "label": int(y),
                               **{f"prob_{k}": float(p) for k, p in enumerate(pr)}}
                              for i, (y, pr) in enumerate(zip(labels, probs))]
    files = plot_all(_rows("auc"), _config("classification"), preds, tmp_path)
    assert sorted(p.name for p in files) == ["metrics.png", "roc.png"]
    assert all(p.read_bytes()[:8] == PNG for p in files)


def test_survival_km(tmp_path):
    rng = np.random.default_rng(1)
    preds = {}
    for r in _rows("c_index"):
        rows = []
        for part in ("val", "test"):
            for i in range(25):
                risk = float(rng.normal())
                rows.append({"case_id": f"{part}{i}", "part": part, "time": float(rng.exponential(10 * np.exp(-risk))),
                             "event": int(rng.random() < 0.7), "risk": risk})
        preds[r["run_id"]] = rows
    files = plot_all(_rows("c_index"), _config("survival"), preds, tmp_path)
    assert sorted(p.name for p in files) == ["km.png", "metrics.png"]
    assert (tmp_path / "km.png").read_bytes()[:8] == PNG
