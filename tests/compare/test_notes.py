"""summary.md's notes: the stage's share of the parameters, the memorisation warning and
the closing sentence."""
from __future__ import annotations

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.notes import memorising
from r2t_plugin.compare.report import format_summary

CFG = parse_config({"cohort": {"csv": "c.csv", "features": "f", "task": "classification"},
                    "aggregators": ["abmil"], "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {}}],
                    "folds": 6, "output": "o"}, "/x")


def _row(var, fold, test_auc, val_auc=0.8, first=0.7, last=0.3, params=1000):
    return {"run_id": f"abmil__{var}__fold{fold}__seed0", "aggregator": "abmil", "variant": var, "fold": fold,
            "seed": 0, "status": "ok", "test_auc": test_auc, "val_auc": val_auc, "test_loss": 0.5,
            "seconds": 1.0, "params": params, "epochs": 5, "train_loss_first": first, "train_loss_last": last}


def test_memorising_means_training_loss_near_zero_and_validation_near_chance():
    assert memorising(_row("r2t", 0, 0.5, val_auc=0.55, last=0.01), "auc")
    assert not memorising(_row("r2t", 0, 0.5, val_auc=0.75, last=0.01), "auc")  # it learned something
    assert not memorising(_row("r2t", 0, 0.5, val_auc=0.55, last=0.5), "auc")   # it learned nothing at all
    assert not memorising({**_row("r2t", 0, 0.5), "train_loss_last": None}, "auc")
    assert not memorising(_row("r2t", 0, 0.5, val_auc=0.55, last=0.01), "accuracy")  # no known chance level


def test_summary_warns_about_memorising_runs_only():
    healthy = [_row("plain", f, 0.8) for f in range(6)] + [_row("r2t", f, 0.85) for f in range(6)]
    assert "Memorisation warning" not in format_summary(healthy, CFG, monitor="auc")
    bad = [_row("plain", f, 0.8) for f in range(6)]
    bad += [_row("r2t", f, 0.5, val_auc=0.52 if f < 4 else 0.8, last=0.01) for f in range(6)]
    text = format_summary(bad, CFG, monitor="auc")
    assert "Memorisation warning" in text
    assert "- abmil (r2t): in 4 of 6 runs the training loss fell" in text
    assert "abmil (plain)" not in text.split("Memorisation warning")[1]


def test_summary_gives_the_stage_share_and_ends_with_one_sentence():
    rows = [_row("plain", f, 0.70) for f in range(6)] + [_row("r2t", f, 0.80, params=1500) for f in range(6)]
    rows[-1]["test_auc"] = 0.65  # one loss
    text = format_summary(rows, CFG, monitor="auc")
    assert "- abmil + r2t: the stage adds 500 parameters, 0.50 x the aggregator's 1,000" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("**In one sentence:**") and last.count(". ") == 0 and last.endswith(".")
    assert "changed by +0.075 for abmil (better in 5 of 6 paired runs, p = 0.062)" in last
    assert last.endswith("gains, but too few or too noisy pairs to tell them from chance.")
