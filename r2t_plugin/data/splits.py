"""Patient-level, stratified k-fold splits with a validation part carved from each training part.

Every unit is a case (patient), never a slide, so no patient's slides are in two parts.
Folds are stratified by class (classification) or by event x time quantile (survival); the
validation part is stratified the same way. Splits are seeded, written as CSV
(``fold_{i}.csv`` with columns ``case_id,part``; part in train/val/test) plus a
``manifest.json`` with the parameters, and reused when the folder already holds them.

Folds that cannot train a model are refused before anything is written: a training part
without a case (``val_fraction`` too large), and, given each case's target
(:func:`fold_targets`), a training or validation part that lacks a class (survival: an
observed event); the error lists the cases per fold and part.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_write_text

__all__ = ["Fold", "SplitError", "make_folds", "survival_strata", "cohort_strata", "write_folds",
           "read_folds", "load_or_make_folds", "check_folds", "target_counts", "check_class_counts",
           "fold_targets", "check_fold_targets"]

PARTS = ("train", "val", "test")


class SplitError(ValueError):
    """Splits that leak, do not match the cohort, or cannot be made; names the folder/case."""


@dataclass(frozen=True)
class Fold:
    """Case ids of the three parts of one fold."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def survival_strata(times: Sequence[float], events: Sequence[int], n_quantiles: int = 4) -> list[str]:
    """Stratum per case: event (0/1) x quantile of time (quantiles over all cases)."""
    t = np.asarray(times, dtype=float)
    inner = np.quantile(t, np.linspace(0, 1, n_quantiles + 1)[1:-1]) if len(t) else []
    q = np.searchsorted(inner, t, side="right")
    return [f"e{int(e)}q{int(b)}" for e, b in zip(events, q)]


def cohort_strata(cohort) -> list[Hashable]:
    """Strata of a :class:`~r2t_plugin.data.cohort.Cohort`'s cases, in ``cohort.case_ids`` order."""
    if cohort.kind == "classification":
        return cohort.labels()
    return survival_strata(*cohort.survival())


def target_counts(cohort) -> dict[str, int]:
    """Cases per class, in class order (classification), or ``{"event": n, "censored": m}``."""
    if cohort.kind == "classification":
        found = Counter(cohort.labels())
        return {str(name): found.get(i, 0) for i, name in enumerate(cohort.classes)}
    events = sum(cohort.survival()[1])
    return {"event": events, "censored": len(cohort) - events}


def check_class_counts(counts: Mapping[str, int], k: int, explicit: bool = False) -> None:
    """Raise :class:`SplitError` naming each class with cases, but fewer than ``k`` (the
    folds): usually a label typo that made a class of its own. ``explicit``: the classes
    were listed by the user, so small ones are meant (the folds are still checked)."""
    small = {c: n for c, n in counts.items() if 0 < n < k}
    if explicit or not small:
        return
    names = ", ".join(f"{c!r} has {n} case(s)" for c, n in small.items())
    raise SplitError(f"class {names}, fewer than the {k} folds (each training and validation part needs one; "
                     f"classes: {dict(counts)}): fix the label if it is a typo, lower folds, or list the "
                     "classes under cohort.classes to keep it")


def fold_targets(cohort) -> tuple[dict[str, str], tuple[str, ...]]:
    """(target per case, the targets every training and validation part needs): the class
    name and the classes with cases (classification), or event / censored and the event."""
    if cohort.kind == "classification":
        targets = {c: str(cohort.classes[y]) for c, y in zip(cohort.case_ids, cohort.labels())}
        return targets, tuple(dict.fromkeys(str(x) for x in cohort.classes if str(x) in targets.values()))
    events = cohort.survival()[1]
    return {c: "event" if e else "censored" for c, e in zip(cohort.case_ids, events)}, ("event",)


def _fold_table(folds: Sequence["Fold"], targets: Mapping[str, str]) -> str:
    lines = []
    for fold in folds:
        parts = []
        for part in PARTS:
            ids = getattr(fold, part)
            found = Counter(targets.get(c, "?") for c in ids)
            parts.append(f"{part} {len(ids)} (" + ", ".join(f"{t!r} {n}" for t, n in sorted(found.items())) + ")")
        lines.append(f"  fold {fold.index}: " + ", ".join(parts))
    return "\n".join(lines)


