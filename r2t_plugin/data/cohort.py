"""Cohort tables and case-level bags.

A cohort is a CSV with a case column and a slide column (``case_id`` and ``slide_id`` by
default; STAMP's tables: ``PATIENT`` and ``FILENAME``) and either a label column (strings or
integers, mapped to class indices in a recorded order) or survival columns: ``time`` +
``event`` (1 = event observed) or ``survival_months`` + ``censorship`` (1 = censored); the
column names are given to :class:`Cohort`. All slides of one case form one case-level bag;
their coordinates are shifted along x so that the slides sit side by side, one empty
patch column apart, on one common patch lattice (``meta["slide_offsets"]`` undoes it).

Slide ids may carry a slide-file suffix (``.svs``) or a feature-file one (``.h5``, as in
STAMP's ``FILENAME``). A feature folder may be a TRIDENT job folder
(:mod:`r2t_plugin.data.trident`). A slide whose file holds no patch is skipped with a
:class:`EmptySlideWarning`; its case keeps its other slides.

Bags are read lazily, one case at a time, optionally kept in memory up to a byte budget
(``cache=True`` or ``cache="8GB"``; ``cache_dtype="float16"`` halves it: see
:mod:`r2t_plugin.data.cache`).
Check the whole cohort with :func:`r2t_plugin.data.preflight.preflight` before training.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import pandas as pd

from ..bag import FeatureBag
from .cache import as_float32, make_cache
from .case import assemble_case
from .trident import TridentLayoutError, resolve_feature_dirs
from .wsi import WSI_SUFFIXES

__all__ = ["Cohort", "CohortRow", "CaseBags", "CohortError", "EmptySlideWarning", "assemble_case", "valid_time"]

PathLike = str | os.PathLike
_FEATURE_SUFFIXES = (".h5", ".pt", ".npy")
_SUBDIRS = ("", "h5_files", "pt_files")
_NAME_BYTES = 250  # NAME_MAX (255) less the longest feature suffix we append (".npy")


class CohortError(ValueError):
    """A cohort table that cannot be used as configured (missing columns, bad options)."""


class EmptySlideWarning(UserWarning):
    """A slide whose feature file holds no patch, left out of its case."""


def _label_key(value: Any) -> str | None:
    """A label as a comparable string ("1" for 1, 1.0 and "1"); None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _check_slide_ids(rows: Sequence["CohortRow"], source: str) -> None:
    """Refuse slide ids that would name a file outside the feature folders (absolute, or
    climbing out with ``..``) or that no file system can hold (a part over 250 bytes)."""
    escaping = sorted({r.slide_id for r in rows if r.slide_id and (PurePath(r.slide_id).is_absolute()
                                                                    or ".." in PurePath(r.slide_id).parts)})
    if escaping:
        raise CohortError(f"{source}: slide id(s) {escaping[:5]} point outside the feature folder(s); give "
                          "each slide id as a file name (or sub-path) inside the features folder")
    too_long = sorted({r.slide_id for r in rows
                       if any(len(part.encode()) > _NAME_BYTES for part in PurePath(r.slide_id).parts)})
    if too_long:
        shown = [f"{s[:40]}... ({len(s)} characters)" for s in too_long[:3]]
        raise CohortError(f"{source}: slide id(s) {shown} are too long for a file name (at most "
                          f"{_NAME_BYTES} bytes per name); shorten them in the table and rename their files")


def valid_time(t: float | None) -> bool:
    """Whether ``t`` is a usable survival time (finite, not negative)."""
    return t is not None and math.isfinite(t) and t >= 0


def _sort_classes(keys: set[str]) -> list[str]:
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


@dataclass(frozen=True)
class CohortRow:
    """One row of the table: ids, the target as read (label key, or time and event), mpp."""

    case_id: str
    slide_id: str
    label: str | None
    time: float | None
    event: float | None
    mpp: float | None


