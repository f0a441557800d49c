"""ABMIL and gated ABMIL on the classic MIL benchmarks, 10-fold CV, honest model selection.

Datasets: Musk1, Musk2 and UCSB breast cancer from ``../shared/data/mil`` (label, bag id,
features per row). For every dataset the folds are stratified by bag label, seeded, written
under ``OUT/splits/<dataset>`` and shared by every model; each training part gives
``--val-fraction`` of its bags to validation, which alone picks the epoch (early stopping
on validation AUC); the test fold is evaluated once. Features are z-scored with the mean
and std of the training part's instances only.

    python bench/mil_cv.py                       # all datasets, abmil + gated_abmil
    python bench/mil_cv.py --datasets musk1 --models abmil --folds 10 --seeds 0 1

Writes ``OUT/folds.csv`` (one row per dataset x model x seed x fold) and prints a summary
(mean ± std over folds x seeds) of test accuracy and AUC. Finished runs are reused.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from r2t_plugin.bag import FeatureBag
from r2t_plugin.data.mil_table import read_mil_table
from r2t_plugin.data.splits import load_or_make_folds
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.tasks import ClassificationTask
from r2t_plugin.train import TrainConfig, fit, seed_everything

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mil"
DATASETS = {"musk1": "musk1.csv.gz", "musk2": "musk2.csv.gz", "ucsb": "ucsb_breast_cancer.csv.gz"}


def standardise(train: list[FeatureBag], *others: list[FeatureBag]) -> list[list[FeatureBag]]:
    """z-score every bag with the training instances' mean and std."""
    x = torch.cat([b.features for b in train])
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    return [[replace(b, features=(b.features - mu) / sd) for b in bags] for bags in (train, *others)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--models", nargs="+", default=["abmil", "gated_abmil"])
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "r2t_runs" / "bench_mil_cv")
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"no data at {DATA}; see ../shared/data/README.md", file=sys.stderr)
        return 1
    rows = []
    for name in args.datasets:
        bags = read_mil_table(DATA / DATASETS[name])
        by_id = {b.case_id: b for b in bags}
        ids = [b.case_id for b in bags]
        for seed in args.seeds:
            folds = load_or_make_folds(args.out / "splits" / f"{name}_seed{seed}", ids, [b.label for b in bags],
                                       k=args.folds, val_fraction=args.val_fraction, seed=seed)
            for fold in folds:
                train, val, test = standardise(*([by_id[c] for c in part] for part in (fold.train, fold.val, fold.test)))
                for model_name in args.models:
                    seed_everything(seed)
                    model = create_aggregator(model_name, bags[0].dim, 2, dim=args.dim, hidden=args.hidden,
                                              dropout=args.dropout)
                    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                                      optimizer="adam", patience=args.patience, seed=seed,
                                      num_threads=args.threads, progress=False)
                    t0 = time.perf_counter()
                    res = fit(model, ClassificationTask(2), train, val, test, cfg,
                              args.out / name / model_name / f"seed{seed}" / f"fold{fold.index}")
                    rows.append({"dataset": name, "model": model_name, "seed": seed, "fold": fold.index,
                                 **res.as_dict()})
                    print(f"{name:6s} {model_name:12s} seed {seed} fold {fold.index}: test acc "
                          f"{res.test['accuracy']:.3f} auc {res.test['auc']:.3f} (val auc {res.val['auc']:.3f}, "
                          f"best epoch {res.best_epoch}, {time.perf_counter() - t0:.1f}s)", flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "folds.csv", index=False)
    summary = df.groupby(["dataset", "model"]).agg(
        acc_mean=("test_accuracy", "mean"), acc_std=("test_accuracy", "std"),
        auc_mean=("test_auc", "mean"), auc_std=("test_auc", lambda s: float(np.nanstd(s, ddof=1))),
        n=("test_auc", "size"), epochs=("epochs_run", "mean"))
    print("\n| dataset | model | accuracy | AUC | runs |\n|---|---|---|---|---|")
    for (d, m), r in summary.iterrows():
        print(f"| {d} | {m} | {r.acc_mean:.3f} ± {r.acc_std:.3f} | {r.auc_mean:.3f} ± {r.auc_std:.3f} | {int(r.n)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
