"""Pre-flight check: read the whole cohort before any training and report every problem.

Problems found: rows without a case id, cases without slides, duplicate slide ids, unknown
or missing labels, invalid survival targets, targets that differ between the slides of a
case, missing or unreadable feature files, empty bags, NaN/Inf features, feature widths that
differ from the cohort's, slides of one case that cannot form one bag, and the data checks
of :mod:`r2t_plugin.data.checks` (features beyond float32, absurd patch grids, patches
sharing a grid cell, a case without coordinates among cases with them). All of them are
raised together in one :class:`PreflightError`; with ``skip_missing=True`` the affected
cases are dropped instead, with a :class:`PreflightWarning` listing them. A slide whose
file holds no patch is left out of its case with an ``EmptySlideWarning`` (a problem only
when every slide of the case is empty).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

from ..bag import FeatureBag
from .checks import feature_faults, grid_faults, mixed_coordinates
from .cohort import Cohort, assemble_case, valid_time
from .readers import EmptySlideError

__all__ = ["Problem", "PreflightError", "PreflightWarning", "PreflightReport", "preflight"]


@dataclass(frozen=True)
class Problem:
    """One problem, with the case, slide and file it concerns where known."""

    message: str
    case_id: str | None = None
    slide_id: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = [f"case {self.case_id!r}" if self.case_id else "",
                 f"slide {self.slide_id!r}" if self.slide_id else "",
                 f"({self.path})" if self.path else ""]
        prefix = " ".join(w for w in where if w)
        return f"{prefix}: {self.message}" if prefix else self.message


class PreflightError(ValueError):
    """The cohort has problems; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"pre-flight check of {source} found {len(problems)} problem(s):\n{lines}")


class PreflightWarning(UserWarning):
    """Cases dropped by a pre-flight check with ``skip_missing=True``, or slides whose
    features are large enough to trouble float32 training (the report's ``notices``)."""


@dataclass
class PreflightReport:
    """The checked cohort (without dropped cases), its feature width and what was dropped."""

    cohort: Cohort
    feature_dim: int | None
    problems: list[Problem] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    n_instances: dict[str, int] = field(default_factory=dict)
    notices: list[Problem] = field(default_factory=list)  # warnings only (large feature values)


def _table_problems(cohort: Cohort) -> list[Problem]:
    out: list[Problem] = []
    for i, r in enumerate(cohort.rows):
        if not r.case_id:
            out.append(Problem(f"row {i + 2} of the table has no case id", slide_id=r.slide_id or None))
    seen: dict[str, list[str]] = {}
    for r in cohort.rows:
        if r.slide_id:
            seen.setdefault(r.slide_id, []).append(r.case_id)
    for slide, cases in seen.items():
        if len(cases) > 1:
            for case in sorted(set(cases)):
                out.append(Problem(f"duplicate slide id, listed {len(cases)} times "
                                   f"(cases {sorted(set(cases))})", case_id=case or None, slide_id=slide))
    for case in cohort.case_ids:
        rows = cohort.case_rows(case)
        if not any(r.slide_id for r in rows):
            out.append(Problem("case has no slides", case_id=case))
        if cohort.kind == "classification":
            labels = {r.label for r in rows}
            for lab in sorted(labels, key=str):
                if lab is None:
                    out.append(Problem("missing label", case_id=case))
                elif lab not in cohort.classes:
                    out.append(Problem(f"unknown label {lab!r} (classes: {cohort.classes})", case_id=case))
            if len(labels) > 1:
                out.append(Problem(f"slides of the case have different labels {sorted(map(str, labels))}",
                                   case_id=case))
        else:
            targets = {(r.time, r.event) for r in rows}
            for t, e in targets:
                if not valid_time(t):
                    out.append(Problem(f"invalid survival time {t!r}", case_id=case))
                if e is None or (isinstance(e, float) and math.isnan(e)) or e not in (0.0, 1.0):
                    out.append(Problem(f"invalid event/censorship value {e!r} (expected 0 or 1)", case_id=case))
            if len(targets) > 1:
                out.append(Problem("slides of the case have different survival targets", case_id=case))
    return out


