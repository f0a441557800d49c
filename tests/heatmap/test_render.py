"""Drawing without a slide: squares in the right places and colours, errors, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2t_plugin.heatmap import HeatmapError, draw_heatmap, percentile_ranks
from r2t_plugin.models import CheckpointError, ModelSpec, build_model, load_checkpoint, save_checkpoint

from .conftest import decode, read_png


def test_percentile_ranks() -> None:
    r = percentile_ranks(np.array([10.0, -1.0, 3.0, 3.0, 1e6]))
    assert np.allclose(r, [0.75, 0.0, 0.375, 0.375, 1.0])


def test_squares_carry_their_scores_at_their_places(tmp_path) -> None:
    rng = np.random.default_rng(0)
    cells = np.array([(c, r) for r in range(5) for c in range(7) if (c + r) % 4])  # holes in the grid
    coords = cells * 512.0 + [1000.0, 3000.0]
    scores = rng.lognormal(size=len(coords))
    done = draw_heatmap(tmp_path / "h.png", coords, 512.0, scores, "test")
    png = read_png(done.path)
    left, top, w, h = done.box
    centres = done.canvas.to_pixels(coords + 256.0)
    px = png[np.rint(centres[:, 1]).astype(int) + top, np.rint(centres[:, 0]).astype(int) + left]
    assert np.abs(decode(px) - percentile_ranks(scores)).max() < 0.02
    hole = done.canvas.to_pixels(np.array([[1000.0 + 256, 3000.0 + 256]]))[0]  # cell (0, 0) is a hole
    assert (png[int(hole[1]) + top, int(hole[0]) + left] == 255).all()


def test_bad_inputs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(HeatmapError, match="coords must be"):
        draw_heatmap(tmp_path / "h.png", np.zeros((3, 2)), 256.0, np.zeros(4), "t")
    with pytest.raises(HeatmapError, match="patch size"):
        draw_heatmap(tmp_path / "h.png", np.zeros((3, 2)), 0.0, np.zeros(3), "t")


def test_write_is_atomic(tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "h.png"
    target.write_bytes(b"old")

    def broken(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        draw_heatmap(target, np.array([[0.0, 0.0], [256.0, 0.0]]), 256.0, np.array([1.0, 2.0]), "t")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]


def _features(tmp_path, with_coords: bool = True, dim: int = 8):
    from r2t_plugin.data.readers import write_clam_h5

    cells = np.array([(c, r) for r in range(4) for c in range(6)])
    feats = np.random.default_rng(0).standard_normal((len(cells), dim)).astype(np.float32)
    if not with_coords:
        path = tmp_path / "slide.npy"
        np.save(path, feats)
        return path
    return write_clam_h5(tmp_path / "slide.h5", feats, cells * 256, 256)


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("clam_mb", 8, 2, options={"dim": 16}, classes=("benign", "malignant"), name="CLAM-MB test")
    return save_checkpoint(tmp_path / "model.pt", build_model(spec).state_dict(), spec)


def test_cli_draws_one_slide(tmp_path, checkpoint, capsys) -> None:
    from r2t_plugin.cli import main

    out = tmp_path / "out" / "slide.png"
    assert main(["heatmap", "--checkpoint", str(checkpoint), "--features", str(_features(tmp_path)),
                 "-o", str(out)]) == 0
    assert read_png(out).shape[0] > 100
    assert "slide.png" in capsys.readouterr().out


def test_cli_errors(tmp_path, checkpoint, capsys) -> None:
    from r2t_plugin.cli import main

    npy = _features(tmp_path, with_coords=False)
    assert main(["heatmap", "--checkpoint", str(checkpoint), "--features", str(npy), "-o", str(tmp_path / "a.png")]) == 2
    assert "no patch coordinates" in capsys.readouterr().err
    wide = _features(tmp_path / "w" if (tmp_path / "w").mkdir() is None else tmp_path, dim=5)
    assert main(["heatmap", "--checkpoint", str(checkpoint), "--features", str(wide), "-o", str(tmp_path / "b.png")]) == 2
    assert "width 5" in capsys.readouterr().err
    state = tmp_path / "bare.pt"
    torch.save(build_model(ModelSpec("abmil", 8, 2)).state_dict(), state)
    with pytest.raises(CheckpointError, match="does not say which model"):
        load_checkpoint(state)
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def _half_tissue_slide():
    """A fake slide thumbnail: glass on the left half, pink tissue on the right, 1 px = 4 level-0 px."""
    from r2t_plugin.data.wsi import SlideThumbnail

    image = np.full((64, 64, 3), 245, np.uint8)
    image[:, 32:] = (200, 90, 160)
    return SlideThumbnail("fake.svs", image, (256, 256), 0.5)


def test_alpha_sets_the_blend_and_only_tissue_is_coloured(tmp_path) -> None:
    from matplotlib import colormaps

    thumb = _half_tissue_slide()
    coords, scores = np.array([[64.0, 64.0], [128.0, 64.0]]), np.array([1.0, 2.0])  # across glass and tissue
    shown = {}
    for alpha in (0.2, 0.8):
        done = draw_heatmap(tmp_path / f"{alpha}.png", coords, 64.0, scores, "t", thumb, alpha=alpha, cmap="viridis")
        left, top, w, h = done.box
        shown[alpha] = read_png(done.path)[top:top + h, left:left + w].astype(float)
        colour = colormaps["viridis"](1.0)[:3]  # the second patch is the top score: colour 1.0
        expected = (1 - alpha) * np.array([200, 90, 160]) + alpha * 255 * np.array(colour)
        assert np.abs(shown[alpha][20, 40] - expected).max() <= 1.0  # tissue under the second patch
        assert (shown[alpha][20, 20] == 245).all()  # glass under the first patch stays glass
        assert (shown[alpha][50, 40] == (200, 90, 160)).all()  # tissue under no patch is untouched
    assert np.abs(shown[0.2] - shown[0.8]).max() > 50


def test_style_errors(tmp_path, checkpoint, capsys) -> None:
    from r2t_plugin.cli import main
    from r2t_plugin.heatmap.render import check_style

    with pytest.raises(HeatmapError, match=r"unknown colour map 'virdis' \(did you mean viridis"):
        check_style(0.4, "virdis")
    with pytest.raises(HeatmapError, match=r"opacity \(alpha\) must be in \(0, 1\]"):
        check_style(1.5, "turbo")
    features = _features(tmp_path)
    for extra, message in ((["--cmap", "nope"], "unknown colour map 'nope'"), (["--alpha", "0"], "opacity"),
                           (["--top-k", "0"], "--top-k must be >= 1")):
        assert main(["heatmap", "--checkpoint", str(checkpoint), "--features", str(features),
                     "-o", str(tmp_path / "s.png"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s.png").exists()


def test_cli_defaults_are_the_drawing_defaults() -> None:
    import argparse

    from r2t_plugin.heatmap.cli import add_arguments
    from r2t_plugin.heatmap.render import CMAP, OVERLAY_ALPHA

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--checkpoint", "c", "--features", "f", "-o", "o"])
    assert (args.alpha, args.cmap, args.top_k) == (OVERLAY_ALPHA, CMAP, None) and 0.3 <= OVERLAY_ALPHA <= 0.5


class _Fixed(torch.nn.Module):
    """A model that gives known instance scores."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return {"logits": torch.zeros(1, 2), "instance_scores": self.scores[None]}


