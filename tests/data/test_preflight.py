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


def _h5(writer, slide, feats, coords=None, patch=None):
    with h5py.File(writer.features / "h5_files" / f"{slide}.h5", "w") as f:
        f["features"] = feats
        if coords is not None:
            d = f.create_dataset("coords", data=np.asarray(coords))
            if patch is not None:
                d.attrs["patch_size"] = patch
                d.attrs["patch_level"] = 0


def _lattice(n, patch=256):
    side = int(np.ceil(np.sqrt(n)))
    return np.array([(i % side, i // side) for i in range(n)], dtype=np.int64) * patch


def _problems_by_case(cohort, **kw):
    with pytest.raises(PreflightError) as info:
        preflight(cohort, **kw)
    out = {}
    for p in info.value.problems:
        out.setdefault(p.case_id, []).append(p)
    return out


def test_data_faults_that_fail_only_some_runs_are_caught_up_front(writer):
    """Features beyond float32, an absurd patch grid (jittered coordinates, patch size
    inferred), a case without coordinates among cases with them: errors naming the slide."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        writer.slide(f"good{i}")
        rows.append({"case_id": f"g{i}", "slide_id": f"good{i}", "label": i % 2})
    huge = rng.standard_normal((6, 4))
    huge[3, 2] = 1e39  # finite in the file (float64), infinite once cast to float32
    _h5(writer, "huge", huge, _lattice(6), 256)
    jitter = _lattice(9) + rng.uniform(-0.01, 0.01, (9, 2))  # off the lattice by a few 1/100 px
    jitter[0, 0] += 0.0005
    _h5(writer, "jitter", rng.standard_normal((9, 4)).astype(np.float32), jitter)  # no patch_size attr
    np.save(writer.features / "nocoords.npy", rng.standard_normal((5, 4)).astype(np.float32))  # no coords
    rows += [{"case_id": "overflow", "slide_id": "huge", "label": 0},
             {"case_id": "jittered", "slide_id": "jitter", "label": 1},
             {"case_id": "bare", "slide_id": "nocoords", "label": 0}]
    cohort = Cohort(writer.table(rows), writer.features, label_col="label")
    found = _problems_by_case(cohort)
    assert set(found) == {"overflow", "jittered", "bare"}, found
    (over,), (grid,), (bare,) = found["overflow"], found["jittered"], found["bare"]
    assert over.slide_id == "huge" and "beyond float32" in over.message and "1e+39" in over.message
    assert grid.slide_id == "jitter" and "not on a patch lattice" in grid.message and "inferred from coordinate spacing" in grid.message
    assert "no patch coordinates, but 3 other case(s) have them" in bare.message


def test_patches_sharing_a_grid_cell_only_matter_for_the_coords_layout(writer):
    coords = _lattice(6)
    coords[4] = coords[1]  # two patches at one position
    writer.slide("a")
    _h5(writer, "b1", np.ones((6, 4), np.float32), coords, 256)
    writer.slide("b0", n=4)
    rows = [{"case_id": "A", "slide_id": "a", "label": 0},
            {"case_id": "B", "slide_id": "b0", "label": 1}, {"case_id": "B", "slide_id": "b1", "label": 1}]
    cohort = Cohort(writer.table(rows), writer.features, label_col="label")
    assert preflight(cohort).problems == []  # the sequence layout does not care
    (dup,), = _problems_by_case(cohort, one_per_cell=True).values()
    assert dup.case_id == "B" and dup.slide_id == "b1"  # the second slide of the case is named
    assert "patches 1 and 4 at [256.0, 0.0] and [256.0, 0.0]" in dup.message and "b1.h5" in str(dup) and "one patch per cell" in dup.message


def test_large_feature_values_are_a_warning_naming_the_slide(writer):
    for i in range(2):
        writer.slide(f"s{i}")
    writer.slide("loud", feats=np.full((6, 4), 3e4, np.float32))
    rows = [{"case_id": f"c{i}", "slide_id": f"s{i}", "label": i % 2} for i in range(2)]
    rows.append({"case_id": "c2", "slide_id": "loud", "label": 0})
    with pytest.warns(PreflightWarning, match=r"slide 'loud'.*\|x\| = 3e\+04"):
        report = preflight(Cohort(writer.table(rows), writer.features, label_col="label"))
    assert report.problems == [] and [p.slide_id for p in report.notices] == ["loud"]
    assert "set cohort.standardize: true" in report.notices[0].message


def test_large_feature_values_are_no_warning_when_standardized(writer, recwarn):
    """z-scored per column with the training instances' statistics, 3e4 raw values are harmless."""
    from r2t_plugin.data.checks import feature_faults

    writer.slide("s0")
    writer.slide("loud", feats=np.full((6, 4), 3e4, np.float32))
    rows = [{"case_id": "c0", "slide_id": "s0", "label": 0}, {"case_id": "c1", "slide_id": "loud", "label": 1}]
    report = preflight(Cohort(writer.table(rows), writer.features, label_col="label"), standardized=True)
    assert report.problems == [] and report.notices == []
    assert not [w for w in recwarn if issubclass(w.category, PreflightWarning)]
    import torch

    from r2t_plugin import FeatureBag

    huge = FeatureBag(torch.tensor([[1e39, 0.0]], dtype=torch.float64))  # beyond float32: still an error
    assert feature_faults(huge, standardized=True)[0] is not None


def test_a_float64_bag_from_any_reader_is_checked_in_float32():
    import torch

    from r2t_plugin import FeatureBag
    from r2t_plugin.data.checks import feature_faults

    f = torch.zeros(5, 3, dtype=torch.float64)
    f[1, 0], f[3, 2] = 1e39, -2e4
    error, warning = feature_faults(FeatureBag(f))
    assert "1 instance(s) have features beyond float32's range" in error and warning is None
    f[1, 0] = 0.0
    assert feature_faults(FeatureBag(f)) == (None, feature_faults(FeatureBag(f.float()))[1])
    assert "|x| = 2e+04" in feature_faults(FeatureBag(f))[1]
