"""With the real slide: tiling, CLAM h5, overlay alignment, and slide errors."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from r2t_plugin.nn import Aggregator
from r2t_plugin.data.readers import read_bag, write_clam_h5
from r2t_plugin.data.tiling import RandomProjectionEncoder, extract_features
from r2t_plugin.data.wsi import WSIError, read_thumbnail
from r2t_plugin.heatmap import slide_heatmap
from r2t_plugin.heatmap.render import CMAP, OVERLAY_ALPHA, percentile_ranks
from r2t_plugin.models import ModelSpec, build_model, load_checkpoint, save_checkpoint

from .conftest import read_png

PATCH = 224


class PositionScore(Aggregator):
    """Scores a known function of the patch position (no weights)."""

    def aggregate(self, x, mask, *, coords=None, **_):
        col, row = coords[..., 0] / PATCH, coords[..., 1] / PATCH
        return {"logits": torch.zeros(x.shape[0], self.n_out), "instance_scores": position_score(col, row)}


def position_score(col, row):
    return (col * 7 + row * 3) % 11  # neighbours always differ: a one-tile shift is caught


def test_tiling_writes_clam_h5_of_tissue_tiles(svs, cmu_h5) -> None:
    bag = read_bag(cmu_h5)
    thumb = read_thumbnail(svs, 512)
    assert bag.patch_size == PATCH and bag.meta["format"] == "clam_h5"
    xy = bag.coords.numpy()
    assert 30 <= bag.n <= 60  # ~41 of the 117 tiles are mostly tissue
    assert (xy % PATCH == 0).all() and (xy >= 0).all()
    assert (xy + PATCH <= thumb.level0_size).all()
    assert not ((xy[:, 0] == 0) & (xy[:, 1] == 0)).any()  # the glass corner is not tissue
    again = extract_features(svs, cmu_h5.parent / "again.h5", PATCH)
    assert torch.equal(read_bag(again).features, bag.features)  # deterministic encoder
    assert bag.features.std(0).min() > 0


def test_overlay_squares_land_on_their_tiles(svs, cmu_h5, tmp_path) -> None:
    spec = ModelSpec("position", 64, 2, name="position model")
    done = slide_heatmap(PositionScore(64, 2), spec, cmu_h5, tmp_path / "o.png", svs, max_size=1024)
    png = read_png(done.path).astype(float)
    thumb = done.canvas.background.astype(float)
    left, top, w, h = done.box
    assert (w, h) == thumb.shape[1::-1]
    xy = read_bag(cmu_h5).coords.numpy().astype(float)
    uv = np.rint(done.canvas.to_pixels(xy + PATCH / 2)).astype(int)
    shown = png[uv[:, 1] + top, uv[:, 0] + left]
    under = thumb[uv[:, 1], uv[:, 0]]
    tissue = done.canvas.tissue[uv[:, 1], uv[:, 0]]
    assert tissue.mean() > 0.9  # the tiles are mostly tissue
    value = percentile_ranks(position_score(xy[:, 0] / PATCH, xy[:, 1] / PATCH))
    blended = (1 - OVERLAY_ALPHA) * under + OVERLAY_ALPHA * colormaps[CMAP](value)[:, :3] * 255
    assert np.abs(shown[tissue] - blended[tissue]).max() <= 1.0  # the tile's own score, blended at alpha
    assert np.array_equal(shown[~tissue], under[~tissue])  # glass under a tile stays as it is
    # outside every tile the slide shows through unchanged
    assert np.array_equal(png[top + 3, left + 3], thumb[3, 3])


def test_features_of_another_slide_are_refused(svs, cmu_h5, tmp_path) -> None:
    bag = read_bag(cmu_h5)
    moved = write_clam_h5(tmp_path / "moved.h5", bag.features.numpy(), bag.coords.numpy() * 2, PATCH)
    torch.manual_seed(0)
    spec = ModelSpec("abmil", 64, 2, options={"dim": 16})
    with pytest.raises(WSIError, match="do not belong to this slide"):
        slide_heatmap(build_model(spec).eval(), spec, moved, tmp_path / "m.png", svs)
    assert not (tmp_path / "m.png").exists()


def test_unreadable_slides(openslide, tmp_path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all" * 100)
    with pytest.raises(WSIError, match="bad.svs: unreadable slide"):
        read_thumbnail(bad)
    with pytest.raises(WSIError, match="no such slide file"):
        read_thumbnail(tmp_path / "missing.svs")


def test_cli_overlay(svs, cmu_h5, tmp_path, capsys) -> None:
    from r2t_plugin.cli import main

    torch.manual_seed(0)
    spec = ModelSpec("abmil", 64, 2, options={"dim": 16}, r2t={"dim": 16, "heads": 2, "region_num": 2,
                                                                "layout": "coords"}, classes=("normal", "tumour"))
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(spec).state_dict(), spec)
    out = tmp_path / "cmu.png"
    assert main(["heatmap", "--checkpoint", str(ckpt), "--features", str(cmu_h5), "--wsi", str(svs),
                 "-o", str(out), "--size", "768"]) == 0
    assert read_png(out).shape[0] == 768 + 80 + 60
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"junk")
    assert main(["heatmap", "--checkpoint", str(ckpt), "--features", str(cmu_h5), "--wsi", str(bad),
                 "-o", str(tmp_path / "x.png")]) == 2
    assert "unreadable slide" in capsys.readouterr().err


def test_encoder_is_a_fixed_projection() -> None:
    tiles = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    a, b = RandomProjectionEncoder(16, 8, seed=1)(tiles), RandomProjectionEncoder(16, 8, seed=1)(tiles)
    assert a.shape == (3, 16) and np.array_equal(a, b)
    assert not np.array_equal(a, RandomProjectionEncoder(16, 8, seed=2)(tiles))


MPP = 0.499  # the slide's level-0 microns per pixel (openslide.mpp-x)


def write_stamp_h5(path, feats: np.ndarray, coords_um: np.ndarray, tile_um: float):
    """A feature file as STAMP writes it: ``feats``, ``coords`` in µm, unit and tile-size attributes."""
    import h5py

    with h5py.File(path, "w") as f:
        f["feats"] = feats.astype(np.float32)
        f["coords"] = coords_um.astype(np.float64)
        f.attrs.update({"unit": "um", "tile_size_um": tile_um, "tile_size_px": PATCH, "extractor": "test"})
    return path


@pytest.fixture(scope="module")
def stamp_run(svs, cmu_h5, tmp_path_factory):
    """A compare run over six STAMP-format cases, each the real slide's tiles in µm (one
    feature file and one slide link per case), with a finished run."""
    from .conftest import finished_run

    root = tmp_path_factory.mktemp("stamp")
    bag = read_bag(cmu_h5)
    assert read_thumbnail(svs, 64).mpp == pytest.approx(MPP)
    (root / "feats").mkdir()
    (root / "slides").mkdir()
    rows = ["case_id,slide_id,label"]
    rng = np.random.default_rng(0)
    for i in range(6):
        feats = bag.features.numpy() + 0.1 * rng.standard_normal(bag.features.shape)
        write_stamp_h5(root / "feats" / f"cmu_{i}.h5", feats, bag.coords.numpy() * MPP, PATCH * MPP)
        (root / "slides" / f"cmu_{i}.svs").symlink_to(svs)
        rows.append(f"case{i},cmu_{i},{i % 2}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    out, cell, cohort = finished_run(root, {"csv": str(root / "cohort.csv"), "features": str(root / "feats"),
                                            "task": "classification"}, bag.dim)
    return root, out / "runs" / cell.run_id, bag.coords.numpy().astype(float)


def _coloured_box(png: np.ndarray, thumb: np.ndarray, box) -> tuple[int, int, int, int]:
    """(u0, v0, u1, v1) canvas pixels bounding where the PNG differs from the slide thumbnail."""
    left, top, w, h = box
    changed = (png[top:top + h, left:left + w].astype(int) != thumb.astype(int)).any(axis=-1)
    rows, cols = np.nonzero(changed)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def test_stamp_um_coordinates_land_on_their_pixels_in_both_modes(svs, stamp_run, tmp_path) -> None:
    from r2t_plugin.cli import main
    from r2t_plugin.heatmap import load_test_split

    root, run, px = stamp_run
    slide = load_test_split(run).cohort.slides(load_test_split(run).cases[0])[0]
    dest = tmp_path / "batch"
    assert main(["heatmap", "--checkpoint", str(run), "--test-split", "--wsi-dir", str(root / "slides"),
                 "-o", str(dest), "--size", "1024", "--top-k", "5"]) == 0
    model, spec = load_checkpoint(run / "best.pt")
    one = slide_heatmap(model, spec, root / "feats" / f"{slide}.h5", tmp_path / "one.png", svs, max_size=1024)
    thumb = one.canvas.background
    left, top, w, h = one.box
    batch_png, one_png = read_png(dest / f"{slide}.png"), read_png(one.path)
    # the squares cover exactly the level-0 pixel boxes of the tiles (not µm read as pixels)
    scale = np.array(one.canvas.scale)
    expected = np.r_[np.floor(px.min(0) * scale), np.ceil((px.max(0) + PATCH) * scale)]
    for png in (batch_png, one_png):
        got = np.array(_coloured_box(png, thumb, one.box))
        assert np.all(got[:2] >= expected[:2] - 1) and np.all(got[2:] <= expected[2:] + 1)
        assert np.all(got[2:] - got[:2] >= 0.9 * (expected[2:] - expected[:2]))
    # one conversion for both modes: the same canvas pixels, the same axes
    assert np.array_equal(batch_png[top:top + h, left:left + w], one_png[top:top + h, left:left + w])
    assert f'<a href="{slide}_top5.csv">' in (dest / "index.html").read_text()
    table = (dest / f"{slide}_top5.csv").read_text().splitlines()
    assert table[0] == "rank,patch,x,y,x_um,y_um,score,percentile" and len(table) == 6
    for line in table[1:]:
        rank, patch, x, y, x_um, y_um = line.split(",")[:6]
        assert np.allclose([float(x), float(y)], px[int(patch)], atol=1e-3)
        assert np.allclose([float(x_um), float(y_um)], px[int(patch)] * MPP, rtol=1e-5)


def test_um_on_a_slide_without_mpp_is_refused(svs, stamp_run, tmp_path, monkeypatch) -> None:
    from r2t_plugin.data import wsi
    from r2t_plugin.heatmap import slide

    root, run, _ = stamp_run
    model, spec = load_checkpoint(run / "best.pt")
    real = wsi.read_thumbnail
    monkeypatch.setattr(slide, "read_thumbnail", lambda p, n: replace(real(p, n), mpp=None))
    with pytest.raises(WSIError, match="in µm and .* gives no microns per pixel"):
        slide_heatmap(model, spec, root / "feats" / "cmu_0.h5", tmp_path / "x.png", svs)
    assert not (tmp_path / "x.png").exists()
