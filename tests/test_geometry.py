"""Patch size and grid cells: single bag == batched, padding ignored, tolerance, dtype, device."""
import numpy as np
import pytest
import torch

from r2t_plugin.geometry import (CELL_TOLERANCE, batched_grid_cells, grid_cells, grid_edges,
                                 infer_patch_size, infer_patch_sizes, knn_edges)


def _coords(rng, n, step=256.0, origin=(1000, 3000)):
    """n distinct cells of an 8 x 8 grid, two neighbours among them (so the gap is ``step``)."""
    cells = np.concatenate([[0, 1], rng.choice(np.arange(2, 64), size=max(0, n - 2), replace=False)])[:n]
    xy = np.stack([cells % 8, cells // 8], axis=1) * step + np.array(origin)
    return torch.from_numpy(xy)


def test_patch_size_is_the_smallest_positive_gap() -> None:
    c = torch.tensor([[0, 0], [512, 0], [512, 224], [1024, 448]])
    assert infer_patch_size(c) == 224.0
    assert infer_patch_size(torch.tensor([[5.0, 5.0], [5.0, 5.0]])) == 1.0  # one position
    assert infer_patch_size(torch.tensor([[7.0, 9.0]])) == 1.0
    assert infer_patch_size(np.array([[0, 0], [0, 256]])) == 256.0


def test_cells_row_from_y_col_from_x() -> None:
    c = torch.tensor([[256, 512], [768, 512], [256, 768]])
    assert grid_cells(c, 256).tolist() == [[0, 0], [0, 2], [1, 0]]
    assert grid_cells(c).tolist() == [[0, 0], [0, 2], [1, 0]]  # inferred: 256
    assert grid_cells(c, 128).tolist() == [[0, 0], [0, 4], [2, 0]]


def test_tolerance_and_float32_rule() -> None:
    # a coordinate a hair below a cell border still lands in that cell ...
    c = torch.tensor([[0.0, 0.0], [512 - 256 * CELL_TOLERANCE / 2, 0.0]], dtype=torch.float64)
    assert grid_cells(c, 256.0).tolist() == [[0, 0], [0, 2]]
    # ... but one clearly inside the previous cell does not
    c = torch.tensor([[0.0, 0.0], [512 - 256 * 2 * CELL_TOLERANCE, 0.0]])
    assert grid_cells(c, 256.0).tolist() == [[0, 0], [0, 1]]
    # non-round patch sizes (micrometres converted with an mpp) keep their grid
    step = 256 / 0.2527
    c = torch.tensor([[3, 7], [4, 7], [3, 9], [120, 80]], dtype=torch.float64) * step
    assert grid_cells(c, step).tolist() == [[0, 0], [0, 1], [2, 0], [73, 117]]
    assert infer_patch_sizes(c[None]).dtype == torch.float32
    assert abs(infer_patch_size(c) - step) < 1e-3


def test_batched_equals_single_bags_and_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    bags = [_coords(rng, n, step) for n, step in [(7, 256.0), (30, 224.0), (1, 512.0), (12, 448.0)]]
    nmax = max(len(c) for c in bags)
    coords = torch.full((len(bags), nmax, 2), -5e4, dtype=torch.float64)  # padding far off the grid
    mask = torch.zeros(len(bags), nmax, dtype=torch.bool)
    for i, c in enumerate(bags):
        coords[i, : len(c)], mask[i, : len(c)] = c, True
    sizes = infer_patch_sizes(coords, mask)
    assert sizes.tolist() == [infer_patch_size(c) for c in bags] == [256.0, 224.0, 1.0, 448.0]
    cells = batched_grid_cells(coords, mask)
    for i, c in enumerate(bags):
        assert torch.equal(cells[i, : len(c)], grid_cells(c))
        assert not cells[i, len(c):].any()
    given = batched_grid_cells(coords, mask, torch.tensor([256.0, 224.0, 512.0, 448.0]))
    assert torch.equal(given[:, :, :], cells)  # bag 2 (one instance) is cell (0, 0) either way
    assert torch.equal(batched_grid_cells(coords[:1, :7], None, 256.0)[0], grid_cells(bags[0], 256.0))


def test_grid_and_knn_edges() -> None:
    c = torch.tensor([[0, 0], [256, 0], [0, 256], [2560, 2560]])
    edges = {tuple(e) for e in grid_edges(c, 256).t().tolist()}
    assert edges == {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)}
    assert grid_edges(c[:1], 256).shape == (2, 0)
    knn = knn_edges(c, k=1)
    assert knn.shape == (2, 4) and knn[1, 3].item() in (1, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_everything_stays_on_the_input_device() -> None:
    c = torch.tensor([[0, 0], [256, 0], [0, 256]], device="cuda")
    mask = torch.ones(1, 3, dtype=torch.bool, device="cuda")
    assert infer_patch_sizes(c[None], mask).device.type == "cuda"
    assert batched_grid_cells(c[None], mask).device.type == "cuda"
    assert grid_edges(c).device.type == "cuda" and knn_edges(c, 1).device.type == "cuda"
