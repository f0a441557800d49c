"""results.csv bookkeeping and the paired statistics of summary.md."""
from __future__ import annotations

import math

import pytest
from scipy.stats import wilcoxon

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.report import format_summary, mean_std, paired_differences, wilcoxon_p
from r2t_plugin.compare.results import ResultsTable

CFG = parse_config({
    "cohort": {"csv": "c.csv", "features": "f", "task": "classification"},
    "aggregators": ["abmil", "mean"],
    "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {}}],
    "folds": 3, "output": "o",
}, "/x")


def _row(agg, var, fold, auc, status="ok", seconds=1.0):
    r = {"run_id": f"{agg}__{var}__fold{fold}__seed0", "aggregator": agg, "variant": var, "fold": fold,
         "seed": 0, "status": status}
    if status == "ok":
        r.update(test_auc=auc, val_auc=auc - 0.01, test_loss=0.5, seconds=seconds, params=10, epochs=2)
    else:
        r["error"] = "RuntimeError: boom"
    return r


def test_results_table_roundtrip_and_order(tmp_path):
    order = [f"abmil__{v}__fold{f}__seed0" for f in range(2) for v in ("plain", "r2t")]
    table = ResultsTable(tmp_path / "results.csv", order)
    table.record(_row("abmil", "r2t", 1, 0.1 + 0.2))
    table.record(_row("abmil", "plain", 0, 0.7, status="failed"))
    table.record(_row("abmil", "plain", 0, 0.7))  # a retried run replaces its failed row
    table.record(_row("abmil", "plain", 1, 0.7, status="failed"))
    again = ResultsTable(tmp_path / "results.csv", order)
    rows = again.rows()
    assert [r["run_id"] for r in rows] == ["abmil__plain__fold0__seed0", "abmil__plain__fold1__seed0",
                                           "abmil__r2t__fold1__seed0"]
    assert rows[2]["test_auc"] == 0.1 + 0.2  # floats round-trip exactly
    assert again.finished() == {"abmil__plain__fold0__seed0", "abmil__r2t__fold1__seed0"}
    assert [r["run_id"] for r in again.failed()] == ["abmil__plain__fold1__seed0"]
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["run_id", "aggregator", "variant", "fold", "seed", "status"]
    assert header.index("val_auc") < header.index("test_auc") < header.index("seconds") < header.index("error")
    assert not list(tmp_path.glob(".*")), "no temporary files left"
    # a NaN metric stays NaN and an empty cell stays empty when the table is read and written again
    table.record({**_row("abmil", "r2t", 0, math.nan), "best_epoch": None})
    text = (tmp_path / "results.csv").read_text()
    again = ResultsTable(tmp_path / "results.csv", order)
    row = next(r for r in again.rows() if r["run_id"] == "abmil__r2t__fold0__seed0")
    assert math.isnan(row["test_auc"]) and row["best_epoch"] is None and row["epochs"] == 2
    assert again.to_csv() == text
    with pytest.raises(ValueError, match="lacks"):
        table.record({"run_id": "x"})


