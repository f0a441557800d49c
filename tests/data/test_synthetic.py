"""The synthetic demo cohort: deterministic, CLAM format, and a spatial (not per-patch) signal."""
from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from r2t_plugin.data.synthetic import SyntheticSpec, _directions, cached_cohort, generate_cohort, tissue_layout

SMALL = dict(n_cases=24, min_patches=120, max_patches=220, dim=16)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read(cohort, slide):
    with h5py.File(cohort.feature_dir / f"{slide}.h5", "r") as f:
        return f["features"][:], f["coords"][:], dict(f["coords"].attrs), f["features"].dtype


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("bin"), SyntheticSpec(**SMALL))


def test_deterministic(binary, tmp_path):
    again = generate_cohort(tmp_path / "again", SyntheticSpec(**SMALL))
    assert binary.csv.read_text() == again.csv.read_text()
    for row in _rows(binary.csv):
        a, b = _read(binary, row["slide_id"]), _read(again, row["slide_id"])
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = generate_cohort(tmp_path / "other", SyntheticSpec(**SMALL, seed=1))
    first = _rows(binary.csv)[0]["slide_id"]
    assert not np.array_equal(_read(binary, first)[0][:5], _read(other, first)[0][:5])


def test_clam_format(binary):
    rows = _rows(binary.csv)
    assert list(rows[0]) == ["case_id", "slide_id", "label"]
    assert {r["label"] for r in rows} == {"0", "1"}
    per_case = {}
    for r in rows:
        per_case.setdefault(r["case_id"], []).append(r["slide_id"])
    assert len(per_case) == SMALL["n_cases"]
    assert any(len(s) == 2 for s in per_case.values()), "some cases must have two slides"
    for r in rows:
        feats, coords, attrs, dtype = _read(binary, r["slide_id"])
        assert dtype == np.float32 and feats.shape[1] == SMALL["dim"]
        assert coords.shape == (feats.shape[0], 2) and coords.dtype.kind == "i"
        assert attrs["patch_size"] == 256 and attrs["patch_level"] == 0
        assert (coords % 256 == 0).all()
        assert len(np.unique(coords, axis=0)) == len(coords)
        assert 0.6 * SMALL["min_patches"] <= len(coords) <= 1.4 * SMALL["max_patches"]
    assert not list(binary.feature_dir.glob(".*")), "no temporary files left behind"


def test_multiclass_and_survival(tmp_path):
    mc = generate_cohort(tmp_path / "mc", SyntheticSpec(task="multiclass", n_classes=3, **SMALL))
    assert {r["label"] for r in _rows(mc.csv)} == {"0", "1", "2"}
    sv = generate_cohort(tmp_path / "sv", SyntheticSpec(task="survival", **SMALL))
    rows = _rows(sv.csv)
    assert list(rows[0]) == ["case_id", "slide_id", "survival_months", "censorship"]
    assert all(float(r["survival_months"]) > 0 for r in rows)
    assert {r["censorship"] for r in rows} == {"0", "1"}


def test_layout_is_tissue_like():
    rng = np.random.default_rng(3)
    cells = tissue_layout(rng, 400)
    assert 250 <= len(cells) <= 560
    assert len(np.unique(cells, axis=0)) == len(cells)
    # most cells have most of their 4 neighbours in the tissue (a blob, not scattered noise)
    present = {tuple(c) for c in cells.tolist()}
    inner = sum(all((r + dr, c + dc) in present for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)))
                for r, c in present)
    assert inner / len(cells) > 0.6


def _auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))


def _oracle_aucs(binary) -> tuple[float, float]:
    """AUC of the bag mean and of the best 5 x 5 neighbourhood mean along the signal direction."""
    spec = binary.spec
    seq = np.random.SeedSequence(spec.seed).spawn(2 + spec.n_cases)
    u = _directions(np.random.default_rng(seq[0]), spec)[0][0]
    stats: dict[str, list] = {}
    for r in _rows(binary.csv):
        feats, coords, _, _ = _read(binary, r["slide_id"])
        proj = feats @ u
        cells = (coords - coords.min(0)) // 256
        where = {tuple(c): i for i, c in enumerate(cells.tolist())}
        smooth = []
        for x, y in cells.tolist():
            near = [where[(x + a, y + b)] for a in range(-2, 3) for b in range(-2, 3) if (x + a, y + b) in where]
            if len(near) >= 15:
                smooth.append(proj[near].mean())
        s = stats.setdefault(r["case_id"], [int(r["label"]), -np.inf, -np.inf])
        s[1] = max(s[1], proj.mean())
        s[2] = max(s[2], max(smooth, default=-np.inf))
    label = np.array([s[0] for s in stats.values()])
    assert label.sum() > 0
    mean_auc = _auc(*[[s[1] for s in stats.values() if s[0] == k] for k in (1, 0)])
    return mean_auc, _auc(*[[s[2] for s in stats.values() if s[0] == k] for k in (1, 0)])


def test_signal_is_spatial(binary):
    """Along the signal direction, a neighbourhood average separates the classes far better
    than the per-patch mean does: the cohort needs context."""
    mean_auc, ctx_auc = _oracle_aucs(binary)
    assert ctx_auc > 0.8
    assert ctx_auc > mean_auc + 0.15


def test_demo_cohort_has_a_weak_instance_signal_and_a_strong_spatial_one(tmp_path):
    """The demo's cohort (r2t compare --demo): the bag mean alone is clearly above chance (so
    plain ABMIL learns something) and a neighbourhood average clearly above that."""
    from r2t_plugin.compare.cli import demo_spec

    mean_auc, ctx_auc = _oracle_aucs(generate_cohort(tmp_path, demo_spec()))
    assert 0.6 < mean_auc < 0.9
    assert ctx_auc > max(0.9, mean_auc + 0.1)


def test_cached_cohort_reuses(tmp_path):
    spec = SyntheticSpec(**{**SMALL, "n_cases": 8})
    first = cached_cohort(tmp_path, spec)
    stamp = first.csv.stat().st_mtime_ns
    again = cached_cohort(tmp_path, spec)
    assert again.root == first.root and again.csv.stat().st_mtime_ns == stamp


def test_spec_validation():
    with pytest.raises(ValueError, match="task"):
        SyntheticSpec(task="regression")
    with pytest.raises(ValueError, match="dim"):
        SyntheticSpec(dim=2)
