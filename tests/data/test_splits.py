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


def _labels_cohort(writer, labels):
    rows = [{"case_id": f"c{i}", "slide_id": f"s{i}", "label": y} for i, y in enumerate(labels)]
    return Cohort(writer.table(rows), writer.features, label_col="label")


def test_a_class_smaller_than_the_folds_is_named_unless_the_classes_are_listed(writer):
    from r2t_plugin.data.splits import check_class_counts, target_counts

    cohort = _labels_cohort(writer, ["0", "1"] * 5 + ["O"])  # a typo: O for 0
    counts = target_counts(cohort)
    assert counts == {"0": 5, "1": 5, "O": 1}
    with pytest.raises(SplitError, match=r"class 'O' has 1 case\(s\), fewer than the 3 folds.*cohort.classes"):
        check_class_counts(counts, 3)
    check_class_counts(counts, 3, explicit=True)
    check_class_counts(counts, 1)
    listed = Cohort(writer.table([{"case_id": "a", "slide_id": "x", "label": 1}]), writer.features,
                    label_col="label", classes=[0, 1, 2])
    assert target_counts(listed) == {"0": 0, "1": 1, "2": 0}


def test_folds_that_cannot_train_are_refused_before_anything_is_written(writer, tmp_path):
    from r2t_plugin.data.splits import fold_targets

    cohort = _labels_cohort(writer, [0, 1, 0])  # 3 cases: some training or validation part has one class
    out = tmp_path / "splits"
    with pytest.raises(SplitError) as info:
        load_or_make_folds(out, cohort.case_ids, cohort_strata(cohort), k=3, targets=fold_targets(cohort))
    text = str(info.value)
    assert "part has no case of '1'" in text and "no model can be trained" in text
    assert "fold 0: train 1 (" in text and "fold 2: " in text  # the counts of every fold
    assert not out.exists()  # nothing written, so a corrected config is not refused later
    folds = load_or_make_folds(out, cohort.case_ids, cohort_strata(cohort), k=3)  # unchecked: as before
    assert len(folds) == 3


def test_val_fraction_that_leaves_no_training_case_is_refused():
    cases = [f"c{i}" for i in range(10)]
    with pytest.raises(SplitError, match=r"val_fraction 0.95 leaves no training case: fold 0 has 5"):
        make_folds(cases, [0] * 10, k=2, val_fraction=0.95)


def test_survival_folds_need_an_event_in_training_and_validation():
    from r2t_plugin.data.splits import check_fold_targets

    folds = [Fold(0, ("a", "b"), ("c",), ("d",)), Fold(1, ("c", "d"), ("a",), ("b",))]
    targets = {"a": "event", "b": "censored", "c": "censored", "d": "event"}
    with pytest.raises(SplitError, match="fold 0's validation part has no case of 'event'") as info:
        check_fold_targets(folds, targets, ("event",))
    assert "fold 1" not in str(info.value).split("Cases per fold")[0]
    check_fold_targets([folds[1]], targets, ("event",))


# ---------------------------------------------------------------- CLAM's splits_{i}.csv
def write_clam_splits(path, train, val, test):
    """A ``splits_{i}.csv`` laid out as CLAM's save_splits writes it: pandas' unnamed index
    column, then one column of slide ids per part, the shorter ones padded with empty cells."""
    import pandas as pd

    parts = [pd.Series(ids, dtype=object) for ids in (train, val, test)]
    df = pd.concat(parts, ignore_index=True, axis=1)
    df.columns = ["train", "val", "test"]
    df.to_csv(path)
    return path


@pytest.fixture
def clam_cohort(writer):
    """Six cases; case c0 has two slides (CLAM's slide ids: no suffix; the table's: .svs)."""
    rows = [{"case_id": "c0", "slide_id": "c0_a.svs", "label": 0}, {"case_id": "c0", "slide_id": "c0_b.svs", "label": 0}]
    rows += [{"case_id": f"c{i}", "slide_id": f"c{i}_a.svs", "label": i % 2} for i in range(1, 6)]
    for r in rows:
        writer.slide(r["slide_id"][:-4])
    return Cohort(writer.table(rows), writer.features, label_col="label")