def check_fold_targets(folds: Sequence["Fold"], targets: Mapping[str, str], need: Collection[str],
                       where: str = "splits") -> None:
    """Raise :class:`SplitError` if a fold's training or validation part has no case or
    lacks one of ``need``; the message lists every fold's cases per part and target."""
    faults = []
    for fold in folds:
        for part, label in (("train", "training"), ("val", "validation"), ("test", "test")):
            ids = getattr(fold, part)
            have = {targets.get(c) for c in ids}
            if not ids:
                faults.append(f"fold {fold.index}'s {label} part has no case")
            elif part != "test" and (lack := [t for t in need if t not in have]):
                faults.append(f"fold {fold.index}'s {label} part has no case of {', '.join(map(repr, lack))}")
    if faults:
        raise SplitError(f"{where}: no model can be trained and selected on these folds ({'; '.join(faults)}); "
                         "use fewer folds, another val_fraction or more cases. Cases per fold and part:\n"
                         + _fold_table(folds, targets))


def _groups(case_ids: Sequence[str], strata: Sequence[Hashable]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for c, s in zip(case_ids, strata):
        groups.setdefault(str(s), []).append(c)
    return dict(sorted(groups.items()))


def _carve(train: list[str], stratum: dict[str, str], fraction: float,
           rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Split ``train`` into (train, val) with ~``fraction`` in val, stratified (largest remainder)."""
    n_val = max(1, int(round(fraction * len(train))))
    groups = _groups(train, [stratum[c] for c in train])
    quota = {s: n_val * len(m) / len(train) for s, m in groups.items()}
    take = {s: int(np.floor(q)) for s, q in quota.items()}
    for s in sorted(quota, key=lambda s: quota[s] - take[s], reverse=True)[: n_val - sum(take.values())]:
        take[s] += 1
    val: set[str] = set()
    for s, members in groups.items():
        order = rng.permutation(len(members))
        val.update(members[i] for i in order[: take[s]])
    return [c for c in train if c not in val], [c for c in train if c in val]


def make_folds(case_ids: Sequence[str], strata: Sequence[Hashable], k: int = 5,
               val_fraction: float = 0.2, seed: int = 0) -> list[Fold]:
    """Stratified k-fold over cases; each training part gives ``val_fraction`` of itself to
    validation (stratified). Deterministic for a given ``seed``."""
    case_ids = [str(c) for c in case_ids]
    if len(set(case_ids)) != len(case_ids):
        dup = sorted({c for c in case_ids if case_ids.count(c) > 1})
        raise SplitError(f"duplicate case ids {dup[:10]}: splits are by case, list each once")
    if len(strata) != len(case_ids):
        raise SplitError(f"{len(strata)} strata for {len(case_ids)} cases")
    if not 2 <= k <= len(case_ids):
        raise SplitError(f"k must be between 2 and the number of cases ({len(case_ids)}), got {k}")
    if not 0 < val_fraction < 1:
        raise SplitError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    start = 0
    for members in _groups(case_ids, strata).values():
        for j, i in enumerate(rng.permutation(len(members))):
            fold_of[members[i]] = (start + j) % k
        start += len(members)
    stratum = {c: str(s) for c, s in zip(case_ids, strata)}
    folds = []
    for f in range(k):
        test = [c for c in case_ids if fold_of[c] == f]
        rest = [c for c in case_ids if fold_of[c] != f]
        train, val = _carve(rest, stratum, val_fraction, np.random.default_rng([seed, f]))
        if not train and len(rest) < 2:
            raise SplitError(f"{len(case_ids)} cases in {k} folds leave fold {f} a single case outside its test part, "
                             "none to train on once validation has one; use more cases or fewer folds")
        if not train:
            raise SplitError(f"val_fraction {val_fraction:g} leaves no training case: fold {f} has {len(rest)} "
                             f"case(s) outside its test part and {len(val)} go to validation; lower val_fraction "
                             "(or folds)")
        folds.append(Fold(f, tuple(train), tuple(val), tuple(test)))
    check_folds(folds)
    return folds


def check_folds(folds: Sequence[Fold], case_ids: Sequence[str] | None = None, where: str = "splits",
                disjoint_tests: bool = True) -> None:
    """Raise :class:`SplitError` if a case is in two parts of a fold, in two test parts (unless
    ``disjoint_tests`` is False: repeated random splits such as CLAM's), or (with
    ``case_ids``) if a fold does not cover exactly ``case_ids``."""
    tested: dict[str, int] = {}
    for fold in folds:
        parts = {p: set(getattr(fold, p)) for p in PARTS}
        for i, a in enumerate(PARTS):
            for b in PARTS[i + 1:]:
                both = parts[a] & parts[b]
                if both:
                    raise SplitError(f"{where}: fold {fold.index}: case(s) {sorted(both)[:10]} "
                                     f"in both {a} and {b}")
        for c in fold.test if disjoint_tests else ():
            if c in tested:
                raise SplitError(f"{where}: case {c!r} is in the test part of folds {tested[c]} and {fold.index}")
            tested[c] = fold.index
        if case_ids is not None:
            have, want = set().union(*parts.values()), set(case_ids)
            if have != want:
                raise SplitError(f"{where}: fold {fold.index} does not match the cohort: "
                                 f"missing {sorted(want - have)[:10]}, unknown {sorted(have - want)[:10]}; "
                                 "delete the folder (or use another) to make new splits")


def write_folds(folds: Sequence[Fold], directory: str | os.PathLike, manifest: dict | None = None) -> Path:
    """Write ``fold_{i}.csv`` (``case_id,part``) and ``manifest.json`` atomically."""
    directory = Path(directory)
    for fold in folds:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["case_id", "part"])
        for part in PARTS:
            for c in getattr(fold, part):
                w.writerow([c, part])
        atomic_write_text(directory / f"fold_{fold.index}.csv", buf.getvalue())
    info = {"k": len(folds), **(manifest or {})}
    atomic_write_text(directory / "manifest.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory


def read_folds(directory: str | os.PathLike) -> list[Fold]:
    """Read the folds written by :func:`write_folds` (and check them for leaks)."""
    directory = Path(directory)
    files = sorted(directory.glob("fold_*.csv"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise SplitError(f"{directory}: no fold_*.csv files")
    folds = []
    for i, path in enumerate(files):
        if path.stem != f"fold_{i}":
            raise SplitError(f"{directory}: fold files are not numbered 0..{len(files) - 1} ({path.name})")
        parts: dict[str, list[str]] = {p: [] for p in PARTS}
        with open(path, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                if row.get("part") not in parts or not row.get("case_id"):
                    raise SplitError(f"{path}: line {n}: expected case_id and part in {PARTS}, got {row}")
                parts[row["part"]].append(row["case_id"])
        folds.append(Fold(i, *(tuple(parts[p]) for p in PARTS)))
    manifest = directory / "manifest.json"
    saved = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    check_folds(folds, where=str(directory), disjoint_tests=saved.get("disjoint_tests", True))
    return folds


def load_or_make_folds(directory: str | os.PathLike, case_ids: Sequence[str], strata: Sequence[Hashable],
                       k: int = 5, val_fraction: float = 0.2, seed: int = 0,
                       targets: tuple[Mapping[str, str], Collection[str]] | None = None) -> list[Fold]:
    """Reuse the folds in ``directory`` if there are any (checked against ``case_ids`` and
    the parameters), else make, write and return new ones. ``targets``: (target per case,
    targets each training and validation part needs), as :func:`fold_targets` gives them;
    the folds are checked with :func:`check_fold_targets` before they are written."""
    directory = Path(directory)
    params = {"k": k, "val_fraction": val_fraction, "seed": seed}
    if (directory / "manifest.json").is_file():
        with open(directory / "manifest.json", encoding="utf-8") as fh:
            saved = json.load(fh)
        differ = {key: (saved.get(key), v) for key, v in params.items() if saved.get(key) != v}
        if differ:
            raise SplitError(f"{directory}: existing splits were made with other parameters "
                             f"(saved, asked): {differ}; delete the folder or use another")
        folds = read_folds(directory)
        check_folds(folds, case_ids, where=str(directory))
        if targets is not None:
            check_fold_targets(folds, *targets, where=str(directory))
        return folds
    folds = make_folds(case_ids, strata, k, val_fraction, seed)
    if targets is not None:
        check_fold_targets(folds, *targets)
    write_folds(folds, directory, params)
    return folds
