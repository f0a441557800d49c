"""Cohort tables and case-level bags.

A cohort is a CSV with ``case_id``, ``slide_id`` and either a label column (strings or
integers, mapped to class indices in a recorded order) or survival columns: ``time`` +
``event`` (1 = event observed) or ``survival_months`` + ``censorship`` (1 = censored); the
column names are given to :class:`Cohort`. All slides of one case form one case-level bag;
their coordinates are shifted along x so that the slides sit side by side, one empty
patch column apart, on one common patch lattice (``meta["slide_offsets"]`` undoes it).

Bags are read lazily, one case at a time, optionally kept in memory (``cache=True``).
Check the whole cohort with :func:`r2t_plugin.data.preflight.preflight` before training.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..bag import BagError, FeatureBag
from ..geometry import infer_patch_size
from .wsi import WSI_SUFFIXES

__all__ = ["Cohort", "CohortRow", "CaseBags", "CohortError", "assemble_case", "valid_time"]

PathLike = str | os.PathLike
_FEATURE_SUFFIXES = (".h5", ".pt", ".npy")
_SUBDIRS = ("", "h5_files", "pt_files")


class CohortError(ValueError):
    """A cohort table that cannot be used as configured (missing columns, bad options)."""


def _label_key(value: Any) -> str | None:
    """A label as a comparable string ("1" for 1, 1.0 and "1"); None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


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
    per pixel (used by readers whose coordinates are in micrometres).
    """

    def __init__(self, table: pd.DataFrame | PathLike, feature_dirs: PathLike | Sequence[PathLike], *,
                 label_col: str | None = None, classes: Sequence[Any] | None = None,
                 time_col: str | None = None, event_col: str | None = None,
                 censorship_col: str | None = None, format: str | None = None,
                 mpp_col: str | None = None, cache: bool = False) -> None:
        if isinstance(table, pd.DataFrame):
            self.source = "<table>"
            df = table.copy()
        else:
            self.source = str(table)
            df = pd.read_csv(table, dtype={"case_id": str, "slide_id": str}, keep_default_na=False,
                             na_values={c: ["", "NA", "NaN", "nan"] for c in
                                        (label_col, time_col, event_col, censorship_col, mpp_col) if c})
        self.feature_dirs = [Path(feature_dirs)] if isinstance(feature_dirs, (str, os.PathLike)) \
            else [Path(d) for d in feature_dirs]
        if (label_col is None) == (time_col is None):
            raise CohortError(f"{self.source}: give either label_col (classification) or time_col (survival)")
        if time_col is not None and (event_col is None) == (censorship_col is None):
            raise CohortError(f"{self.source}: survival needs exactly one of event_col (1 = event) "
                              "or censorship_col (1 = censored)")
        needed = ["case_id", "slide_id", *(c for c in (label_col, time_col, event_col,
                                                         censorship_col, mpp_col) if c)]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise CohortError(f"{self.source}: missing column(s) {missing}; has {list(df.columns)}")
        self.kind = "classification" if label_col else "survival"
        self.label_col, self.time_col = label_col, time_col
        self.event_col, self.censorship_col, self.mpp_col = event_col, censorship_col, mpp_col
        self.format, self.cache = format, cache
        self.rows = [self._row(r) for r in df.to_dict("records")]
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
        self._cached: dict[str, FeatureBag] = {}

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
        case = "" if rec["case_id"] is None else str(rec["case_id"]).strip()
        slide = "" if rec["slide_id"] is None else str(rec["slide_id"]).strip()
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
        return [self.target(c)["label"] for c in (case_ids or self.case_ids)]

    def survival(self, case_ids: Sequence[str] | None = None) -> tuple[list[float], list[int]]:
        """(times, events) of ``case_ids`` (default: all cases)."""
        t = [self.target(c) for c in (case_ids or self.case_ids)]
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
        new._cached = {c: b for c, b in self._cached.items() if c in keep}
        return new

    # ------------------------------------------------------------------ files
    def slide_path(self, slide_id: str) -> Path | None:
        """The feature file of ``slide_id`` in the feature folders (``.h5`` before ``.pt``
        before ``.npy``; also under ``h5_files/`` and ``pt_files/``), or None."""
        if slide_id in self._paths:
            return self._paths[slide_id]
        stems = [slide_id]
        if Path(slide_id).suffix.lower() in WSI_SUFFIXES:
            stems.append(Path(slide_id).stem)
        candidates = (d / sub / f"{stem}{ext}" for d in self.feature_dirs for sub in _SUBDIRS
                      for ext in _FEATURE_SUFFIXES for stem in stems)
        found = next((p for p in candidates if p.is_file()), None)
        self._paths[slide_id] = found
        return found

    def read_slide(self, slide_id: str, mpp: float | None = None) -> FeatureBag:
        """Read one slide's features (errors name the slide and file)."""
        from .readers import ReaderError, read_bag

        path = self.slide_path(slide_id)
        if path is None:
            where = ", ".join(str(d) for d in self.feature_dirs)
            raise ReaderError(f"slide {slide_id!r}: no feature file found in {where}")
        return read_bag(path, format=self.format, mpp=mpp)

    def slide_mpp(self, case_id: str, slide_id: str) -> float | None:
        """Level-0 microns per pixel of a slide from the table's ``mpp_col`` (None if not given)."""
        for r in self._cases[case_id]:
            if r.slide_id == slide_id and r.mpp is not None and not math.isnan(r.mpp):
                return r.mpp
        return None

    def load_case(self, case_id: str) -> FeatureBag:
        """The case-level bag of ``case_id`` with its target."""
        if case_id in self._cached:
            return self._cached[case_id]
        if case_id not in self._cases:
            raise CohortError(f"{self.source}: unknown case id {case_id!r}")
        slides = self.slides(case_id)
        if not slides:
            raise CohortError(f"{self.source}: case {case_id!r} has no slides")
        bags = []
        for s in slides:
            bag = self.read_slide(s, self.slide_mpp(case_id, s))
            bag.slide_ids = (s,)  # the table's id, not the file's name
            bags.append(bag)
        return self.keep(case_id, assemble_case(case_id, bags, **self.target(case_id)))

    def keep(self, case_id: str, bag: FeatureBag) -> FeatureBag:
        """Remember ``bag`` as the bag of ``case_id`` when caching is on; returns ``bag``."""
        if self.cache:
            self._cached[case_id] = bag
        return bag

    def forget(self, case_id: str) -> None:
        """Drop the cached bag of ``case_id`` (if any)."""
        self._cached.pop(case_id, None)

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


