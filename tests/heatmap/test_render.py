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