class Cohort:
    """A cohort table plus the folders holding its feature files.

    Classification: give ``label_col`` (and optionally ``classes``, the class order; by
    default the sorted distinct labels). Survival: give ``time_col`` and exactly one of
    ``event_col`` (1 = event) or ``censorship_col`` (1 = censored). ``format`` names a
    registered reader (default: sniffed per file); ``mpp_col`` a column of level-0 microns
    per pixel (used by readers whose coordinates are in micrometres). ``case_col`` /
    ``slide_col`` name the id columns; ``encoder`` picks ``features_<encoder>/`` in a
    TRIDENT job folder (needed only when it holds several). ``cache`` / ``cache_dtype``: keep
    the bags read in memory (:func:`~r2t_plugin.data.cache.make_cache`; one cache per
    process, shared with :meth:`subset`).
    """

    def __init__(self, table: pd.DataFrame | PathLike, feature_dirs: PathLike | Sequence[PathLike], *,
                 label_col: str | None = None, classes: Sequence[Any] | None = None,
                 time_col: str | None = None, event_col: str | None = None,
                 censorship_col: str | None = None, format: str | None = None,
                 mpp_col: str | None = None, cache: bool | int | str = False, case_col: str = "case_id",
                 slide_col: str = "slide_id", encoder: str | None = None,
                 cache_dtype: str = "float32") -> None:
        if isinstance(table, pd.DataFrame):
            self.source = "<table>"
            df = table.copy()
        else:
            self.source = str(table)
            try:
                df = pd.read_csv(table, dtype={case_col: str, slide_col: str}, keep_default_na=False,
                                 na_values={c: ["", "NA", "NaN", "nan"] for c in
                                            (label_col, time_col, event_col, censorship_col, mpp_col) if c})
            except pd.errors.EmptyDataError as exc:
                raise CohortError(f"{self.source}: the file is empty; write a header line (case_id, "
                                  "slide_id and the target columns) and one row per slide") from exc
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                why = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
                raise CohortError(f"{self.source}: not a readable CSV table ({why}); save it as UTF-8 CSV "
                                  "with one header line and the same number of fields on every row") from exc
        dirs = [Path(feature_dirs)] if isinstance(feature_dirs, (str, os.PathLike)) \
            else [Path(d) for d in feature_dirs]
        try:
            self.feature_dirs = resolve_feature_dirs(dirs, encoder)
        except TridentLayoutError as exc:
            raise CohortError(str(exc)) from exc
        self.case_col, self.slide_col = case_col, slide_col
        if (label_col is None) == (time_col is None):
            raise CohortError(f"{self.source}: give either label_col (classification) or time_col (survival)")
        if time_col is not None and (event_col is None) == (censorship_col is None):
            raise CohortError(f"{self.source}: survival needs exactly one of event_col (1 = event) "
                              "or censorship_col (1 = censored)")
        needed = [case_col, slide_col, *(c for c in (label_col, time_col, event_col,
                                                         censorship_col, mpp_col) if c)]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise CohortError(f"{self.source}: missing column(s) {missing}; the table has {list(df.columns)}: "
                              "rename the column in the table or name the right one in the config")
        self.kind = "classification" if label_col else "survival"
        self.label_col, self.time_col = label_col, time_col
        self.event_col, self.censorship_col, self.mpp_col = event_col, censorship_col, mpp_col
        self.format = format
        try:
            self.cache = make_cache(cache, cache_dtype)
        except ValueError as exc:
            raise CohortError(f"{self.source}: cache: {exc}") from exc
        self.rows = [self._row(r) for r in df.to_dict("records")]
        if not self.rows:
            raise CohortError(f"{self.source}: the table has a header but no rows; add one row per slide")
        _check_slide_ids(self.rows, self.source)
        if self.kind == "classification":
            found = {r.label for r in self.rows if r.label is not None}
            self.classes = ([_label_key(c) for c in classes] if classes is not None
                            else _sort_classes(found))
        else:
            self.classes = []
        self._cases: dict[str, list[CohortRow]] = {}
        for r in self.rows:
            if r.case_id:
                self._cases.setdefault(r.case_id, []).append(r)
        self._paths: dict[str, Path | None] = {}
        self._formats: dict[Path, str] = {}  # the reader sniffed for each file
        self._empty: set[str] = set()  # slides already found to hold no patch

    def _row(self, rec: dict[str, Any]) -> CohortRow:
        def num(col: str | None) -> float | None:
            if col is None:
                return None
            v = rec[col]
            try:
                v = float(v)
            except (TypeError, ValueError):
                return float("nan")
            return v

        event = num(self.event_col) if self.event_col else None
        if self.censorship_col:
            c = num(self.censorship_col)
            event = 1.0 - c if c is not None else None
        case = "" if rec[self.case_col] is None else str(rec[self.case_col]).strip()
        slide = "" if rec[self.slide_col] is None else str(rec[self.slide_col]).strip()
        return CohortRow(case, slide, _label_key(rec[self.label_col]) if self.label_col else None,
                    num(self.time_col), event, num(self.mpp_col))

    # ------------------------------------------------------------------ table
    @property
    def case_ids(self) -> list[str]:
        """Case ids in order of first appearance."""
        return list(self._cases)

    def case_rows(self, case_id: str) -> list[CohortRow]:
        """The table rows of ``case_id``, in table order."""
        return list(self._cases[case_id])

    def slides(self, case_id: str) -> list[str]:
        """Slide ids of ``case_id`` (rows without a slide id left out)."""
        return [r.slide_id for r in self._cases[case_id] if r.slide_id]

    def target(self, case_id: str) -> dict[str, Any]:
        """``{"label": int}`` or ``{"time": float, "event": int}`` of a case (first row)."""
        r = self._cases[case_id][0]
        who = f"{self.source}: case {case_id!r}"
        if self.kind == "classification":
            if r.label not in self.classes:
                raise CohortError(f"{who}: label {r.label!r} is not one of the classes {self.classes}")
            return {"label": self.classes.index(r.label)}
        if not valid_time(r.time) or r.event not in (0.0, 1.0):
            raise CohortError(f"{who}: invalid survival target time={r.time} event={r.event}")
        return {"time": float(r.time), "event": int(r.event)}

    def labels(self, case_ids: Sequence[str] | None = None) -> list[int]:
        """Class indices of ``case_ids`` (default: all cases)."""
        return [self.target(c)["label"] for c in (self.case_ids if case_ids is None else case_ids)]

    def survival(self, case_ids: Sequence[str] | None = None) -> tuple[list[float], list[int]]:
        """(times, events) of ``case_ids`` (default: all cases)."""
        t = [self.target(c) for c in (self.case_ids if case_ids is None else case_ids)]
        return [x["time"] for x in t], [x["event"] for x in t]

    def subset(self, case_ids: Sequence[str]) -> "Cohort":
        """The same cohort restricted to ``case_ids`` (class order kept)."""
        keep = set(case_ids)
        unknown = keep - set(self._cases)
        if unknown:
            raise CohortError(f"{self.source}: unknown case id(s) {sorted(unknown)[:10]}")
        new = object.__new__(Cohort)
        new.__dict__.update(self.__dict__)
        new.rows = [r for r in self.rows if r.case_id in keep]
        new._cases = {c: rs for c, rs in self._cases.items() if c in keep}
        return new

    # ------------------------------------------------------------------ files
    def slide_path(self, slide_id: str) -> Path | None:
        """The feature file of ``slide_id`` in the feature folders (``.h5`` before ``.pt``
        before ``.npy``; also under ``h5_files/`` and ``pt_files/``), or None. A slide-file
        or feature-file suffix on the id (``.svs``, ``.h5``) may be left off the file name."""
        if slide_id in self._paths:
            return self._paths[slide_id]
        stems = [slide_id]
        if Path(slide_id).suffix.lower() in (*WSI_SUFFIXES, *_FEATURE_SUFFIXES):
            stems.append(str(Path(slide_id).with_suffix("")))
        candidates = (d / sub / f"{stem}{ext}" for d in self.feature_dirs for sub in _SUBDIRS
                      for ext in _FEATURE_SUFFIXES for stem in stems)
        found = next((p for p in candidates if p.is_file()), None)
        self._paths[slide_id] = found
        return found

    def read_slide(self, slide_id: str, mpp: float | None = None) -> FeatureBag:
        """Read one slide's features (errors name the slide and file)."""
        from .readers import ReaderError, find_reader, read_bag

        path = self.slide_path(slide_id)
        if path is None:
            where = ", ".join(str(d) for d in self.feature_dirs)
            raise ReaderError(f"slide {slide_id!r}: no feature file found in {where}")
        if self.format is None and path not in self._formats:
            self._formats[path] = find_reader(path).name  # sniffed once per file, not every epoch
        return read_bag(path, format=self.format or self._formats[path], mpp=mpp)

    def slide_mpp(self, case_id: str, slide_id: str) -> float | None:
        """Level-0 microns per pixel of a slide from the table's ``mpp_col`` (None if not given)."""
        for r in self._cases[case_id]:
            if r.slide_id == slide_id and r.mpp is not None and not math.isnan(r.mpp):
                return r.mpp
        return None

    def load_case(self, case_id: str) -> FeatureBag:
        """The case-level bag of ``case_id`` with its target (float32 features)."""
        return as_float32(self.stored_case(case_id))

    def stored_case(self, case_id: str) -> FeatureBag:
        """The bag of ``case_id`` as the cache keeps it: like :meth:`load_case`, with
        float16 features under ``cache_dtype="float16"`` (the training loop's form)."""
        if case_id not in self._cases:  # before the cache, which a subset shares with its cohort
            raise CohortError(f"{self.source}: unknown case id {case_id!r}")
        hit = self.cache.get(case_id) if self.cache is not None else None
        if hit is not None:
            return hit
        slides = self.slides(case_id)
        if not slides:
            raise CohortError(f"{self.source}: case {case_id!r} has no slides")
        from .readers import EmptySlideError

        bags = []
        for s in slides:
            if s in self._empty:
                continue
            try:
                bag = self.read_slide(s, self.slide_mpp(case_id, s))
            except EmptySlideError as exc:
                self.skip_empty(case_id, s, exc)
                continue
            bag.slide_ids = (s,)  # the table's id, not the file's name
            bags.append(bag)
        if not bags:
            raise CohortError(f"{self.source}: case {case_id!r}: every slide's feature file holds no patch")
        return self.keep(case_id, assemble_case(case_id, bags, **self.target(case_id)))

    def skip_empty(self, case_id: str, slide_id: str, exc: Exception) -> None:
        """Leave out a slide without patches from now on, with one warning naming it."""
        if slide_id not in self._empty:
            self._empty.add(slide_id)
            warnings.warn(f"{self.source}: case {case_id!r}: slide {slide_id!r} left out: {exc}",
                          EmptySlideWarning, stacklevel=3)

    def keep(self, case_id: str, bag: FeatureBag) -> FeatureBag:
        """Remember ``bag`` as the bag of ``case_id`` when caching is on (and it fits the
        budget); returns it in the cache's storage form (``bag`` itself without a cache)."""
        if self.cache is None:
            return bag
        stored = self.cache.compact(bag)
        self.cache.put(case_id, stored)
        return stored

    def forget(self, case_id: str) -> None:
        """Drop the cached bag of ``case_id`` (if any)."""
        if self.cache is not None:
            self.cache.drop(case_id)

    def bags(self, case_ids: Sequence[str] | None = None) -> "CaseBags":
        """A lazy sequence of case-level bags (read when indexed)."""
        return CaseBags(self, list(case_ids if case_ids is not None else self.case_ids))

    def __len__(self) -> int:
        return len(self._cases)

    def __repr__(self) -> str:
        return f"Cohort({self.source!r}, {self.kind}, {len(self)} cases)"


class CaseBags(Sequence):
    """Case-level bags of a cohort, read one at a time when indexed."""

    def __init__(self, cohort: Cohort, case_ids: list[str]) -> None:
        self.cohort, self.case_ids = cohort, case_ids

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return CaseBags(self.cohort, self.case_ids[i])
        return self.cohort.load_case(self.case_ids[i])

    def stored(self, i: int) -> FeatureBag:
        """Bag ``i`` in the cache's storage form (:meth:`Cohort.stored_case`)."""
        return self.cohort.stored_case(self.case_ids[i])
