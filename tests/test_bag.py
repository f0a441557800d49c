"""FeatureBag / BagBatch: validation, padding collation, device moves."""
import pytest
import torch

from r2t_plugin.bag import BagBatch, BagError, FeatureBag


def bag(n, d=4, case="c", coords=True, **kw):
    return FeatureBag(torch.randn(n, d), coords=torch.arange(2 * n).reshape(n, 2).float() * 256 if coords else None,
                      patch_size=256, case_id=case, **kw)


def test_collate_pads_and_masks():
    bags = [bag(3, case="a", label=1), bag(5, case="b", label=0)]
    batch = BagBatch.collate(bags)
    assert batch.features.shape == (2, 5, 4) and batch.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(batch.features[0, :3], bags[0].features) and batch.features[0, 3:].abs().sum() == 0
    assert batch.label.tolist() == [1, 0] and batch.patch_size.tolist() == [256.0, 256.0]
    assert batch.lengths.tolist() == [3, 5]
    back = batch.unbatch()
    assert torch.equal(back[0].features, bags[0].features) and torch.equal(back[1].coords, bags[1].coords)


def test_survival_targets_collate():
    batch = BagBatch.collate([bag(2, time=3.5, event=1), bag(4, time=10.0, event=0)])
    assert batch.time.tolist() == [3.5, 10.0] and batch.event.tolist() == [1, 0] and batch.label is None


def test_to_and_pin_memory_keep_values():
    batch = BagBatch.collate([bag(3), bag(2)])
    moved = batch.pin_memory().to("cpu", non_blocking=True)
    assert torch.equal(moved.features, batch.features) and torch.equal(moved.mask, batch.mask)


@pytest.mark.parametrize("make, message", [
    (lambda: FeatureBag(torch.randn(0, 4), case_id="s1"), "bag 's1': empty bag"),
    (lambda: FeatureBag(torch.randn(4), case_id="s1"), r"features must be \(N, D\)"),
    (lambda: FeatureBag(torch.ones(3, 4, dtype=torch.long), case_id="s1"), "floating point"),
    (lambda: FeatureBag(torch.tensor([[1.0, float("inf")]]), case_id="s1"), "1 instance.*NaN or Inf"),
    (lambda: FeatureBag(torch.randn(3, 4), coords=torch.zeros(2, 2), case_id="s1"), "coords has 2 rows but features has 3"),
    (lambda: FeatureBag(torch.randn(3, 4), coords=torch.zeros(3, 3), case_id="s1"), r"coords must be \(N, 2\)"),
    (lambda: FeatureBag(torch.randn(3, 4), patch_size=0, case_id="s1"), "patch_size must be > 0"),
    (lambda: FeatureBag(torch.randn(3, 4), edge_index=torch.tensor([[0], [3]]), case_id="s1"), "outside 0..2"),
    (lambda: FeatureBag(torch.randn(3, 4), time=2.0, case_id="s1"), "both time and event"),
])
def test_validation_names_the_bag(make, message):
    with pytest.raises(BagError, match=message):
        make()


def test_collate_rejects_mixed_widths_and_mixed_coords():
    with pytest.raises(BagError, match="different feature widths.*'a'=4.*'b'=5"):
        BagBatch.collate([bag(2, case="a"), bag(2, d=5, case="b")])
    with pytest.raises(BagError, match="no coords: bag 'b'"):
        BagBatch.collate([bag(2, case="a"), bag(2, case="b", coords=False)])


def test_to_pyg_builds_grid_graphs():
    coords = torch.tensor([[0, 0], [256, 0], [0, 256], [2560, 2560]]).float()
    b = FeatureBag(torch.randn(4, 3), coords=coords, patch_size=256, label=1)
    data = BagBatch.collate([b, bag(2, d=3)]).to_pyg()
    assert data.num_graphs == 2 and data.x.shape == (6, 3)
    first = data.get_example(0)
    edges = {tuple(e) for e in first.edge_index.t().tolist()}
    assert edges == {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)}  # diagonal neighbours too; 3 isolated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_collate_stays_on_the_bags_device():
    bags = [bag(3, label=1, time=2.0, event=1).to("cuda"), bag(2, label=0, time=1.0, event=0).to("cuda")]
    batch = BagBatch.collate(bags)
    for name in ("features", "mask", "coords", "patch_size", "label", "time", "event"):
        assert getattr(batch, name).device.type == "cuda", name
    assert batch.to_pyg().edge_index.device.type == "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_finite_check_is_exact_whatever_the_sum_does(dtype):
    big = torch.finfo(dtype).max / 2
    FeatureBag(torch.full((8, 4), big, dtype=dtype))  # finite, though the sum overflows
    FeatureBag(torch.full((8, 4), big, dtype=dtype), coords=torch.full((8, 2), 3e38))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(6, 4).to(dtype)
        x[4, 1] = bad
        with pytest.raises(BagError, match="1 instance"):
            FeatureBag(x, case_id="s1")
    x = torch.randn(6, 4).to(dtype)
    x[0, 0], x[1, 0] = float("inf"), -float("inf")  # their sum is NaN
    with pytest.raises(BagError, match="2 instance"):
        FeatureBag(x)
    with pytest.raises(BagError, match="coords contain NaN"):
        FeatureBag(torch.randn(2, 4), coords=torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))


def test_values_already_checked_are_not_scanned_again(monkeypatch):
    import r2t_plugin.bag as bag_mod

    calls = []
    real = bag_mod._all_finite
    monkeypatch.setattr(bag_mod, "_all_finite", lambda t: calls.append(t.shape) or real(t))
    b = bag(5)
    assert len(calls) == 2  # features and coords, once each
    b.to("cpu")
    FeatureBag(b.features, coords=b.coords, check_values=False)
    assert len(calls) == 2