def test_top_k_csv_lists_the_highest_patches(tmp_path, capsys) -> None:
    from r2t_plugin.cli import main
    from r2t_plugin.heatmap import slide_heatmap

    path = _features(tmp_path)
    n = 24
    scores = np.random.default_rng(1).permutation(n).astype(float)
    scores[[3, 7]] = 100.0  # a tie: the earlier patch ranks first
    spec = ModelSpec("abmil", 8, 2)
    done = slide_heatmap(_Fixed(scores), spec, path, tmp_path / "s.png", top=5)
    assert done.top_k == tmp_path / "s_top5.csv"
    lines = done.top_k.read_text().splitlines()
    assert lines[0] == "rank,patch,x,y,score,percentile"
    rows = [line.split(",") for line in lines[1:]]
    order = [int(r[1]) for r in rows]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert order[:2] == [3, 7] and [float(r[4]) for r in rows] == sorted(scores, reverse=True)[:5]
    cells = np.array([(c, r) for r in range(4) for c in range(6)]) * 256
    assert all([float(r[2]), float(r[3])] == cells[int(r[1])].tolist() for r in rows)
    assert float(rows[0][5]) == pytest.approx(percentile_ranks(scores)[3], abs=1e-4)
    big = slide_heatmap(_Fixed(scores), spec, path, tmp_path / "all.png", top=100)
    assert len(big.top_k.read_text().splitlines()) == n + 1  # k over N: every patch once
    # through the CLI, named after the PNG
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(spec).state_dict(), spec)
    assert main(["heatmap", "--checkpoint", str(ckpt), "--features", str(path), "-o", str(tmp_path / "c.png"),
                 "--top-k", "3", "--cmap", "magma", "--alpha", "0.6"]) == 0
    assert len((tmp_path / "c_top3.csv").read_text().splitlines()) == 4
    assert "c_top3.csv" in capsys.readouterr().out


def _drawn_figure(monkeypatch):
    """Capture the matplotlib Figure that draw_heatmap saves."""
    from matplotlib.figure import Figure

    seen = []
    real = Figure.savefig

    def keep(self, *a, **kw):
        seen.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    return seen


def test_um_without_mpp_stays_in_um_and_says_so(tmp_path, monkeypatch) -> None:
    import h5py

    from r2t_plugin.heatmap import slide_heatmap

    cells = np.array([(c, r) for r in range(3) for c in range(4)], dtype=float)
    with h5py.File(tmp_path / "stamp.h5", "w") as f:  # STAMP's layout: feats, coords in µm
        f["feats"] = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
        f["coords"] = cells * 112.0
        f.attrs.update({"unit": "um", "tile_size_um": 112.0, "tile_size_px": 224})
    scores = np.arange(12.0)
    figures = _drawn_figure(monkeypatch)
    done = slide_heatmap(_Fixed(scores), ModelSpec("abmil", 8, 2), tmp_path / "stamp.h5", tmp_path / "u.png", top=2)
    ax = figures[-1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (µm)", "y (µm)")
    assert ax.get_xlim()[1] > 3 * 112  # the axes span the µm coordinates
    lines = done.top_k.read_text().splitlines()
    assert lines[0] == "rank,patch,x_um,y_um,score,percentile"  # no level-0 pixels without an mpp
    assert lines[1].startswith("1,11,336,224,")
    draw_heatmap(tmp_path / "p.png", cells * 256, 256.0, scores, "t")
    assert figures[-1].axes[0].get_xlabel() == "x (level-0 px)"
