"""Survival on TCGA BLCA with bags built from genomic features, 5-fold CV, C-index.

No slide features exist offline, so every patient becomes a bag of genomic "instances".
The ~2,200 genomic columns (``_rnaseq``, ``_cnv``, ``_mut``) are grouped by the gene
families of ``signatures.csv`` (a gene in several families goes to the first; genes in
none form an "other" group). ``--instances pca`` (default): one instance per family, its
first ``--chunk`` principal components (fitted on the training patients only) followed by
a one-hot of the family. ``--instances chunk``: every family is cut into chunks of
``--chunk`` columns (zero-padded), one instance per chunk, followed by a one-hot of the
chunk's index. Times and censoring are the real ones (``survival_months``, ``censorship``
with 1 = censored, so event = 1 - censorship; one row per patient).

Folds are patient-level, stratified by event x time quartile, seeded, written under
``OUT/splits`` and shared by every model and reference line; validation is carved from
each training part and alone picks the epoch (C-index) and the ridge penalty of the Cox
references; the test fold is evaluated once. Columns are z-scored with the training
patients' mean and std only; survival bins come from the training part's uncensored times.

Reference lines on the same folds (computed here, not MIL): ``age`` (risk = age, nothing
fitted), ``ridge_cox_genomic`` (linear Cox, Breslow partial likelihood + L2 penalty, on all
z-scored genomic columns; scikit-survival's ``CoxPHSurvivalAnalysis``) and
``ridge_cox_bag`` (the same on the flattened bag features, i.e. the MIL model's own inputs). The train C-index of the selected MIL model is printed
too, to show whether it learned anything on its own training patients.

Defaults (lr 1e-3, weight decay 1e-2, no gradient accumulation, 20 epochs) were fixed
before looking at any BLCA test fold: the old ones (lr 2e-4, accumulation 8, 30 epochs,
~900 small optimiser steps) leave ABMIL near its initial flat hazards even on a synthetic
cohort with a strong signal (train C-index ~0.68 where the true score gives 0.89).

Variants (``--variants``), each built by ``r2t_plugin.models.build_model`` as ``r2t compare``
builds its cells: ``plain`` (the aggregator), ``r2t`` (the new default of ``r2t compare``:
``with_r2t(model, residual=True, layout="sequence", min_region_tokens=16)``, a
zero-initialised residual stage, so training starts from the plain model) and
``r2t_former`` (the same with ``residual=False``, the former default) and ``r2t_stage_lr``
(``r2t`` with the stage learning at a tenth of the aggregator's rate, ``stage_lr_scale``
0.1). A bag of 7 instances
is one region of 3 x 3 slots (7 filled) with ``min_region_tokens`` 16. Every R²T variant is
paired against ``plain`` on the same (fold, seed) runs: mean Δ test C-index, wins / ties /
losses and a two-sided Wilcoxon signed-rank p (``zero_method="wilcox"``: tied pairs are
dropped; with 5 pairs the smallest possible p is 0.0625). Aggregator options: ``--dim``,
and ``--hidden`` / ``--dropout`` where the aggregator takes them.

Runs live under ``OUT/TAG/MODEL/seedS/foldF`` (plain, the layout of earlier versions, so
their finished runs are reused) and ``OUT/TAG/MODEL/VARIANT/seedS/foldF`` (R²T variants);
a finished run (``result.json``) is reused, an interrupted one resumes from ``last.pt``.

    python bench/survival_blca.py                     # 5 aggregators, plain and + R²T, 5 folds
    python bench/survival_blca.py --seeds 0 1 2 --variants plain r2t r2t_former
    python bench/survival_blca.py --models abmil --variants plain --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

from r2t_plugin.bag import FeatureBag
from r2t_plugin.data.splits import load_or_make_folds, survival_strata
from r2t_plugin.compare.report import wilcoxon_p
from r2t_plugin.models import FORMAT, ModelSpec, build_model
from r2t_plugin.plugins import registry
from r2t_plugin.tasks import SurvivalTask
from r2t_plugin.tasks.survival import c_index
from r2t_plugin.train import TrainConfig, evaluate, fit, seed_everything

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "survival"
SUFFIXES = ("_rnaseq", "_cnv", "_mut")
MODELS = ("abmil", "gated_abmil", "transmil", "dsmil", "clam_sb")
_R2T = {"layout": "sequence", "min_region_tokens": 16}
VARIANTS: dict[str, dict | None] = {"plain": None, "r2t": {**_R2T, "residual": True},
                                    "r2t_former": {**_R2T, "residual": False},
                                    "r2t_stage_lr": {**_R2T, "residual": True}}
VARIANT_TRAINING = {"r2t_stage_lr": {"stage_lr_scale": 0.1}}  # TrainConfig settings of a variant


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


def _bags(patients: pd.DataFrame, feats: np.ndarray) -> dict[str, FeatureBag]:
    """One bag per patient (rows of ``feats`` (patients, N, D)) with its survival target."""
    return {row.case_id: FeatureBag(torch.from_numpy(x.copy()), case_id=row.case_id,
                                    time=float(row.survival_months), event=1 - int(row.censorship))
            for row, x in zip(patients.itertuples(index=False), feats)}


def make_bags(patients: pd.DataFrame, groups: list[list[str]], chunk: int, z: np.ndarray) -> dict[str, FeatureBag]:
    """Bags of chunk instances for every patient from the z-scored genomic columns ``z``."""
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
    return _bags(patients, feats)


def make_pca_bags(patients: pd.DataFrame, groups: list[list[str]], train: np.ndarray, k: int,
                  z: np.ndarray) -> dict[str, FeatureBag]:
    """Bags of one instance per gene family: the family's first ``k`` principal components
    (scikit-learn's PCA, fitted on the ``train`` rows only, scaled to unit variance there),
    followed by a one-hot of the family."""
    n = len(groups)
    feats = np.zeros((len(patients), n, k + n), dtype=np.float32)
    start = 0
    for i, g in enumerate(groups):
        block = z[:, start:start + len(g)]
        start += len(g)
        pca = PCA(n_components=min(k, len(g), int(train.sum())), svd_solver="full").fit(block[train])
        comps = pca.transform(block)
        scale = comps[train].std(0)
        scale[scale < 1e-8] = 1.0
        feats[:, i, : comps.shape[1]] = np.clip(comps / scale, -10, 10)
        feats[:, i, k + i] = 1.0
    return _bags(patients, feats)


def ridge_cox_cv(x: np.ndarray, y: pd.DataFrame, parts: dict[str, np.ndarray],
                 alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)) -> dict[str, float]:
    """Ridge Cox on ``x`` (rows = patients of ``y``): standardised on the training part,
    penalty picked by validation C-index (ties: the larger penalty), test C-index once.

    A penalty ``alpha`` adds ``alpha / 2 * |w|^2`` to the mean negative Breslow partial
    log-likelihood per event (scikit-survival's ``CoxPHSurvivalAnalysis`` sums over patients,
    hence ``alpha`` times the number of events there). The ridge solution is a combination of
    the training rows, ``w = V g`` with ``V`` their principal axes and ``|g| = |w|``, so the
    model is fitted exactly on the training part's principal-component scores (scikit-learn's
    ``PCA``, every component): at most one column per training patient instead of 2,181, and
    the same risks up to a constant, which no C-index sees.
    """
    tr = parts["train"]
    z = np.clip(StandardScaler().fit(x[tr]).transform(x), -10, 10)
    scores = PCA(svd_solver="full").fit(z[tr]).transform(z)
    t, e = y["survival_months"].to_numpy(float), 1 - y["censorship"].to_numpy(int)
    target = Surv.from_arrays(event=e[tr].astype(bool), time=t[tr])
    best = None
    for a in alphas:
        risk = scores @ CoxPHSurvivalAnalysis(alpha=a * e[tr].sum()).fit(scores[tr], target).coef_
        val = c_index(t[parts["val"]], e[parts["val"]], risk[parts["val"]])
        if best is None or val >= best[0]:
            best = (val, a, risk)
    val, a, risk = best
    return {"val_c_index": val, "alpha": a, "test_c_index": c_index(t[parts["test"]], e[parts["test"]], risk[parts["test"]]),
            "train_c_index": c_index(t[tr], e[tr], risk[tr])}


def _mean_std(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}"


def aggregator_options(name: str, **wanted) -> dict:
    """The options of ``wanted`` that aggregator ``name``'s factory takes (TransMIL: no ``hidden``)."""
    params = inspect.signature(registry("aggregators").get(name)).parameters
    return {k: v for k, v in wanted.items() if k in params}