def test_wilcoxon_and_mean_std():
    d = [0.1, 0.2, -0.05, 0.3, 0.15, 0.12]
    assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)
    assert wilcoxon_p([0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_p([]))
    m, s, n = mean_std([1.0, 2.0, float("nan"), None, 3.0])
    assert (m, s, n) == (2.0, 1.0, 3)


def test_paired_differences_pair_by_fold_and_seed():
    rows = [_row("abmil", "plain", f, a) for f, a in enumerate([0.6, 0.7, 0.8])]
    rows += [_row("abmil", "r2t", f, a) for f, a in enumerate([0.7, 0.7, 0.9])]
    rows += [_row("mean", "plain", 0, 0.5), _row("mean", "r2t", 0, 0.4), _row("mean", "r2t", 1, 0.9)]
    diffs = {(d.aggregator, d.metric): d for d in paired_differences(rows, CFG, ["test_auc"])}
    a = diffs[("abmil", "test_auc")]
    assert a.n == 3 and a.mean == pytest.approx(0.2 / 3) and (a.wins, a.ties, a.losses) == (2, 1, 0)
    assert a.p_value == pytest.approx(wilcoxon([0.1, 0.0, 0.1]).pvalue)
    m = diffs[("mean", "test_auc")]
    assert m.n == 1 and m.mean == pytest.approx(-0.1)  # fold 1 has no plain partner


def test_summary_lists_failures_and_missing():
    rows = [_row("abmil", "plain", 0, 0.6), _row("abmil", "r2t", 0, 0.7), _row("mean", "r2t", 2, 0, "failed")]
    text = format_summary(rows, CFG, monitor="auc")
    assert "| abmil | plain | 1 | 0.600 ± 0.000 |" in text
    assert "+R²T − plain" in text and "+0.100" in text
    assert "## Failed runs" in text and "`mean__r2t__fold2__seed0`: RuntimeError: boom" in text
    assert "9 run(s) not run yet" in text


def test_summary_covers_exactly_the_configured_grid():
    """Rows of a removed seed or aggregator stay in results.csv but are not averaged in."""
    rows = [_row("abmil", v, f, 0.6) for v in ("plain", "r2t") for f in range(3)]
    gone = [{**_row("abmil", v, 0, 0.0), "seed": 1, "run_id": f"abmil__{v}__fold0__seed1"} for v in ("plain", "r2t")]
    gone.append({**_row("transmil", "plain", 0, 0.0), "run_id": "transmil__plain__fold0__seed0"})
    text = format_summary(rows + gone, CFG, monitor="auc")
    assert "6 of 12 runs finished, 0 failed." in text
    assert "3 other finished run(s) in `results.csv` are outside this grid" in text
    assert "| abmil | plain | 3 | 0.600 ± 0.000 |" in text and "transmil" not in text
    diffs = {d.aggregator: d for d in paired_differences(rows + gone, CFG, ["test_auc"])}
    assert diffs["abmil"].n == 3 and diffs["abmil"].mean == 0.0


def test_paired_table_lists_the_incomplete_pairs_with_their_reason():
    rows = [_row("abmil", "plain", 0, 0.6), _row("abmil", "r2t", 0, 0.7),
            _row("abmil", "plain", 1, 0.6, "failed"), _row("abmil", "r2t", 1, 0.9), _row("abmil", "plain", 2, 0.5)]
    text = format_summary(rows, CFG, monitor="auc")
    assert "| abmil | r2t | 1 | 1/0/0 | +0.100" in text  # fold 0 only: fold 1's r2t run has no partner
    assert "Pairs left out (5; only complete pairs are compared):" in text
    assert "- `abmil` r2t, fold 1, seed 0: plain failed (RuntimeError: boom)" in text
    assert "- `abmil` r2t, fold 2, seed 0: r2t not run yet" in text
    assert "- `mean` r2t, fold 0, seed 0: plain not run yet; r2t not run yet" in text


def test_summary_has_the_class_counts_and_flags_constant_predictions():
    rows = [_row("abmil", "plain", 0, 0.5), _row("abmil", "r2t", 0, 0.8)]
    flat = [{"case_id": f"c{i}", "part": "test", "label": i % 2, "prob_0": 0.5 + i * 1e-9, "prob_1": 0.5 - i * 1e-9}
            for i in range(4)]
    varied = [{**r, "prob_0": 0.2 * i, "prob_1": 1 - 0.2 * i} for i, r in enumerate(flat)]
    preds = {"abmil__plain__fold0__seed0": flat, "abmil__r2t__fold0__seed0": varied}
    text = format_summary(rows, CFG, monitor="auc", target_counts={"0": 7, "1": 5}, predictions=preds)
    assert "Cases per class: `0` 7, `1` 5." in text
    assert "Constant predictions (1 run(s))" in text and "- `abmil__plain__fold0__seed0`" in text
    assert "- `abmil__r2t__fold0__seed0`" not in text
    survival = parse_config({**CFG.raw, "cohort": {"csv": "c.csv", "features": "f", "task": "survival"}}, "/x")
    assert "Cases: 3 with an event, 9 censored." in format_summary([], survival, target_counts={"event": 3, "censored": 9})