def assemble_case(case_id: str, bags: Sequence[FeatureBag], **targets: Any) -> FeatureBag:
    """One case-level bag from its slides' bags.

    Slides after the first are shifted along x to start two patches right of the previous
    slide's right edge, and along y onto the first slide's top row, so every slide lies on
    one patch lattice without touching another. Raises :class:`BagError` naming the case
    when the slides disagree (feature width, coordinates present or not, patch size, unit).
    """
    who = f"case {case_id!r}"
    if not bags:
        raise BagError(f"{who}: no slides")
    widths = {b.dim for b in bags}
    if len(widths) > 1:
        raise BagError(f"{who}: slides have different feature widths {sorted(widths)}")
    slide_ids = tuple(s for b in bags for s in b.slide_ids)
    meta: dict[str, Any] = {"slides": list(slide_ids),
                            "paths": [b.meta.get("path") for b in bags],
                            "formats": [b.meta.get("format") for b in bags]}
    units = {b.meta.get("coord_unit") for b in bags if b.coords is not None}
    if len(units) > 1:
        raise BagError(f"{who}: slides have coordinates in different units {sorted(map(str, units))}")
    if units:
        meta["coord_unit"] = units.pop()
    has = [b.coords is not None for b in bags]
    if any(has) and not all(has):
        raise BagError(f"{who}: slides {[s for b, h in zip(bags, has) if not h for s in b.slide_ids]} "
                       "have no coordinates but the others do")
    sizes = {b.patch_size for b in bags if b.patch_size is not None}
    if len(sizes) > 1:
        raise BagError(f"{who}: slides have different level-0 patch sizes {sorted(sizes)}")
    patch = sizes.pop() if sizes else None
    features = torch.cat([b.features for b in bags]) if len(bags) > 1 else bags[0].features
    coords = None
    if all(has):
        step = patch if patch is not None else infer_patch_size(torch.cat([b.coords for b in bags]))
        placed, offsets = [bags[0].coords], [(0.0, 0.0)]
        top = float(bags[0].coords[:, 1].min())
        for b in bags[1:]:
            c = b.coords.to(torch.float64)
            dx = float(placed[-1][:, 0].max()) + 2 * step - float(c[:, 0].min())
            dy = top - float(c[:, 1].min())
            placed.append((c + torch.tensor([dx, dy], dtype=torch.float64)).to(bags[0].coords.dtype))
            offsets.append((dx, dy))
        coords = torch.cat(placed) if len(placed) > 1 else placed[0]
        meta["slide_offsets"] = offsets
    bounds, start = [], 0
    for b in bags:
        bounds.append((start, start + b.n))
        start += b.n
    meta["slide_slices"] = bounds
    return FeatureBag(features=features, coords=coords, patch_size=patch, slide_ids=slide_ids,
                      case_id=case_id, meta=meta, **targets)
