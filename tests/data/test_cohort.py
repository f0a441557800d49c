"""Cohort tables, label mapping, survival conventions and case-level bags."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2t_plugin.data import Cohort, CohortError
from r2t_plugin.geometry import grid_cells, grid_edges


def test_string_labels_map_to_classes_in_recorded_order(writer):
    for s in ("a1", "b1", "c1"):
        writer.slide(s)
    csv = writer.table([{"case_id": "A", "slide_id": "a1", "label": "tumor"},
                        {"case_id": "B", "slide_id": "b1", "label": "normal"},
                        {"case_id": "C", "slide_id": "c1", "label": "tumor"}])
    default = Cohort(csv, writer.features, label_col="label")
    assert default.classes == ["normal", "tumor"]
    assert default.labels() == [1, 0, 1]
    given = Cohort(csv, writer.features, label_col="label", classes=["tumor", "normal"])
    assert given.labels() == [0, 1, 0]
    assert given.load_case("B").label == 1


def test_integer_labels_sorted_numerically(writer):
    rows = [{"case_id": f"c{i}", "slide_id": f"s{i}", "label": lab} for i, lab in enumerate([10, 2, 2, 10, 1])]
    cohort = Cohort(writer.table(rows), writer.features, label_col="label")
    assert cohort.classes == ["1", "2", "10"]
    assert cohort.labels() == [2, 1, 1, 2, 0]


def test_both_survival_conventions_give_the_same_targets(writer):
    rows = [{"case_id": "A", "slide_id": "a", "survival_months": 12.5, "censorship": 1, "time": 12.5, "event": 0},
            {"case_id": "B", "slide_id": "b", "survival_months": 3.0, "censorship": 0, "time": 3.0, "event": 1}]
    csv = writer.table(rows)
    porpoise = Cohort(csv, writer.features, time_col="survival_months", censorship_col="censorship")
    plain = Cohort(csv, writer.features, time_col="time", event_col="event")
    assert porpoise.survival() == plain.survival() == ([12.5, 3.0], [0, 1])
    with pytest.raises(CohortError, match="exactly one of event_col"):
        Cohort(csv, writer.features, time_col="time", event_col="event", censorship_col="censorship")


def test_missing_columns_are_named(writer):
    csv = writer.table([{"case_id": "A", "slide_id": "a"}])
    with pytest.raises(CohortError, match=r"missing column\(s\) \['label'\]"):
        Cohort(csv, writer.features, label_col="label")


def test_case_bag_places_slides_side_by_side_on_one_lattice(writer):
    f1 = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    f2 = -np.arange(4 * 3, dtype=np.float32).reshape(4, 3) - 1
    writer.slide("s1", n=5, feats=f1, origin=(1000, 512))
    writer.slide("s2", n=4, feats=f2, origin=(128, 8000))  # not on s1's lattice, far below
    csv = writer.table([{"case_id": "P", "slide_id": "s1", "label": 1},
                        {"case_id": "P", "slide_id": "s2.svs", "label": 1}])
    bag = Cohort(csv, writer.features, label_col="label").load_case("P")
    assert bag.case_id == "P" and bag.slide_ids == ("s1", "s2.svs") and bag.label == 0  # one class "1"
    assert torch.equal(bag.features, torch.from_numpy(np.concatenate([f1, f2])))
    assert bag.patch_size == 256.0
    c = bag.coords
    # no two instances share a position, and no grid edge joins the two slides
    assert len({tuple(p) for p in c.tolist()}) == 9
    edges = grid_edges(c, bag.patch_size)
    slide_of = torch.tensor([0] * 5 + [1] * 4)
    assert not bool((slide_of[edges[0]] != slide_of[edges[1]]).any())
    assert edges.shape[1] > 0
    # every slide keeps its own patch grid (cells are integers, shapes preserved)
    cells = grid_cells(c, bag.patch_size)
    rel = (c - c.min(0).values) / bag.patch_size
    assert torch.allclose(rel, rel.round())
    assert int(cells[5:, 1].min()) >= int(cells[:5, 1].max()) + 2  # one empty column at least
    # the recorded offsets undo the shift
    (a, b), (dx, dy) = bag.meta["slide_slices"][1], bag.meta["slide_offsets"][1]
    orig = c[a:b] - torch.tensor([dx, dy], dtype=c.dtype)
    assert float(orig[:, 0].min()) == 128.0 and float(orig[:, 1].min()) == 8000.0


def test_bags_are_lazy_and_cached_on_request(writer, monkeypatch):
    writer.slide("a")
    writer.slide("b")
    csv = writer.table([{"case_id": "A", "slide_id": "a", "label": 0}, {"case_id": "B", "slide_id": "b", "label": 1}])
    reads = []
    for cache in (False, True):
        cohort = Cohort(csv, writer.features, label_col="label", cache=cache)
        original = cohort.read_slide
        monkeypatch.setattr(cohort, "read_slide", lambda s, m=None, o=original: reads.append(s) or o(s, m))
        bags = cohort.bags()
        assert reads == [] and len(bags) == 2  # nothing read yet
        first = bags[0]
        again = bags[0]
        assert (first is again) == cache
        assert reads == (["a", "a"] if not cache else ["a"])
        reads.clear()


def test_a_malformed_or_non_utf8_table_is_one_cohort_error_naming_it(writer):
    bad = writer.root / "ragged.csv"
    bad.write_text("case_id,slide_id,label\nc0,s0,1\nc1,s1,0,extra,more\n")
    with pytest.raises(CohortError, match=r"ragged\.csv: not a readable CSV table \(Expected 3 fields in line 3"):
        Cohort(bad, writer.features, label_col="label")
    latin = writer.root / "latin1.csv"
    latin.write_bytes("case_id,slide_id,label\nc0,Gewebe_\u00e4,1\n".encode("latin-1"))
    with pytest.raises(CohortError, match=r"latin1\.csv: not a readable CSV table .*UTF-8"):
        Cohort(latin, writer.features, label_col="label")


def test_a_subset_does_not_serve_a_case_outside_it_from_the_shared_cache(writer):
    writer.slide("a")
    writer.slide("b")
    csv = writer.table([{"case_id": "A", "slide_id": "a", "label": 0}, {"case_id": "B", "slide_id": "b", "label": 1}])
    cohort = Cohort(csv, writer.features, label_col="label", cache=True)
    cohort.load_case("B")  # now in the cache the subset shares
    only_a = cohort.subset(["A"])
    assert only_a.cache is cohort.cache
    with pytest.raises(CohortError, match="unknown case id 'B'"):
        only_a.load_case("B")


def test_targets_of_no_cases_are_empty_not_every_case(writer):
    writer.slide("a")
    csv = writer.table([{"case_id": "A", "slide_id": "a", "time": 3.0, "event": 1}])
    cohort = Cohort(csv, writer.features, time_col="time", event_col="event")
    assert cohort.survival([]) == ([], []) and cohort.survival() == ([3.0], [1])
    labelled = Cohort(writer.table([{"case_id": "A", "slide_id": "a", "label": 1}]), writer.features,
                      label_col="label")
    assert labelled.labels([]) == [] and labelled.labels() == [0]
