"""Patient-level stratified splits: no leakage, stratification, reuse from disk."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2t_plugin.data import Cohort, cohort_strata, load_or_make_folds, make_folds, survival_strata
from r2t_plugin.data.splits import Fold, SplitError, check_folds, read_folds, write_folds


def _assert_no_leak(folds, cases):
    tested = Counter()
    for f in folds:
        train, val, test = set(f.train), set(f.val), set(f.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(cases)
        assert len(f.train) + len(f.val) + len(f.test) == len(cases)
        tested.update(f.test)
    assert set(tested) == set(cases) and set(tested.values()) == {1}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(6, 60), k=st.integers(2, 6), n_strata=st.integers(1, 4),
       frac=st.floats(0.1, 0.4), seed=st.integers(0, 10))
def test_no_case_in_two_parts_of_a_fold(n, k, n_strata, frac, seed):
    cases = [f"case{i}" for i in range(n)]
    strata = [i % n_strata for i in range(n)]
    folds = make_folds(cases, strata, k=min(k, n), val_fraction=frac, seed=seed)
    _assert_no_leak(folds, cases)
    for f in folds:
        assert f.val, "validation is never empty"


def test_stratified_and_seeded():
    cases = [f"c{i}" for i in range(100)]
    strata = [0] * 70 + [1] * 30
    folds = make_folds(cases, strata, k=5, val_fraction=0.25, seed=3)
    label = dict(zip(cases, strata))
    for f in folds:
        assert Counter(label[c] for c in f.test) == {0: 14, 1: 6}
        val = Counter(label[c] for c in f.val)
        assert val == {0: 14, 1: 6}  # 25% of 80 training cases, in proportion
    assert make_folds(cases, strata, k=5, val_fraction=0.25, seed=3) == folds
    assert make_folds(cases, strata, k=5, val_fraction=0.25, seed=4) != folds


def test_survival_strata_balance_events_and_times():
    times = list(range(40))
    events = [i % 2 for i in range(40)]
    strata = survival_strata(times, events, n_quantiles=4)
    assert len(set(strata)) == 8
    folds = make_folds([str(i) for i in range(40)], strata, k=4, seed=0)
    for f in folds:
        ev = [events[int(c)] for c in f.test]
        assert sum(ev) == 5  # half of the 10 test cases had the event
        quarters = Counter(int(c) // 10 for c in f.test)  # time quartile of each test case
        assert set(quarters) == {0, 1, 2, 3} and max(quarters.values()) <= 4


def test_splits_are_by_case_for_multi_slide_cases(writer):
    rows = []
    for i in range(12):
        for j in range(1 + i % 3):
            writer.slide(f"c{i}_s{j}")
            rows.append({"case_id": f"c{i}", "slide_id": f"c{i}_s{j}", "label": i % 2})
    cohort = Cohort(writer.table(rows), writer.features, label_col="label")
    folds = make_folds(cohort.case_ids, cohort_strata(cohort), k=3, seed=0)
    _assert_no_leak(folds, cohort.case_ids)
    for f in folds:  # every slide of a case follows its case
        for part in (f.train, f.val, f.test):
            slides = [s for c in part for s in cohort.slides(c)]
            others = [s for p in (f.train, f.val, f.test) if p is not part for c in p for s in cohort.slides(c)]
            assert not set(slides) & set(others)


def test_written_splits_are_reused_and_checked(tmp_path):
    cases = [f"c{i}" for i in range(20)]
    strata = [i % 2 for i in range(20)]
    first = load_or_make_folds(tmp_path / "splits", cases, strata, k=4, seed=1)
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == \
        ["fold_0.csv", "fold_1.csv", "fold_2.csv", "fold_3.csv", "manifest.json"]
    # reused as written (a different seed's folds would differ)
    assert load_or_make_folds(tmp_path / "splits", cases, strata, k=4, seed=1) == first
    assert read_folds(tmp_path / "splits") == first
    with pytest.raises(SplitError, match="other parameters"):
        load_or_make_folds(tmp_path / "splits", cases, strata, k=4, seed=2)
    with pytest.raises(SplitError, match="does not match the cohort"):
        load_or_make_folds(tmp_path / "splits", cases[:-1], strata[:-1], k=4, seed=1)


def test_leaking_split_files_are_rejected(tmp_path):
    bad = [Fold(0, ("a", "b"), ("c",), ("d", "a"))]
    with pytest.raises(SplitError, match="'a'.*train and test"):
        check_folds(bad)
    write_folds([Fold(0, ("a", "b"), ("c",), ("d",)), Fold(1, ("c", "d"), ("b",), ("a",))], tmp_path)
    text = (tmp_path / "fold_1.csv").read_text().replace("b,val", "d,val")
    (tmp_path / "fold_1.csv").write_text(text)
    with pytest.raises(SplitError, match="fold 1"):
        read_folds(tmp_path)
