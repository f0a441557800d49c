"""Survival on TCGA BLCA with bags built from genomic features, 5-fold CV, C-index.

No slide features exist offline, so every patient becomes a bag of genomic "instances":
the ~2,200 genomic columns (``_rnaseq``, ``_cnv``, ``_mut``) are grouped by the gene
families of ``signatures.csv`` (a gene in several families goes to the first; genes in
none form an "other" group), each family is cut into chunks of ``--chunk`` columns
(zero-padded), and every chunk is one instance: its values followed by a one-hot of the
chunk's index (so the aggregator knows which genes an instance holds). Times and
censoring are the real ones (``survival_months``, ``censorship``; one row per patient).

Folds are patient-level, stratified by event x time quartile, seeded, written under
``OUT/splits`` and shared by every model; validation is carved from each training part
and alone picks the epoch (C-index); the test fold is evaluated once. Columns are z-scored
with the training patients' mean and std only; survival bins come from the training
part's uncensored times only.

    python bench/survival_blca.py                     # abmil + gated_abmil, 5 folds
    python bench/survival_blca.py --models abmil --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from r2t_plugin.bag import FeatureBag
from r2t_plugin.data.splits import load_or_make_folds, survival_strata
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.tasks import SurvivalTask
from r2t_plugin.train import TrainConfig, fit, seed_everything

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "survival"
SUFFIXES = ("_rnaseq", "_cnv", "_mut")


def load_patients(table: Path, signatures: Path) -> tuple[pd.DataFrame, list[list[str]]]:
    """One row per patient, and the genomic columns grouped by gene family."""
    df = pd.read_csv(table)
    cols = [c for c in df.columns if c.endswith(SUFFIXES)]
    per_case = df.groupby("case_id")[["survival_months", "censorship", *cols]].nunique()
    if int(per_case.max().max()) > 1:
        raise ValueError(f"{table}: slides of one patient disagree on survival or genomic values")
    patients = df.drop_duplicates("case_id").reset_index(drop=True)
    sig = pd.read_csv(signatures)
    family_of: dict[str, int] = {}
    for i, fam in enumerate(sig.columns):
        for gene in sig[fam].dropna():
            family_of.setdefault(str(gene), i)
    groups: list[list[str]] = [[] for _ in range(len(sig.columns) + 1)]
    for c in sorted(cols):
        groups[family_of.get(c.rsplit("_", 1)[0], len(sig.columns))].append(c)
    return patients, [g for g in groups if g]


def make_bags(patients: pd.DataFrame, groups: list[list[str]], chunk: int, mu: np.ndarray,
              sd: np.ndarray) -> dict[str, FeatureBag]:
    """Bags of chunk instances for every patient, z-scored with ``mu``/``sd``."""
    cols = [c for g in groups for c in g]
    z = (patients[cols].to_numpy(dtype=np.float64) - mu) / sd
    z = np.clip(z, -10, 10).astype(np.float32)
    spans, start = [], 0
    for g in groups:
        for a in range(0, len(g), chunk):
            spans.append((start + a, start + min(a + chunk, len(g))))
        start += len(g)
    n = len(spans)
    feats = np.zeros((len(patients), n, chunk + n), dtype=np.float32)
    for i, (a, b) in enumerate(spans):
        feats[:, i, : b - a] = z[:, a:b]
        feats[:, i, chunk + i] = 1.0
    bags = {}
    for row, x in zip(patients.itertuples(index=False), feats):
        bags[row.case_id] = FeatureBag(torch.from_numpy(x.copy()), case_id=row.case_id,
                                       time=float(row.survival_months), event=1 - int(row.censorship))
    return bags


def make_pca_bags(patients: pd.DataFrame, groups: list[list[str]], train_ids: list[str], k: int,
                  mu: np.ndarray, sd: np.ndarray) -> dict[str, FeatureBag]:
    """Bags of one instance per gene family: the family's first ``k`` principal components
    (fitted on the training patients only, scaled to unit variance there), followed by a
    one-hot of the family."""
    cols = [c for g in groups for c in g]
    z = (patients[cols].to_numpy(dtype=np.float64) - mu) / sd
    train = patients["case_id"].isin(set(train_ids)).to_numpy()
    n = len(groups)
    feats = np.zeros((len(patients), n, k + n), dtype=np.float32)
    start = 0
    for i, g in enumerate(groups):
        block = z[:, start:start + len(g)]
        start += len(g)
        _, s, vt = np.linalg.svd(block[train], full_matrices=False)
        comps = block @ vt[:k].T
        scale = comps[train].std(0)
        scale[scale < 1e-8] = 1.0
        feats[:, i, : comps.shape[1]] = np.clip(comps / scale, -10, 10)
        feats[:, i, k + i] = 1.0
    return {row.case_id: FeatureBag(torch.from_numpy(x.copy()), case_id=row.case_id,
                                    time=float(row.survival_months), event=1 - int(row.censorship))
            for row, x in zip(patients.itertuples(index=False), feats)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=Path, default=DATA / "tcga_blca.csv.gz")
    p.add_argument("--models", nargs="+", default=["abmil", "gated_abmil"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--instances", choices=["chunk", "pca"], default="chunk",
                   help="chunk: one instance per chunk of --chunk columns; pca: one per gene family "
                        "(its first --chunk principal components, fitted on training patients)")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--bins", type=int, default=4)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--accumulation", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "r2t_runs" / "bench_survival_blca")
    args = p.parse_args(argv)
    if not args.table.is_file():
        print(f"no data at {args.table}; see ../shared/data/README.md", file=sys.stderr)
        return 1
    patients, groups = load_patients(args.table, args.table.parent / "signatures.csv")
    cols = [c for g in groups for c in g]
    ids = patients["case_id"].tolist()
    strata = survival_strata(patients["survival_months"], 1 - patients["censorship"])
    rows = []
    for seed in args.seeds:
        folds = load_or_make_folds(args.out / "splits" / f"seed{seed}", ids, strata, k=args.folds,
                                   val_fraction=args.val_fraction, seed=seed)
        for fold in folds:
            train_x = patients.set_index("case_id").loc[list(fold.train), cols].to_numpy(dtype=np.float64)
            mu, sd = train_x.mean(0), train_x.std(0)
            sd[sd < 1e-8] = 1.0
            bags = (make_bags(patients, groups, args.chunk, mu, sd) if args.instances == "chunk" else
                    make_pca_bags(patients, groups, list(fold.train), args.chunk, mu, sd))
            train, val, test = ([bags[c] for c in part] for part in (fold.train, fold.val, fold.test))
            for model_name in args.models:
                seed_everything(seed)
                model = create_aggregator(model_name, train[0].dim, args.bins, dim=args.dim,
                                          hidden=args.hidden, dropout=args.dropout)
                cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                                  accumulation=args.accumulation, patience=args.patience, seed=seed,
                                  num_threads=args.threads, progress=False)
                t0 = time.perf_counter()
                res = fit(model, SurvivalTask(args.bins), train, val, test, cfg,
                          args.out / args.instances / model_name / f"seed{seed}" / f"fold{fold.index}")
                rows.append({"model": model_name, "seed": seed, "fold": fold.index, **res.as_dict()})
                print(f"{model_name:12s} seed {seed} fold {fold.index}: test C-index {res.test['c_index']:.3f} "
                      f"(IPCW {res.test['c_index_ipcw']:.3f}, IBS {res.test['ibs']:.3f}; val {res.val['c_index']:.3f}, "
                      f"best epoch {res.best_epoch}, {time.perf_counter() - t0:.1f}s)", flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / f"folds_{args.instances}.csv", index=False)
    print(f"\n{len(patients)} patients, {len(cols)} genomic columns, "
          f"{train[0].n} instances of width {train[0].dim} per bag\n")
    print("| model | val C-index | test C-index | test IPCW C-index | test IBS | runs |\n|---|---|---|---|---|---|")
    for m, g in df.groupby("model"):
        cells = [f"{np.nanmean(g[k]):.3f} ± {np.nanstd(g[k], ddof=1):.3f}"
                 for k in ("val_c_index", "test_c_index", "test_c_index_ipcw", "test_ibs")]
        print(f"| {m} | {' | '.join(cells)} | {len(g)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
