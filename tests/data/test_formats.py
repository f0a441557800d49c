"""TRIDENT and STAMP as they write their files and tables (dataset names, attributes, folders)."""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from r2t_plugin import R2T
from r2t_plugin.bag import BagBatch
from r2t_plugin.data import Cohort, CohortError, preflight, read_bag
from r2t_plugin.data.cohort import EmptySlideWarning
from r2t_plugin.data.readers import EmptySlideError, ReaderError
from r2t_plugin.geometry import grid_cells, grid_edges

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- TRIDENT, as its WSI.extract_* write
def trident_h5(path: Path, cells: np.ndarray, *, dim: int = 4, patch: int = 256, overlap: int = 0,
               level0_mag: int = 40, target_mag: int = 20, slide_level: bool = False) -> Path:
    """``features`` + ``coords`` with TRIDENT's coords attributes (``patch_size`` and
    ``overlap`` at the target magnification, ``patch_size_level0`` at level 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    patch0 = patch * level0_mag // target_mag
    stride0 = (patch - overlap) * level0_mag // target_mag
    coords = (np.asarray(cells, dtype=np.int64).reshape(-1, 2) * stride0 + 1000).reshape(-1, 2)
    feats = RNG.standard_normal((len(coords), dim)).astype(np.float32)
    if slide_level:
        feats = feats.mean(axis=0) if len(coords) else np.zeros((0,), np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        d = f.create_dataset("coords", data=coords)
        attrs = {"patch_size": patch, "patch_size_level0": patch0, "level0_magnification": level0_mag,
                 "target_magnification": target_mag, "overlap": overlap, "name": path.stem,
                 "savetodir": str(path.parent)}
        for k, v in attrs.items():
            d.attrs[k] = v
        f["features"].attrs["name"] = path.stem
        f["features"].attrs["savetodir"] = str(path.parent)
    return path


BLOCK = np.array([(x, y) for y in range(4) for x in range(5)])  # a 5 x 4 block of patches (x, y)


def job(root: Path, encoders=("uni_v1",), patchings=("20x_256px_0px_overlap",), slides=("s1", "s2")) -> Path:
    """A TRIDENT job folder: patches/, features_<enc>/ and slide_features_<enc>/ per patching."""
    for p in patchings:
        (root / p / "patches").mkdir(parents=True, exist_ok=True)
        for e in encoders:
            for s in slides:
                trident_h5(root / p / f"features_{e}" / f"{s}.h5", BLOCK[:6])
        trident_h5(root / p / "slide_features_titan" / f"{slides[0]}.h5", BLOCK[:6], slide_level=True)
    (root / "thumbnails").mkdir(exist_ok=True)
    return root


def table(root: Path, rows: list[dict], name: str = "cohort.csv") -> Path:
    path = root / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


TWO_CASES = [{"case_id": "A", "slide_id": "s1", "label": 0}, {"case_id": "B", "slide_id": "s2", "label": 1}]


def test_trident_job_folder_with_one_encoder_is_found(tmp_path):
    root = job(tmp_path / "job")
    cohort = Cohort(table(tmp_path, TWO_CASES), root, label_col="label")
    assert cohort.feature_dirs == [root / "20x_256px_0px_overlap" / "features_uni_v1"]
    bag = cohort.load_case("A")
    assert bag.n == 6 and bag.patch_size == 512.0 and bag.meta["formats"] == ["trident_h5"]
    assert preflight(cohort).feature_dim == 4


def test_trident_encoder_selects_among_several(tmp_path):
    root = job(tmp_path / "job", encoders=("uni_v1", "conch_v15"))
    csv = table(tmp_path, TWO_CASES)
    with pytest.raises(CohortError) as err:
        Cohort(csv, root, label_col="label")
    msg = str(err.value)
    assert "\n" not in msg and "cohort.encoder" in msg
    assert "features_conch_v15" in msg and "features_uni_v1" in msg and str(root) in msg
    cohort = Cohort(csv, root, label_col="label", encoder="conch_v15")
    assert cohort.feature_dirs == [root / "20x_256px_0px_overlap" / "features_conch_v15"]
    assert cohort.load_case("B").n == 6
    # a patching folder works the same way
    inner = Cohort(csv, root / "20x_256px_0px_overlap", label_col="label", encoder="uni_v1")
    assert inner.feature_dirs == [root / "20x_256px_0px_overlap" / "features_uni_v1"]


def test_trident_missing_encoder_and_several_patchings_name_what_is_there(tmp_path):
    root = job(tmp_path / "job", patchings=("20x_256px_0px_overlap", "10x_512px_0px_overlap"))
    csv = table(tmp_path, TWO_CASES)
    with pytest.raises(CohortError, match=r"several patching folders.*10x_512px_0px_overlap/features_uni_v1.*"
                                          r"20x_256px_0px_overlap/features_uni_v1.*cohort.features"):
        Cohort(csv, root, label_col="label")
    with pytest.raises(CohortError, match=r"no features_titan/ \(has: .*features_uni_v1\).*slide_features_titan"
                                          r" holds slide embeddings.*cohort.encoder"):
        Cohort(csv, root / "20x_256px_0px_overlap", label_col="label", encoder="titan")
    with pytest.raises(CohortError, match="cohort.encoder 'uni_v1' is set, but no feature folder is a TRIDENT"):
        Cohort(csv, tmp_path / "job" / "thumbnails", label_col="label", encoder="uni_v1")


def test_trident_slide_level_file_is_refused_as_a_slide_embedding(tmp_path):
    path = trident_h5(tmp_path / "slide_features_titan" / "s1.h5", BLOCK[:6], slide_level=True)
    with pytest.raises(ReaderError, match=r"s1.h5: a TRIDENT slide embedding \('features' of shape \(4,\).*"
                                          "not patch features"):
        read_bag(path)


def test_trident_overlap_grid_step_is_the_level0_stride(tmp_path):
    # 256 px at 20x with 128 px overlap, level 0 at 40x: patches 512 level-0 px wide, 256 apart
    path = trident_h5(tmp_path / "s.h5", BLOCK, patch=256, overlap=128)
    bag = read_bag(path)
    assert bag.patch_size == 512.0  # what a heatmap draws
    assert bag.grid_step == 256.0 and bag.cell_size == 256.0
    cells = grid_cells(bag.coords, bag.cell_size)
    assert len({tuple(c) for c in cells.tolist()}) == bag.n  # no two patches in one cell
    np.testing.assert_array_equal(cells.numpy(), BLOCK[:, ::-1])
    # the patch size alone would put two patches in a cell; the batch carries the step
    assert len({tuple(c) for c in grid_cells(bag.coords, bag.patch_size).tolist()}) < bag.n
    batch = bag.batch()
    assert batch.grid_step.tolist() == [256.0] and batch.patch_size.tolist() == [512.0]
    stage = R2T(4, dim=8, heads=2, region_size=2, min_region_tokens=1, layout="coords", epeg_k=3).eval()
    with torch.no_grad():
        out = stage(batch.features, batch.mask, batch.coords, batch.grid_step)
    assert out.shape == (1, bag.n, 8) and bool(torch.isfinite(out).all())
    regions = stage.partition(batch.mask, batch.coords, batch.grid_step)
    assert regions.n_regions == 6  # 2 x 2 windows over the 5 x 4 cell grid
    # the graph of neighbours: an interior patch of the block has 8
    degree = torch.bincount(batch.to_pyg().edge_index[0], minlength=bag.n)
    assert int(degree.max()) == 8 and torch.equal(batch.to_pyg().edge_index, grid_edges(bag.coords, 256.0))


def test_trident_overlap_through_an_aggregator_and_a_case_of_two_slides(tmp_path):
    feats = tmp_path / "features"
    trident_h5(feats / "a.h5", BLOCK, overlap=64)
    trident_h5(feats / "b.h5", BLOCK[:7], overlap=64)
    cohort = Cohort(table(tmp_path, [{"case_id": "P", "slide_id": "a", "label": 1},
                                     {"case_id": "P", "slide_id": "b", "label": 1}]), feats, label_col="label")
    bag = cohort.load_case("P")
    assert bag.grid_step == 384.0 and bag.patch_size == 512.0  # 512 x (1 - 64 / 256)
    cells = grid_cells(bag.coords, bag.cell_size)
    assert len({tuple(c) for c in cells.tolist()}) == bag.n
    from r2t_plugin.plugins import registry

    # R²T's coords layout: with the patch size as the cell, two patches would share one
    model = registry("aggregators").create("r2t_abmil", in_dim=4, n_out=2, layout="coords").eval()
    with torch.no_grad():
        assert model(BagBatch.collate([bag]))["logits"].shape == (1, 2)
    # patch_gcn builds its 8-neighbour graph on the stride
    gcn = registry("aggregators").create("patch_gcn", in_dim=4, n_out=2).eval()
    seen = []
    edges = gcn.edges
    gcn.edges = lambda coords, ps: seen.append(ps) or edges(coords, ps)
    with torch.no_grad():
        gcn(BagBatch.collate([bag]))
    assert seen == [384.0]


def test_batches_collate_the_grid_step_of_each_bag(tmp_path):
    stepped = read_bag(trident_h5(tmp_path / "a.h5", BLOCK, overlap=128))
    plain = read_bag(trident_h5(tmp_path / "b.h5", BLOCK[:3]))
    batch = BagBatch.collate([stepped, plain])
    assert batch.grid_step.tolist() == [256.0, 512.0] and batch.patch_size.tolist() == [512.0, 512.0]
    back = batch.unbatch()
    assert (back[0].grid_step, back[0].patch_size) == (256.0, 512.0)
    assert (back[1].grid_step, back[1].cell_size) == (None, 512.0)
    assert stepped.to("cpu").grid_step == 256.0


def test_trident_zero_patch_slide_is_skipped_alone_with_a_warning(tmp_path):
    feats = tmp_path / "features"
    trident_h5(feats / "full.h5", BLOCK[:5])
    trident_h5(feats / "empty.h5", BLOCK[:0])  # TRIDENT: features (0, D), coords (0, 2)
    trident_h5(feats / "alone.h5", BLOCK[:0])
    with h5py.File(feats / "empty.h5") as f:
        assert f["features"].shape == (0, 4) and f["coords"].shape == (0, 2)
    with pytest.raises(EmptySlideError, match="empty.h5: no patches"):
        read_bag(feats / "empty.h5")
    csv = table(tmp_path, [{"case_id": "P", "slide_id": "full", "label": 0},
                           {"case_id": "P", "slide_id": "empty", "label": 0},
                           {"case_id": "Q", "slide_id": "alone", "label": 1}])
    cohort = Cohort(csv, feats, label_col="label")
    with pytest.warns(EmptySlideWarning, match="case 'P': slide 'empty' left out: .*empty.h5: no patches"):
        bag = cohort.load_case("P")
    assert bag.n == 5 and bag.slide_ids == ("full",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort.load_case("P")  # warned once
    with pytest.raises(CohortError, match="case 'Q': every slide's feature file holds no patch"):
        cohort.load_case("Q")
    fresh = Cohort(csv, feats, label_col="label")
    with pytest.warns(EmptySlideWarning, match="slide 'empty'"):
        report = preflight(fresh, skip_missing=True)
    assert report.dropped == ["Q"] and report.cohort.case_ids == ["P"] and report.n_instances == {"P": 5}


# ---------------------------------------------------------------- STAMP, as its preprocessing writes
def stamp_h5(path: Path, cells: np.ndarray, *, tile_um: float = 256.0, legacy: bool = False,
             key: str = "feats", dim: int = 3) -> Path:
    """float16 ``feats`` (N, D) and float ``coords`` in um; root attributes as STAMP writes them
    (v2: ``unit`` + ``tile_size``; later: ``tile_size_um`` + ``tile_size_px``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["coords"] = (np.asarray(cells, dtype=np.float32) * tile_um + 100.0).reshape(-1, 2)
        f[key] = RNG.standard_normal((len(cells), dim)).astype(np.float16)
        f.attrs["stamp_version"] = "2.0.0" if legacy else "2.2.0"
        f.attrs["extractor"] = "ctranspath"
        f.attrs["unit"] = "um"
        if legacy:
            f.attrs["tile_size"] = tile_um
        else:
            f.attrs["tile_size_um"] = tile_um
            f.attrs["tile_size_px"] = 224
            f.attrs["feat_type"] = "tile"
    return path


@pytest.mark.parametrize("legacy,key", [(False, "feats"), (True, "feats"), (True, "patch_embeddings")])
def test_stamp_files_of_each_version(tmp_path, legacy, key):
    path = stamp_h5(tmp_path / "s.h5", BLOCK, legacy=legacy, key=key)
    with h5py.File(path) as f:
        on_disk = f[key][()]
    bag = read_bag(path, mpp=0.5)
    assert bag.meta["format"] == "stamp_h5" and bag.meta["coord_unit"] == "px"
    assert bag.features.dtype == torch.float32
    np.testing.assert_array_equal(bag.features.numpy(), on_disk.astype(np.float32))
    assert bag.patch_size == 512.0  # 256 um at 0.5 um/px
    np.testing.assert_array_equal(grid_cells(bag.coords, bag.patch_size).numpy(), BLOCK[:, ::-1])


def test_stamp_tables_patient_filename_and_mpp_columns(tmp_path):
    feats = tmp_path / "ctranspath-1a2b3c4d"
    stamp_h5(feats / "slide-1.h5", BLOCK[:4])
    stamp_h5(feats / "slide-2.h5", BLOCK[:6])
    stamp_h5(feats / "slide-3.h5", BLOCK[:5])
    clini = pd.DataFrame({"PATIENT": ["pat1", "pat2"], "isMSIH": ["MSIH", "nonMSIH"]})
    slides = pd.DataFrame({"PATIENT": ["pat1", "pat1", "pat2"],
                           "FILENAME": ["slide-1.h5", "slide-2.h5", "slide-3.h5"], "MPP": [0.5, 0.5, 0.25]})
    csv = table(tmp_path, slides.merge(clini, on="PATIENT").to_dict("records"))
    cohort = Cohort(csv, feats, label_col="isMSIH", case_col="PATIENT", slide_col="FILENAME", mpp_col="MPP")
    assert cohort.case_ids == ["pat1", "pat2"] and cohort.classes == ["MSIH", "nonMSIH"]
    assert cohort.slide_path("slide-1.h5") == feats / "slide-1.h5"  # FILENAME keeps its .h5
    bag = cohort.load_case("pat1")
    assert bag.slide_ids == ("slide-1.h5", "slide-2.h5") and bag.meta["coord_unit"] == "px"
    assert bag.n == 10 and bag.patch_size == 512.0 and bag.label == 0  # 256 um at 0.5 um/px
    other = cohort.load_case("pat2")
    assert other.patch_size == 1024.0 and other.label == 1  # its own mpp: 0.25 um/px
    np.testing.assert_allclose(other.coords.numpy(), (BLOCK[:5] * 256.0 + 100.0) / 0.25)
    assert preflight(cohort).feature_dim == 3