def preflight(cohort: Cohort, skip_missing: bool = False, *, one_per_cell: bool = False,
              standardized: bool = False) -> PreflightReport:
    """Read every slide of ``cohort`` and check it; see the module docstring.

    The data checks of :mod:`r2t_plugin.data.checks` run on every slide and case-level bag;
    ``one_per_cell``: two patches in one grid cell are a problem too (for R²T's coords layout);
    ``standardized``: the features will be z-scored before training (``cohort.standardize``),
    so large feature values are no notice.

    Raises :class:`PreflightError` listing every problem, unless ``skip_missing``: then the
    cases with problems are dropped (a :class:`PreflightWarning` names them) and the report's
    ``cohort`` holds the rest. Problems without a case (a row without case id) always raise.
    """
    problems = _table_problems(cohort)
    bad_cases = {p.case_id for p in problems}
    widths: Counter[int] = Counter()
    slide_dims: list[tuple[str, str, int, str | None]] = []  # case, slide, width, path
    counts: dict[str, int] = {}
    has_coords: dict[str, bool] = {}
    notices: list[Problem] = []
    for case in cohort.case_ids:  # one case in memory at a time
        slide_bags: list[FeatureBag] = []
        empty = 0  # slides without patches: left out of the case with a warning (Cohort.skip_empty)
        for slide in cohort.slides(case):
            path = cohort.slide_path(slide)
            if path is None:
                where = ", ".join(str(d) for d in cohort.feature_dirs)
                problems.append(Problem(f"feature file not found in {where}", case, slide))
                continue
            try:
                bag = cohort.read_slide(slide, cohort.slide_mpp(case, slide))
            except EmptySlideError as exc:
                cohort.skip_empty(case, slide, exc)
                empty += 1
                continue
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the check
                text = str(exc)
                text = text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text
                problems.append(Problem(f"cannot use file: {text}", case, slide, str(path)))
                continue
            bag.slide_ids = (slide,)
            error, warning = feature_faults(bag, standardized)
            notices += [Problem(warning, case, slide, str(path))] if warning else []
            faults = [error] if error else grid_faults(bag, one_per_cell)
            if faults:
                problems += [Problem(m, case, slide, str(path)) for m in faults]
                continue
            slide_bags.append(bag)
            widths[bag.dim] += 1
            slide_dims.append((case, slide, bag.dim, str(path)))
        if empty and empty == len(cohort.slides(case)):
            problems.append(Problem("empty bag: none of its slides has a patch (every feature file is empty)", case))
        if not slide_bags or len({b.dim for b in slide_bags}) > 1:
            continue  # reported below, against the cohort's width
        try:
            if cohort.cache and case not in bad_cases and len(slide_bags) + empty == len(cohort.slides(case)):
                whole = cohort.keep(case, assemble_case(case, slide_bags, **cohort.target(case)))
            else:
                whole = assemble_case(case, slide_bags)
            counts[case], has_coords[case] = whole.n, whole.coords is not None
        except ValueError as exc:
            problems.append(Problem(f"slides do not form one bag: {exc}", case))
    problems += [Problem(m, case) for case, m in mixed_coordinates(has_coords)]
    if notices:
        lines = "\n".join(f"  - {p}" for p in notices)
        warnings.warn(f"pre-flight check of {cohort.source}:\n{lines}", PreflightWarning, stacklevel=2)
    dim = widths.most_common(1)[0][0] if widths else None
    for case, slide, width, path in slide_dims:
        if width != dim:
            problems.append(Problem(f"feature width {width}, the cohort's is {dim}", case, slide, path))
            counts.pop(case, None)
            cohort.forget(case)
    if not problems:
        return PreflightReport(cohort, dim, n_instances=counts, notices=notices)
    caseless = [p for p in problems if p.case_id is None]
    if not skip_missing or caseless:
        raise PreflightError(cohort.source, problems)
    dropped = sorted({p.case_id for p in problems if p.case_id})
    keep = [c for c in cohort.case_ids if c not in set(dropped)]
    lines = "\n".join(f"  - {p}" for p in problems)
    warnings.warn(f"pre-flight check of {cohort.source}: dropped {len(dropped)} case(s) "
                  f"{dropped}:\n{lines}", PreflightWarning, stacklevel=2)
    return PreflightReport(cohort.subset(keep), dim, problems, dropped,
                           {c: n for c, n in counts.items() if c in keep}, notices)
