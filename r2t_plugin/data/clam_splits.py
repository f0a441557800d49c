"""CLAM's split files as folds, so a comparison reuses the folds of a CLAM experiment.

CLAM's ``create_splits_seq.py`` writes, for fold ``i``, ``splits_{i}.csv``: pandas' unnamed
index column, then ``train``, ``val`` and ``test`` columns of slide ids, the shorter columns
padded with empty cells (next to it ``splits_{i}_bool.csv`` and ``splits_{i}_descriptor.csv``,
which are not read here). Its folds are repeated random splits, so the test parts of two
folds may share cases; inside one fold no case may have slides in two parts.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from .splits import PARTS, Fold, SplitError, check_folds
from .wsi import WSI_SUFFIXES

__all__ = ["clam_split_files", "read_clam_splits"]

_SPLIT_FILE = re.compile(r"^splits_(\d+)\.csv$")
_SUFFIXES = (*WSI_SUFFIXES, ".h5", ".pt", ".npy")


def clam_split_files(paths: Sequence[Path]) -> list[Path]:
    """The CLAM split files of ``paths``: one folder (its ``splits_{i}.csv``, i = 0..k-1) or the
    files themselves, in fold order. Raises :class:`SplitError` naming what is missing."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        found = {int(m.group(1)): p for p in folder.iterdir() if (m := _SPLIT_FILE.match(p.name))}
        if not found:
            raise SplitError(f"{folder}: no CLAM splits_{{i}}.csv files (as create_splits_seq.py writes them)")
        if sorted(found) != list(range(len(found))):
            raise SplitError(f"{folder}: CLAM split files are not numbered 0..{len(found) - 1} "
                             f"(found splits_{sorted(found)}.csv)")
        return [found[i] for i in range(len(found))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SplitError(f"no such split file(s) {missing}; give a folder of CLAM splits_{{i}}.csv or the files")
    return paths


def _key(slide_id: str) -> str:
    """A slide id without a slide-file or feature-file suffix (how CLAM and tables differ)."""
    path = Path(slide_id.strip())
    return str(path.with_suffix("")) if path.suffix.lower() in _SUFFIXES else str(path)


def _read_parts(path: Path) -> dict[str, list[str]]:
    """``{part: slide ids}`` of one CLAM ``splits_{i}.csv``."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError(f"{path}: unreadable split file ({exc})") from exc
    header = [h.strip() for h in rows[0]] if rows else []
    if set(header[1:]) == set(PARTS) and rows[1:2] and rows[1][1].strip() in ("True", "False"):
        raise SplitError(f"{path}: CLAM's boolean layout (splits_{{i}}_bool.csv); name splits_{{i}}.csv instead")
    if not set(PARTS) <= set(header):
        raise SplitError(f"{path}: expected CLAM's columns train, val, test (got {header})")
    cols = {p: header.index(p) for p in PARTS}
    return {p: [r[i].strip() for r in rows[1:] if i < len(r) and r[i].strip()] for p, i in cols.items()}


def read_clam_splits(files: Sequence[Path], cohort, case_ids: Sequence[str]) -> list[Fold]:
    """Folds from CLAM split files, mapped from slide ids to the cases of ``cohort``.

    ``case_ids``: the cases to use (e.g. those left after the pre-flight check); cases of the
    cohort table not among them are left out of every fold. Raises :class:`SplitError`
    naming the file and the slide or case when a slide is not in the cohort table, a case
    has slides in two parts of one fold, a case to use is in no part, or a part is empty.
    """
    case_of: dict[str, str] = {}
    for row in cohort.rows:
        if row.slide_id and row.case_id:
            case_of.setdefault(_key(row.slide_id), row.case_id)
    folds = []
    for index, path in enumerate(files):
        where: dict[str, dict[str, list[str]]] = {}  # case -> part -> slides
        for part, slides in _read_parts(Path(path)).items():
            unknown = [s for s in slides if _key(s) not in case_of]
            if unknown:
                raise SplitError(f"{path}: slide id(s) {unknown[:5]} in {part} are not in the cohort table "
                                 f"{cohort.source}")
            for s in slides:
                where.setdefault(case_of[_key(s)], {}).setdefault(part, []).append(s)
        for case, parts in where.items():
            if len(parts) > 1:
                detail = "; ".join(f"{p}: {', '.join(v)}" for p, v in parts.items())
                raise SplitError(f"{path}: case {case!r} has slides in {' and '.join(parts)} ({detail}): "
                                 "patient leakage; put all of a case's slides in one part")
        absent = [c for c in case_ids if c not in where]
        if absent:
            raise SplitError(f"{path}: case(s) {absent[:10]} of the cohort are in no part of this fold; "
                             "use the cohort table the CLAM splits were made from")
        parts = {p: tuple(c for c in case_ids if p in where.get(c, {})) for p in PARTS}
        empty = [p for p in PARTS if not parts[p]]
        if empty:
            raise SplitError(f"{path}: the {' and '.join(empty)} part(s) hold no case of the cohort")
        folds.append(Fold(index, parts["train"], parts["val"], parts["test"]))
    check_folds(folds, case_ids, where="splits", disjoint_tests=False)
    return folds