def run_dir(root: Path, model: str, variant: str, seed: int, fold: int) -> Path:
    """Where one run lives; plain keeps the layout of earlier versions (their runs are reused)."""
    base = root / model if variant == "plain" else root / model / variant
    return base / f"seed{seed}" / f"fold{fold}"


def load_selected(model: torch.nn.Module, path: Path) -> None:
    """Load ``best.pt`` into ``model``: a self-describing checkpoint, or a bare state_dict
    (written by earlier versions of this script)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"] if saved.get("format") == FORMAT else saved)


def paired(df: pd.DataFrame, variant: str, key: str = "test_c_index") -> str:
    """Mean Δ ``key`` of ``variant`` vs plain over their shared (fold, seed) runs, with the
    two-sided Wilcoxon signed-rank p (tied pairs dropped) and wins / ties / losses."""
    wide = df.pivot_table(index=["seed", "fold"], columns="variant", values=key)
    if "plain" not in wide or variant not in wide:
        return "– | – | –"
    d = (wide[variant] - wide["plain"]).dropna().to_numpy()
    d = np.where(np.abs(d) < 1e-9, 0.0, d)
    wtl = f"{int((d > 0).sum())}/{int((d == 0).sum())}/{int((d < 0).sum())}"
    pv = wilcoxon_p(d)  # r2t compare's own test (two-sided, tied pairs dropped)
    return f"{d.mean():+.3f} ± {d.std(ddof=1):.3f} | {pv:.3f} | {wtl}"


def print_tables(df: pd.DataFrame) -> None:
    """One table per aggregator: every variant, and R²T's paired Δ against plain."""
    for m, g in df.groupby("model", sort=False):
        print(f"\n{m}\n| variant | val C-index | test C-index | test IPCW C-index | test IBS | "
              "train C-index (selected) | Δ test C-index vs plain | Wilcoxon p | wins/ties/losses | params | runs |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
        for v, gv in g.groupby("variant", sort=False):
            cells = [_mean_std(gv[k]) for k in ("val_c_index", "test_c_index", "test_c_index_ipcw", "test_ibs",
                                                 "train_c_index")]
            delta = "– | – | –" if v == "plain" else paired(g, v)
            print(f"| {v} | {' | '.join(cells)} | {delta} | {int(gv['n_params'].iloc[0])} | {len(gv)} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=Path, default=DATA / "tcga_blca.csv.gz")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="registered aggregators (default: %(default)s)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["plain", "r2t"],
                   help="plain; r2t: + R²T, residual (r2t compare's default); r2t_former: + R²T, "
                        "residual=False (the former default); default: %(default)s")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--instances", choices=["chunk", "pca"], default="pca",
                   help="pca: one instance per gene family (its first --chunk principal components, "
                        "fitted on training patients); chunk: one instance per chunk of --chunk columns")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--bins", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-references", action="store_true", help="skip the age / ridge Cox reference lines")
    p.add_argument("--out", type=Path, default=ROOT / "r2t_runs" / "bench_survival_blca")
    args = p.parse_args(argv)
    known = registry("aggregators").names()
    if unknown := [m for m in args.models if m not in known]:
        p.error(f"--models: unknown aggregator(s) {', '.join(unknown)}; registered: {', '.join(known)}")
    if not args.table.is_file():
        print(f"no data at {args.table}; see ../shared/data/README.md", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    patients, groups = load_patients(args.table, args.table.parent / "signatures.csv")
    cols = [c for g in groups for c in g]
    ids = patients["case_id"].tolist()
    row_of = {c: i for i, c in enumerate(ids)}
    strata = survival_strata(patients["survival_months"], 1 - patients["censorship"])
    genomic = patients[cols].to_numpy(dtype=np.float64)
    tag = (f"{args.instances}{args.chunk}_lr{args.lr:g}_wd{args.weight_decay:g}_acc{args.accumulation}"
           f"_ep{args.epochs}_d{args.dim}_h{args.hidden}_do{args.dropout:g}_bins{args.bins}")
    rows, refs = [], []
    for seed in args.seeds:
        folds = load_or_make_folds(args.out / "splits" / f"seed{seed}", ids, strata, k=args.folds,
                                   val_fraction=args.val_fraction, seed=seed)
        for fold in folds:
            parts = {name: np.array([row_of[c] for c in getattr(fold, name)]) for name in ("train", "val", "test")}
            z = StandardScaler().fit(genomic[parts["train"]]).transform(genomic)
            in_train = np.isin(np.arange(len(ids)), parts["train"])
            bags = (make_bags(patients, groups, args.chunk, z) if args.instances == "chunk" else
                    make_pca_bags(patients, groups, in_train, args.chunk, z))
            train, val, test = ([bags[c] for c in part] for part in (fold.train, fold.val, fold.test))
            if not args.no_references:
                te = parts["test"]
                refs.append({"reference": "age", "seed": seed, "fold": fold.index, "test_c_index": c_index(
                    patients["survival_months"].to_numpy()[te], 1 - patients["censorship"].to_numpy()[te],
                    patients["age"].to_numpy(float)[te])})
                flat = np.stack([bags[c].features.reshape(-1).numpy() for c in ids]).astype(np.float64)
                for name, x in (("ridge_cox_genomic", genomic), ("ridge_cox_bag", flat)):
                    refs.append({"reference": name, "seed": seed, "fold": fold.index, **ridge_cox_cv(x, patients, parts)})
                print("  ".join(f"{r['reference']} {r['test_c_index']:.3f}" for r in refs[-3:]) + f"  (seed {seed} fold {fold.index})",
                      flush=True)
            for model_name, variant in ((m, v) for m in args.models for v in args.variants):
                seed_everything(seed)
                spec = ModelSpec(model_name, train[0].dim, args.bins, task="survival", r2t=VARIANTS[variant],
                                 options=aggregator_options(model_name, dim=args.dim, hidden=args.hidden,
                                                            dropout=args.dropout))
                model = build_model(spec)
                cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                                  accumulation=args.accumulation, patience=args.patience, seed=seed,
                                  num_threads=args.threads, progress=False, **VARIANT_TRAINING.get(variant, {}))
                t0 = time.perf_counter()
                task = SurvivalTask(args.bins)
                res = fit(model, task, train, val, test, cfg,
                          run_dir(args.out / tag, model_name, variant, seed, fold.index), spec=spec)
                if task.edges is None:  # a finished run was reloaded: fit() did not fit the task
                    task.fit(train)
                    load_selected(model, Path(res.out_dir) / "best.pt")
                train_c = evaluate(model, task, train)[0]["c_index"]  # the selected model
                rows.append({"model": model_name, "variant": variant, "seed": seed, "fold": fold.index,
                             "train_c_index": train_c, "n_params": sum(q.numel() for q in model.parameters()),
                             **res.as_dict()})
                print(f"{model_name:12s} {variant:10s} seed {seed} fold {fold.index}: test C-index "
                      f"{res.test['c_index']:.3f} (IPCW {res.test['c_index_ipcw']:.3f}, IBS {res.test['ibs']:.3f}; "
                      f"val {res.val['c_index']:.3f}, train {train_c:.3f}, best epoch {res.best_epoch}, "
                      f"{time.perf_counter() - t0:.1f}s)", flush=True)
    df = pd.DataFrame(rows)
    (args.out / tag).mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / tag / "folds.csv", index=False)
    print(f"\n{len(patients)} patients, {len(cols)} genomic columns, "
          f"{train[0].n} instances of width {train[0].dim} per bag; runs under {args.out / tag}\n")
    print_tables(df)
    print("\nΔ: the variant's test C-index minus plain's on the same (fold, seed) run; p: two-sided Wilcoxon "
          "signed-rank test (scipy, zero_method='wilcox': tied pairs dropped; the smallest p possible with 5 "
          "pairs is 0.0625, with 15 pairs 6e-5)")
    if refs:
        rf = pd.DataFrame(refs)
        rf.to_csv(args.out / tag / "references.csv", index=False)
        print("\n| reference (same folds) | val C-index | test C-index | train C-index | runs |\n|---|---|---|---|---|")
        for r, g in rf.groupby("reference", sort=False):
            cells = [_mean_std(g[k]) if k in g and g[k].notna().any() else "–"
                     for k in ("val_c_index", "test_c_index", "train_c_index")]
            print(f"| {r} | {' | '.join(cells)} | {len(g)} |")
    print(f"\nwall time {time.perf_counter() - started:.0f} s (seeds {' '.join(map(str, args.seeds))}, "
          f"{args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
