"""The default mode (README, "The R²T stage"): masking, per-bag CR-MSA, regions, layouts."""
import pytest
import torch

from r2t_plugin import R2T
from r2t_plugin.r2t.regions import RegionError, coords_regions, sequence_regions

SMALL = dict(dim=16, heads=2, crmsa_heads=2, epeg_k=5, crmsa_k=3)


def randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def stage(seed=0, **kw):
    torch.manual_seed(seed)
    opts = {**SMALL, **kw}
    return randomise(R2T(12, opts.pop("dim"), **opts), seed)


def grid_coords(n, width, patch=256, seed=0):
    """n distinct cells of a width-wide grid, shuffled, as level-0 top-left corners."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(width * width, generator=g)[:n]
    return torch.stack([cells % width, cells // width], dim=1).float() * patch + 1000


@pytest.mark.parametrize("n", [1024, 4096])
def test_default_equals_official_without_padding(n):
    default = stage(region_num=8, min_region_tokens=16, crmsa_k=1)
    official = R2T.official(12, 16, heads=2, crmsa_heads=2, epeg_k=5, crmsa_k=1, region_num=8).eval()
    official.load_state_dict(default.state_dict())
    x = torch.randn(n, 12)
    with torch.no_grad():
        torch.testing.assert_close(default(x), official(x), rtol=1e-5, atol=1e-5)


def test_official_depends_on_zero_padding_default_does_not():
    """The reference's quirk: zero rows appended to a bag change the other rows' output."""
    x = torch.randn(300, 12)
    padded = torch.cat([x, torch.zeros(200, 12)])
    official = R2T.official(12, 16, heads=2, crmsa_heads=2, epeg_k=5)
    randomise(official)
    with torch.no_grad():
        a, b = official(x), official(padded)[:300]
    assert (a - b).abs().max() > 1e-3
    default = stage()
    mask = torch.arange(500) < 300
    with torch.no_grad():
        torch.testing.assert_close(default(x), default(padded[None], mask=mask[None])[0, :300],
                                   rtol=1e-5, atol=1e-5)


def test_official_batch_mixes_bags_and_warns():
    official = R2T.official(12, 16, heads=2, crmsa_heads=2, epeg_k=5)
    randomise(official)
    x = torch.randn(2, 300, 12)
    with torch.no_grad():
        alone = official(x[0])
        with pytest.warns(UserWarning, match="mixes regions of different bags"):
            batched = official(x)
    assert (alone - batched[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="official mode takes no padding mask"):
        official(x, mask=torch.arange(300).repeat(2, 1) < 200)


@pytest.mark.parametrize("layout", ["sequence", "coords"])
@pytest.mark.parametrize("sizes", [(1, 40), (37, 300, 5), (64, 65)])
def test_bag_alone_equals_bag_in_padded_batch(layout, sizes):
    model = stage(layout=layout)
    nmax = max(sizes) + 7
    x = torch.zeros(len(sizes), nmax, 12)
    coords = torch.zeros(len(sizes), nmax, 2)
    mask = torch.zeros(len(sizes), nmax, dtype=torch.bool)
    for i, n in enumerate(sizes):
        x[i, :n] = torch.randn(n, 12)
        coords[i, :n] = grid_coords(n, 30, seed=i)
        mask[i, :n] = True
        # garbage in the padding must not matter
        x[i, n:] = 100.0
        coords[i, n:] = -5e4
    with torch.no_grad():
        batched = model(x, mask=mask, coords=coords, patch_size=256)
        for i, n in enumerate(sizes):
            alone = model(x[i, :n], coords=coords[i, :n], patch_size=256)
            torch.testing.assert_close(batched[i, :n], alone, rtol=1e-5, atol=1e-5)
            assert batched[i, n:].abs().max() == 0


@pytest.mark.parametrize("extra", [0, 3, 250])
def test_padding_amount_does_not_matter(extra):
    model = stage()
    x = torch.randn(150, 12)
    padded = torch.cat([x, torch.randn(extra, 12)])[None]
    mask = (torch.arange(150 + extra) < 150)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask=mask)[0, :150], model(x), rtol=1e-5, atol=1e-5)


def test_mask_need_not_be_a_prefix():
    model = stage()
    x = torch.randn(80, 12)
    mask = torch.rand(80) > 0.3
    with torch.no_grad():
        torch.testing.assert_close(model(x[None], mask=mask[None])[0][mask], model(x[mask]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(region_num=8), dict(region_size=4)])
def test_coords_layout_is_permutation_equivariant(kw):
    model = stage(layout="coords", **kw)
    n = 200
    x, coords = torch.randn(n, 12), grid_coords(n, 25)
    perm = torch.randperm(n)
    with torch.no_grad():
        out = model(x, coords=coords, patch_size=256)
        out_p = model(x[perm], coords=coords[perm], patch_size=256)
    torch.testing.assert_close(out_p, out[perm], rtol=1e-5, atol=1e-5)
    # and the sequence layout is not: file order matters there
    seq = stage(**kw)
    with torch.no_grad():
        assert (seq(x[perm]) - seq(x)[perm]).abs().max() > 1e-4


def test_coords_patch_size_is_inferred():
    model = stage(layout="coords")
    x, coords = torch.randn(90, 12), grid_coords(90, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x, coords=coords), model(x, coords=coords, patch_size=256))


def test_small_bags_see_context_in_default_mode():
    """min_region_tokens: with 64 instances the default mode mixes instances (official does not)."""
    model = stage()
    x = torch.randn(64, 12)
    x2 = x.clone()
    x2[1:] = torch.randn(63, 12)
    with torch.no_grad():
        assert (model(x)[0] - model(x2)[0]).abs().max() > 1e-4


def test_sequence_regions_respect_min_region_tokens_and_size():
    mask = torch.ones(1, 64, dtype=torch.bool)
    r = sequence_regions(mask, region_num=8, region_size=None, min_region_tokens=16)
    assert r.n_regions == 4 and r.size == 16
    r = sequence_regions(torch.ones(1, 7, dtype=torch.bool), region_num=8, region_size=None, min_region_tokens=16)
    assert r.n_regions == 1 and int(r.real.sum()) == 7
    # fixed region size: the count grows with N, the size does not
    small = sequence_regions(torch.ones(1, 1000, dtype=torch.bool), region_num=None, region_size=4, min_region_tokens=16)
    large = sequence_regions(torch.ones(1, 4000, dtype=torch.bool), region_num=None, region_size=4, min_region_tokens=16)
    assert small.size == large.size == 16
    assert large.n_regions > 3.5 * small.n_regions
    # every instance sits in exactly one slot
    assert sorted(large.index[large.real].tolist()) == list(range(4000))


def test_coords_regions_are_tissue_windows():
    # two 3x3 patches of tissue far apart, window side 4: two regions, nothing in between
    a = torch.tensor([[x, y] for y in range(3) for x in range(3)])
    coords = torch.cat([a, a + 40]).float()[None] * 256
    mask = torch.ones(1, 18, dtype=torch.bool)
    r = coords_regions(mask, coords, None, region_num=None, region_size=4, min_region_tokens=16)
    assert r.n_regions == 2 and r.size == 16
    assert sorted(r.index[0][r.real[0]].tolist()) == list(range(9))
    # slots row-major inside the window: cell (row 1, col 2) -> slot 6
    assert r.index[0, 1 * 4 + 2].item() == 5


def test_region_size_and_coords_layout_give_finite_gradients():
    model = stage(layout="coords", region_size=4)
    model.train()
    x = torch.randn(2, 60, 12, requires_grad=True)
    coords = torch.stack([grid_coords(60, 20, seed=1), grid_coords(60, 20, seed=2)])
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, 45:] = False
    out = model(x, mask=mask, coords=coords, patch_size=256)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().sum() > 0
    assert x.grad[1, 45:].abs().max() == 0


# ---------------------------------------------------------------- bad input
def test_bad_inputs_have_clear_errors():
    model = stage()
    with pytest.raises(ValueError, match="feature width 12"):
        model(torch.randn(10, 13))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(torch.tensor([[float("nan")] * 12]))
    with pytest.raises(ValueError, match="empty bag"):
        model(torch.randn(0, 12))
    with pytest.raises(ValueError, match="no real instance"):
        model(torch.randn(2, 5, 12), mask=torch.tensor([[True] * 5, [False] * 5]))
    coords_model = stage(layout="coords")
    with pytest.raises(ValueError, match="coords must be"):
        coords_model(torch.randn(10, 12), coords=torch.zeros(9, 2))
    with pytest.raises(ValueError, match="needs coords"):
        coords_model(torch.randn(10, 12))
    dup = grid_coords(10, 5)
    dup[3] = dup[7] + 10  # same cell
    with pytest.raises(RegionError, match="two instances fall into one grid cell.*instances 3"):
        coords_model(torch.randn(10, 12), coords=dup, patch_size=256)
    with pytest.raises(ValueError, match="epeg_k must be odd"):
        R2T(12, 16, heads=2, epeg_k=4)
    with pytest.raises(ValueError, match="not divisible"):
        R2T(12, 16, heads=3)


@pytest.mark.parametrize("layout", ["sequence", "coords"])
def test_single_instance_bag(layout):
    model = stage(layout=layout)
    with torch.no_grad():
        out = model(torch.randn(1, 12), coords=torch.tensor([[512.0, 512.0]]))
    assert out.shape == (1, 16) and torch.isfinite(out).all()
    official = randomise(R2T.official(12, 16, heads=2, crmsa_heads=2, epeg_k=5))
    with torch.no_grad():
        assert torch.isfinite(official(torch.randn(1, 12))).all()


def test_out_dim_and_no_input_projection():
    model = R2T(None, 16, 8, heads=2, crmsa_heads=2).eval()
    assert model(torch.randn(30, 16)).shape == (30, 8)
    with pytest.raises(ValueError, match="no input projection"):
        model(torch.randn(30, 12))
