"""Readers on files written in each tool's format, with their attributes."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from r2t_plugin.data.readers import ReaderError, find_reader, read_bag
from r2t_plugin.geometry import grid_cells
from r2t_plugin.plugins import registry

RNG = np.random.default_rng(0)
GRID = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [2, 1]])  # patch grid positions (col, row)


def write_clam_h5(path: Path, feats: np.ndarray, coords: np.ndarray, **coord_attrs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        d = f.create_dataset("coords", data=coords)
        for k, v in coord_attrs.items():
            d.attrs[k] = v
    return path


def write_trident_h5(path: Path, feats: np.ndarray, coords: np.ndarray, patch_size: int,
                     level0_mag: int, target_mag: int) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        d = f.create_dataset("coords", data=coords)
        d.attrs["patch_size"] = patch_size
        d.attrs["patch_size_level0"] = patch_size * level0_mag // target_mag
        d.attrs["level0_magnification"] = level0_mag
        d.attrs["target_magnification"] = target_mag
        d.attrs["overlap"] = 0
        d.attrs["level0_width"] = 40_000
        d.attrs["level0_height"] = 30_000
        d.attrs["name"] = "slide"
    return path


def write_stamp_h5(path: Path, feats: np.ndarray, coords_um: np.ndarray, tile_um: float, tile_px: int) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("feats", data=feats)
        f.create_dataset("coords", data=coords_um)
        f.attrs["unit"] = "um"
        f.attrs["tile_size_um"] = tile_um
        f.attrs["tile_size_px"] = tile_px
        f.attrs["extractor"] = "ctranspath"
    return path


def test_builtin_readers_are_registered_through_the_hook():
    readers = registry("readers")
    assert {"clam_h5", "trident_h5", "stamp_h5", "clam_pt", "npy"} <= set(readers.names())
    assert readers.provider("clam_h5") == "builtin"


def test_clam_h5_patch_size_from_level_and_downsample(tmp_path):
    feats = RNG.standard_normal((5, 8)).astype(np.float16)  # half precision on disk
    coords = GRID * 512 + 1000
    path = write_clam_h5(tmp_path / "h5_files" / "s1.h5", feats, coords,
                         patch_size=256, patch_level=1, downsample=np.array([2.0, 2.0]))
    bag = read_bag(path)
    assert bag.meta["format"] == "clam_h5"
    assert bag.features.dtype == torch.float32
    np.testing.assert_allclose(bag.features.numpy(), feats.astype(np.float32))
    assert bag.patch_size == 512.0  # 256 px at level 1, downsample 2 -> 512 level-0 px
    np.testing.assert_array_equal(bag.coords.numpy(), coords)
    assert bag.slide_ids == ("s1",)
    cells = grid_cells(bag.coords, bag.patch_size)
    np.testing.assert_array_equal(cells.numpy(), GRID[:, ::-1])  # (row, col)


def test_clam_h5_without_attributes_infers_patch_size(tmp_path):
    path = write_clam_h5(tmp_path / "s.h5", RNG.standard_normal((5, 4)).astype(np.float32), GRID * 224)
    bag = read_bag(path)
    assert bag.patch_size == 224.0
    assert "inferred" in bag.meta["patch_size_source"]


def test_trident_h5_uses_level0_patch_size_and_keeps_attributes(tmp_path):
    coords = GRID * 448
    path = write_trident_h5(tmp_path / "slide.h5", RNG.standard_normal((5, 6)).astype(np.float32), coords,
                            patch_size=224, level0_mag=40, target_mag=20)
    reader = find_reader(path)
    assert reader.name == "trident_h5"  # not mistaken for CLAM: the coords attributes tell
    bag = reader.read(path)
    assert bag.patch_size == 448.0
    assert bag.meta["level0_magnification"] == 40 and bag.meta["target_magnification"] == 20
    assert bag.meta["overlap"] == 0 and bag.meta["level0_width"] == 40_000
    np.testing.assert_array_equal(bag.coords.numpy(), coords)


def test_stamp_h5_micrometres_converted_with_mpp(tmp_path):
    coords_um = GRID * 256.0 + 12.5
    path = write_stamp_h5(tmp_path / "slide.h5", RNG.standard_normal((5, 3)).astype(np.float32),
                          coords_um, tile_um=256.0, tile_px=224)
    assert find_reader(path).name == "stamp_h5"
    bag_px = read_bag(path, mpp=0.5)
    assert bag_px.meta["coord_unit"] == "px"
    assert bag_px.patch_size == 512.0  # 256 um at 0.5 um/px
    np.testing.assert_allclose(bag_px.coords.numpy(), coords_um / 0.5)
    assert bag_px.meta["extractor"] == "ctranspath" and bag_px.meta["tile_size_px"] == 224


def test_stamp_h5_without_mpp_stays_in_micrometres_consistently(tmp_path):
    coords_um = GRID * 256.0
    path = write_stamp_h5(tmp_path / "slide.h5", RNG.standard_normal((5, 3)).astype(np.float32),
                          coords_um, tile_um=256.0, tile_px=224)
    bag = read_bag(path)
    assert bag.meta["coord_unit"] == "um"
    assert bag.patch_size == 256.0
    np.testing.assert_allclose(bag.coords.numpy(), coords_um)
    # same patch grid in either unit
    px = read_bag(path, mpp=0.25)
    assert torch.equal(grid_cells(bag.coords, bag.patch_size), grid_cells(px.coords, px.patch_size))


def test_clam_pt_and_npy_sniffed_by_content_not_name(tmp_path):
    x = torch.randn(7, 5)
    torch.save(x, tmp_path / "looks_like.h5")  # misleading names on purpose
    np.save(tmp_path / "array.npy", x.numpy())
    (tmp_path / "array.npy").rename(tmp_path / "array.pt")
    pt = find_reader(tmp_path / "looks_like.h5")
    npy = find_reader(tmp_path / "array.pt")
    assert (pt.name, npy.name) == ("clam_pt", "npy")
    for reader, path in ((pt, tmp_path / "looks_like.h5"), (npy, tmp_path / "array.pt")):
        bag = reader.read(path)
        assert torch.equal(bag.features, x)
        assert bag.coords is None and bag.patch_size is None


def test_torch_file_holding_a_dict_is_not_a_clam_pt(tmp_path):
    torch.save({"features": torch.randn(3, 2)}, tmp_path / "d.pt")
    with pytest.raises(ReaderError, match="d.pt"):
        find_reader(tmp_path / "d.pt")


def test_unknown_and_broken_files_are_named(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not a feature file")
    with pytest.raises(ReaderError, match="junk.h5.*not a known feature file"):
        read_bag(tmp_path / "junk.h5")
    with pytest.raises(ReaderError, match="missing.h5"):
        read_bag(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["features"] = np.array([[np.nan, 1.0], [0.0, 1.0]], dtype=np.float32)
        f["coords"] = np.array([[0, 0], [256, 0]])
    with pytest.raises(ReaderError, match="nan.h5.*NaN"):
        read_bag(tmp_path / "nan.h5")


def test_an_empty_attribute_is_read_as_an_empty_list(tmp_path):
    """Extractors leave empty attributes (e.g. no downsample recorded); the file still reads."""
    coords = GRID * 256
    path = write_clam_h5(tmp_path / "s.h5", RNG.standard_normal((5, 4)).astype(np.float32), coords,
                         patch_size=256, patch_level=0, notes=np.array([], dtype=np.float64))
    bag = read_bag(path)
    assert bag.n == 5 and bag.patch_size == 256.0