def test_clam_split_files_become_case_folds(clam_cohort, tmp_path):
    from r2t_plugin.data.clam_splits import clam_split_files, read_clam_splits

    folder = tmp_path / "splits" / "task_1_tumor_vs_normal_100"
    folder.mkdir(parents=True)
    write_clam_splits(folder / "splits_0.csv", ["c0_a", "c0_b", "c1_a", "c2_a"], ["c3_a"], ["c4_a", "c5_a"])
    write_clam_splits(folder / "splits_1.csv", ["c2_a", "c3_a", "c4_a"], ["c5_a"], ["c0_a", "c0_b", "c1_a"])
    (folder / "splits_0_bool.csv").write_text(",train,val,test\nc0_a,True,False,False\n")  # not read
    (folder / "splits_0_descriptor.csv").write_text(",train,val,test\n0,2,1,1\n")
    with open(folder / "splits_0.csv") as fh:
        assert fh.readline().strip() == ",train,val,test" and fh.readline().startswith("0,c0_a,c3_a,c4_a")
    files = clam_split_files([folder])
    assert [f.name for f in files] == ["splits_0.csv", "splits_1.csv"]
    folds = read_clam_splits(files, clam_cohort, clam_cohort.case_ids)
    assert folds[0] == Fold(0, ("c0", "c1", "c2"), ("c3",), ("c4", "c5"))
    assert folds[1] == Fold(1, ("c2", "c3", "c4"), ("c5",), ("c0", "c1"))
    # CLAM's folds are repeated random splits: test parts may overlap across folds
    write_clam_splits(folder / "splits_1.csv", ["c0_a", "c0_b", "c1_a", "c3_a"], ["c2_a"], ["c4_a", "c5_a"])
    folds = read_clam_splits(files, clam_cohort, clam_cohort.case_ids)
    assert folds[1].test == folds[0].test
    # a case dropped by the pre-flight check is left out of every fold
    kept = [c for c in clam_cohort.case_ids if c != "c5"]
    assert read_clam_splits(files, clam_cohort, kept)[0].test == ("c4",)


def test_clam_splits_with_leakage_or_unknown_slides_are_named(clam_cohort, tmp_path):
    from r2t_plugin.data.clam_splits import clam_split_files, read_clam_splits

    leak = write_clam_splits(tmp_path / "splits_0.csv", ["c0_a", "c1_a", "c2_a"], ["c3_a"], ["c0_b", "c4_a", "c5_a"])
    with pytest.raises(SplitError, match=r"splits_0.csv: case 'c0' has slides in train and test "
                                         r"\(train: c0_a; test: c0_b\).*leakage"):
        read_clam_splits([leak], clam_cohort, clam_cohort.case_ids)
    typo = write_clam_splits(tmp_path / "splits_0.csv", ["c0_a", "c0_b", "c1_a", "c2_a"], ["c3_a"], ["c4_a", "x9"])
    with pytest.raises(SplitError, match=r"slide id\(s\) \['x9'\] in test are not in the cohort table"):
        read_clam_splits([typo], clam_cohort, clam_cohort.case_ids)
    short = write_clam_splits(tmp_path / "splits_0.csv", ["c0_a", "c0_b", "c1_a", "c2_a"], ["c3_a"], ["c4_a"])
    with pytest.raises(SplitError, match=r"case\(s\) \['c5'\] of the cohort are in no part"):
        read_clam_splits([short], clam_cohort, clam_cohort.case_ids)
    boolean = tmp_path / "splits_0_bool.csv"
    boolean.write_text(",train,val,test\nc0_a,True,False,False\n")
    with pytest.raises(SplitError, match="boolean layout"):
        read_clam_splits([boolean], clam_cohort, clam_cohort.case_ids)
    (tmp_path / "gap").mkdir()
    write_clam_splits(tmp_path / "gap" / "splits_1.csv", ["c0_a"], ["c1_a"], ["c2_a"])
    with pytest.raises(SplitError, match=r"not numbered 0..0 \(found splits_\[1\].csv\)"):
        clam_split_files([tmp_path / "gap"])
    (tmp_path / "none").mkdir()
    with pytest.raises(SplitError, match="no CLAM splits_"):
        clam_split_files([tmp_path / "none"])


def test_folds_with_overlapping_tests_are_read_back_when_the_manifest_says_so(tmp_path):
    folds = [Fold(0, ("a", "b"), ("c",), ("d",)), Fold(1, ("a", "c"), ("b",), ("d",))]
    write_folds(folds, tmp_path / "ours")
    with pytest.raises(SplitError, match="test part of folds 0 and 1"):
        read_folds(tmp_path / "ours")
    write_folds(folds, tmp_path / "clam", {"source": "clam", "disjoint_tests": False})
    assert read_folds(tmp_path / "clam") == folds


def test_too_few_cases_for_the_folds_say_so():
    with pytest.raises(SplitError, match="3 cases in 2 folds leave fold 0 a single case outside its test part"):
        make_folds(["a", "b", "c"], [0, 1, 0], k=2)
