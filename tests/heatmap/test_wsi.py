"""With the real slide: tiling, CLAM h5, overlay alignment, and slide errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2t_plugin.nn import Aggregator
from r2t_plugin.data.readers import read_bag, write_clam_h5
from r2t_plugin.data.tiling import RandomProjectionEncoder, extract_features
from r2t_plugin.data.wsi import WSIError, read_thumbnail
from r2t_plugin.heatmap import slide_heatmap
from r2t_plugin.heatmap.render import OVERLAY_ALPHA, percentile_ranks
from r2t_plugin.models import ModelSpec, build_model, save_checkpoint

from .conftest import decode, read_png

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
    colour = (shown - (1 - OVERLAY_ALPHA) * thumb[uv[:, 1], uv[:, 0]]) / OVERLAY_ALPHA
    expected = percentile_ranks(position_score(xy[:, 0] / PATCH, xy[:, 1] / PATCH))
    assert np.abs(decode(np.clip(colour, 0, 255)) - expected).max() < 0.03
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
