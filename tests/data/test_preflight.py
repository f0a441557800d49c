"""Pre-flight on a cohort with several planted faults: all reported in one error."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from r2t_plugin.data import Cohort, PreflightError, PreflightWarning, preflight

GOOD = ["ok1", "ok2", "ok3"]


def _planted(writer):
    rows = []
    for i, case in enumerate(GOOD):
        writer.slide(f"{case}_s")
        rows.append({"case_id": case, "slide_id": f"{case}_s", "label": i % 2})
    writer.slide("ok3_s2")  # a second slide of a good case
    rows.append({"case_id": "ok3", "slide_id": "ok3_s2", "label": 0})
    # faults, one case each
    rows.append({"case_id": "missing", "slide_id": "nowhere", "label": 0})
    (writer.features / "h5_files" / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\ngarbage")
    rows.append({"case_id": "unreadable", "slide_id": "broken", "label": 1})
    writer.slide("wide", dim=7)
    rows.append({"case_id": "width", "slide_id": "wide", "label": 0})
    feats = np.ones((6, 4), dtype=np.float32)
    feats[2, 1] = np.inf
    writer.slide("inf", feats=feats)
    rows.append({"case_id": "nonfinite", "slide_id": "inf", "label": 1})
    with h5py.File(writer.features / "h5_files" / "empty.h5", "w") as f:
        f["features"] = np.zeros((0, 4), dtype=np.float32)
        f["coords"] = np.zeros((0, 2), dtype=np.int64)
    rows.append({"case_id": "emptybag", "slide_id": "empty", "label": 0})
    writer.slide("dup")
    rows.append({"case_id": "dupA", "slide_id": "dup", "label": 0})
    rows.append({"case_id": "dupB", "slide_id": "dup", "label": 0})
    writer.slide("odd")
    rows.append({"case_id": "badlabel", "slide_id": "odd", "label": 7})
    rows.append({"case_id": "noslides", "slide_id": "", "label": 1})
    csv = writer.table(rows)
    return Cohort(csv, writer.features, label_col="label", classes=[0, 1])


EXPECTED = {
    "missing": "not found",
    "unreadable": "not a known feature file",
    "width": "feature width 7",
    "nonfinite": "NaN or Inf",
    "emptybag": "empty bag",
    "dupA": "duplicate slide id",
    "dupB": "duplicate slide id",
    "badlabel": "unknown label '7'",
    "noslides": "no slides",
}


def test_every_planted_fault_is_reported_in_one_error(writer):
    cohort = _planted(writer)
    with pytest.raises(PreflightError) as info:
        preflight(cohort)
    problems = info.value.problems
    by_case = {}
    for p in problems:
        by_case.setdefault(p.case_id, []).append(str(p))
    assert set(by_case) == set(EXPECTED), by_case
    for case, text in EXPECTED.items():
        assert any(text in msg for msg in by_case[case]), (case, by_case[case])
    message = str(info.value)
    assert f"found {len(problems)} problem(s)" in message
    assert "broken.h5" in message and "nowhere" in message  # files and slides are named


def test_skip_missing_drops_exactly_the_faulty_cases_and_says_so(writer):
    cohort = _planted(writer)
    with pytest.warns(PreflightWarning, match="dropped 9 case"):
        report = preflight(cohort, skip_missing=True)
    assert report.cohort.case_ids == GOOD
    assert sorted(report.dropped) == sorted(EXPECTED)
    assert report.feature_dim == 4
    assert report.n_instances == {"ok1": 6, "ok2": 6, "ok3": 12}
    assert [b.case_id for b in report.cohort.bags()] == GOOD


def test_clean_cohort_passes(writer):
    for i in range(3):
        writer.slide(f"s{i}")
    csv = writer.table([{"case_id": f"c{i}", "slide_id": f"s{i}", "label": i % 2} for i in range(3)])
    report = preflight(Cohort(csv, writer.features, label_col="label"))
    assert report.problems == [] and report.dropped == [] and report.feature_dim == 4


def test_survival_targets_are_checked(writer):
    for i in range(3):
        writer.slide(f"s{i}")
    csv = writer.table([{"case_id": "a", "slide_id": "s0", "time": 5.0, "event": 1},
                        {"case_id": "b", "slide_id": "s1", "time": -1.0, "event": 0},
                        {"case_id": "c", "slide_id": "s2", "time": 2.0, "event": 2}])
    with pytest.raises(PreflightError) as info:
        preflight(Cohort(csv, writer.features, time_col="time", event_col="event"))
    assert sorted(p.case_id for p in info.value.problems) == ["b", "c"]


def test_with_cache_the_checked_bags_are_not_read_again(writer, monkeypatch):
    for i in range(3):
        writer.slide(f"s{i}")
    csv = writer.table([{"case_id": f"c{i}", "slide_id": f"s{i}", "label": i % 2} for i in range(3)])
    cohort = Cohort(csv, writer.features, label_col="label", cache=True)
    report = preflight(cohort)
    monkeypatch.setattr(cohort, "read_slide", lambda *a, **k: pytest.fail("read again"))
    assert [b.label for b in report.cohort.bags()] == [0, 1, 0]
