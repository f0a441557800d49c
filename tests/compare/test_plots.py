"""Figures from fabricated results (no training): multi-class ROC and survival KM."""
from __future__ import annotations

import numpy as np

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.plots import km_figure, numbers_at_risk, plot_all, time_unit

PNG = b"\x89PNG\r\n\x1a\n"


def _config(task, aggs=("abmil",), **cohort):
    return parse_config({"cohort": {"csv": "c.csv", "features": "f", "task": task, **cohort},
                         "aggregators": list(aggs), "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {}}],
                         "folds": 2, "output": "o"}, "/x")


def _rows(metric, aggs=("abmil",)):
    return [{"run_id": f"{a}__{v}__fold{f}__seed0", "aggregator": a, "variant": v, "fold": f, "seed": 0,
             "status": "ok", f"test_{metric}": 0.6 + 0.1 * f} for a in aggs for v in ("plain", "r2t") for f in (0, 1)]


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


def _survival_predictions(aggs=("abmil",)):
    rng = np.random.default_rng(1)
    preds = {}
    for r in _rows("c_index", aggs):
        rows = []
        for part in ("val", "test"):
            for i in range(25):
                risk = float(rng.normal())
                rows.append({"case_id": f"{part}{i}", "part": part, "time": float(rng.exponential(10 * np.exp(-risk))),
                             "event": int(rng.random() < 0.7), "risk": risk})
        preds[r["run_id"]] = rows
    return preds


def test_survival_km(tmp_path):
    preds = _survival_predictions()
    files = plot_all(_rows("c_index"), _config("survival"), preds, tmp_path)
    assert sorted(p.name for p in files) == ["km.png", "metrics.png"]
    assert (tmp_path / "km.png").read_bytes()[:8] == PNG


def test_numbers_at_risk():
    times = np.array([1.0, 2.0, 2.0, 5.0, 8.0])  # a case is at risk at t while its time >= t
    assert numbers_at_risk(times, np.array([0.0, 2.0, 2.5, 5.0, 8.0, 10.0])).tolist() == [5, 4, 2, 2, 1, 0]
    assert numbers_at_risk(np.array([]), np.array([0.0, 1.0])).tolist() == [0, 0]


def test_time_unit_from_the_column_name():
    assert time_unit("survival_months") == "months"
    assert time_unit("OS.days") == "days" and time_unit("timeYears") == "years" and time_unit("pfs_mo") == "months"
    assert time_unit("OS.time") is None and time_unit("duration") is None


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_km_has_unit_at_risk_rows_and_no_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    aggs = ("abmil", "mean")
    preds = _survival_predictions(aggs)
    fig = km_figure(_rows("c_index", aggs), _config("survival", aggs, time_column="os_days"), preds)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if " / " in ax.get_title()]
    risk_rows = [ax for ax in fig.axes if ax.get_title(loc="left") == "number at risk"]
    assert len(panels) == 4 and len(risk_rows) == 4
    for ax, risk in zip(panels, risk_rows):
        assert ax.get_xlabel() == "time (days)"
        run = ax.get_title().replace(" / ", "__") + "__"
        test_times = np.array([p["time"] for r, ps in preds.items() if r.startswith(run)
                               for p in ps if p["part"] == "test"])
        ticks = ax.get_xticks()
        assert ticks[0] == 0 and ticks[-1] <= test_times.max() * 1.02 and len(ticks) >= 3
        low, high = (np.array([int(t.get_text()) for t in risk.texts if t.get_position()[1] == y]) for y in (1, 0))
        assert len(low) == len(high) == len(ticks)
        # the two groups together are every pooled test case still under observation at each tick
        assert (low + high).tolist() == numbers_at_risk(test_times, ticks).tolist()
        assert [t.get_position()[0] for t in risk.texts if t.get_position()[1] == 1] == ticks.tolist()
    # nothing overlaps: no title or label of a panel reaches into the row above or below
    boxes = [ax.get_tightbbox(renderer) for ax in panels + risk_rows]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
    assert km_figure(_rows("c_index"), _config("survival"), _survival_predictions()).axes[0].get_xlabel() \
        == "time (months)"
    assert km_figure(_rows("c_index"), _config("survival", time_column="OS.time"),
                     _survival_predictions()).axes[0].get_xlabel() == "OS.time"
