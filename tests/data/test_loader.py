"""The data path of a training run: loader threads, the in-memory cache, targets without reads."""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import pytest
import torch

from r2t_plugin.bag import FeatureBag
from r2t_plugin.data import Cohort, CohortError
from r2t_plugin.data.cache import BagCache, bag_nbytes, make_cache, parse_size, physical_memory
from r2t_plugin.data.loader import BagLoader, bag_targets, default_workers, waited
from r2t_plugin.data.transforms import standardized
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.tasks import ClassificationTask
from r2t_plugin.train import TrainConfig, fit, seed_everything

D = 8
N_CASES = 20


@pytest.fixture
def cohort_csv(writer):
    """20 one-slide cases on disk (CLAM h5), 7-19 patches, a learnable label."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(N_CASES):
        n = int(rng.integers(7, 20))
        x = rng.standard_normal((n, D)).astype(np.float32)
        if i % 2:
            x[: 3, 0] += 3.0
        writer.slide(f"s{i}", n=n, dim=D, feats=x)
        rows.append({"case_id": f"c{i}", "slide_id": f"s{i}", "label": i % 2})
    return writer.table(rows), writer.features


def _open(cohort_csv, **kw) -> Cohort:
    csv, feats = cohort_csv
    return Cohort(csv, feats, label_col="label", **kw)


def _fit(cohort: Cohort, tmp_path, name: str, **cfg):
    ids = cohort.case_ids
    train, val, test = cohort.bags(ids[:12]), cohort.bags(ids[12:16]), cohort.bags(ids[16:])
    seed_everything(0)
    model = create_aggregator("abmil", D, 2, dim=16, hidden=8, dropout=0.0)
    settings = dict(epochs=3, lr=5e-3, patience=None, progress=False, num_threads=1, batch_size=2)
    res = fit(model, ClassificationTask(2), train, val, test, TrainConfig(**{**settings, **cfg}), tmp_path / name)
    return res, {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b) -> None:
    (ra, wa), (rb, wb) = a, b
    for key in ("train_loss", "val_loss", "val_auc"):
        assert [h[key] for h in ra.history] == [h[key] for h in rb.history], key
    assert ra.test == rb.test
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fit_gives_the_same_run_with_0_1_and_2_loader_workers(cohort_csv, tmp_path):
    runs = [_fit(_open(cohort_csv), tmp_path, f"w{k}", num_workers=k) for k in (0, 1, 2)]
    _same(runs[0], runs[1])
    _same(runs[0], runs[2])
    assert all("wait_seconds" in h and h["wait_seconds"] >= 0 for h in runs[2][0].history)
    assert not [t for t in threading.enumerate() if t.name.startswith("r2t-loader")]  # threads stopped


def test_cache_on_and_off_give_the_same_run_and_the_cache_saves_the_reads(cohort_csv, tmp_path, monkeypatch):
    reads = []
    real = Cohort.read_slide
    monkeypatch.setattr(Cohort, "read_slide", lambda self, s, m=None: reads.append(s) or real(self, s, m))
    plain = _fit(_open(cohort_csv), tmp_path, "plain", num_workers=1)
    # 3 epochs of 12 training + 4 validation bags, 4 test bags once; task.fit reads no file
    assert len(reads) == 3 * 16 + 4
    reads.clear()
    cached = _fit(_open(cohort_csv, cache=True), tmp_path, "cached", num_workers=2)
    assert sorted(reads) == sorted(f"s{i}" for i in range(N_CASES))  # each file read once
    _same(plain, cached)


def test_float16_cache_is_close_to_float32_and_independent_of_the_budget(cohort_csv, tmp_path):
    full = _fit(_open(cohort_csv), tmp_path, "f32")
    big = _open(cohort_csv, cache=True, cache_dtype="float16")
    half = _fit(big, tmp_path, "f16", num_workers=1)
    stored = big.cache.get("c0")
    assert stored is not None and stored.features.dtype == torch.float16
    f32 = _open(cohort_csv).load_case("c0").features
    assert big.load_case("c0").features.dtype == torch.float32
    assert torch.equal(big.load_case("c0").features, f32.half().float())
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([h[key] for h in half[0].history], [h[key] for h in full[0].history],
                                   rtol=2e-3, atol=2e-4)
    # a budget too small for most bags: the others are rounded all the same
    tiny = _open(cohort_csv, cache=bag_nbytes(stored) * 3, cache_dtype="float16")
    _same(half, _fit(tiny, tmp_path, "f16-tiny"))


def test_budget_is_respected_and_counted_in_bytes(cohort_csv, monkeypatch):
    probe = _open(cohort_csv)
    sizes = {c: bag_nbytes(probe.load_case(c)) for c in probe.case_ids}
    budget = sizes["c0"] + sizes["c1"] + sizes["c2"]
    cohort = _open(cohort_csv, cache=budget)
    for c in cohort.case_ids:
        cohort.load_case(c)
    assert cohort.cache.keys() == ["c0", "c1", "c2"]  # first come, first kept; no eviction
    assert cohort.cache.nbytes == budget
    reads = []
    real = cohort.read_slide
    monkeypatch.setattr(cohort, "read_slide", lambda s, m=None: reads.append(s) or real(s, m))
    assert cohort.load_case("c1") is cohort.load_case("c1") and reads == []
    cohort.load_case("c5")
    cohort.load_case("c5")
    assert reads == ["s5", "s5"]
    cohort.forget("c1")
    assert cohort.cache.nbytes == budget - sizes["c1"]
    sub = cohort.subset(["c0", "c9"])
    assert sub.cache is cohort.cache  # one cache per process, shared with subsets


def test_cache_settings_are_parsed_and_bad_ones_name_the_table(cohort_csv):
    assert parse_size("8GB") == 8 * 10**9 and parse_size("512 MiB") == 512 * 2**20
    assert parse_size(1.5e3) == 1500 and parse_size(True) == physical_memory() // 2
    assert parse_size(False) is None and parse_size(0) is None and make_cache(False) is None
    for bad in ("lots", "8 parsecs", "-1GB", -5, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(CohortError, match=r"cohort\.csv: cache: 'lots' is not a size"):
        _open(cohort_csv, cache="lots")
    with pytest.raises(CohortError, match="float16 needs a cache"):
        _open(cohort_csv, cache_dtype="float16")
    with pytest.raises(CohortError, match="cache_dtype 'int8' is not one of"):
        _open(cohort_csv, cache=True, cache_dtype="int8")


def test_cache_true_is_half_of_a_container_or_job_memory_limit(tmp_path, monkeypatch):
    """Under a cgroup limit (a container, a SLURM job) ``cache: true`` stays within it: half of
    the lowest limit on the process's cgroup or its parents, not of the machine's memory."""
    import r2t_plugin.data.cache as cache

    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/job_7/step_0\n")
    for sub, limit in (("", "max"), ("job_7", "2000000000"), ("job_7/step_0", "max")):
        (tmp_path / "sys/fs/cgroup" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys/fs/cgroup" / sub / "memory.max").write_text(limit + "\n")
    monkeypatch.setattr(cache, "_ROOT", tmp_path)
    assert physical_memory() == min(2 * 10**9, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    assert parse_size(True) == physical_memory() // 2
    (tmp_path / "proc/self/cgroup").unlink()  # cgroup v1: the memory controller's limit
    (tmp_path / "sys/fs/cgroup/memory").mkdir()
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("1000000\n")
    assert physical_memory() == 10**6


def test_float16_cache_refuses_features_beyond_its_range():
    cache = BagCache(10**6, "float16")
    bag = FeatureBag(torch.tensor([[1.0, 7e4]]), case_id="big")
    with pytest.raises(ValueError, match="bag 'big'.*beyond float16's range"):
        cache.compact(bag)


def test_loader_keeps_the_order_and_raises_a_failed_read_in_its_place():
    class Flaky(list):
        def __getitem__(self, i):
            if i == 5:
                raise OSError("disk gone: bag 5")
            return super().__getitem__(i)

    bags = Flaky(FeatureBag(torch.full((2, 3), float(i)), case_id=f"b{i}") for i in range(9))
    loader = BagLoader(bags, batch_size=2, num_workers=3)
    order = [8, 7, 1, 0, 2, 3, 4, 6, 5]
    seen = []
    with pytest.raises(OSError, match="bag 5"):
        with contextlib.closing(loader.batches(order)) as batches:
            for batch in batches:
                seen += list(batch.case_ids)
    assert seen == [f"b{i}" for i in order[:8]]
    assert not [t for t in threading.enumerate() if t.name.startswith("r2t-loader")]


def test_loader_counts_the_wait_and_casts_half_precision_bags_for_the_cpu():
    bags = [FeatureBag(torch.randn(4, 3).half(), case_id=f"b{i}") for i in range(3)]
    before = waited()
    out = list(BagLoader(bags, num_workers=0).batches())
    assert waited() > before
    assert [b.features.dtype for b in out] == [torch.float32] * 3
    assert torch.equal(out[1].features[0], bags[1].features.float())


def test_targets_of_cohort_bags_are_known_without_reading(cohort_csv, monkeypatch):
    cohort = _open(cohort_csv)
    monkeypatch.setattr(cohort, "read_slide", lambda *a: pytest.fail("a feature file was read"))
    bags = cohort.bags(["c3", "c4"])
    assert [(t.case_id, t.label) for t in bag_targets(bags)] == [("c3", 1), ("c4", 0)]
    plain = [FeatureBag(torch.zeros(1, 2), case_id="x", label=1)]
    assert bag_targets(plain) is plain
    monkeypatch.undo()
    scaled, = standardized(_open(cohort_csv).bags(["c1", "c2"]))
    assert [t.label for t in bag_targets(scaled)] == [1, 0]


def test_each_feature_file_is_sniffed_once(cohort_csv, monkeypatch):
    import r2t_plugin.data.readers as readers

    calls = []
    real = readers.find_reader
    monkeypatch.setattr(readers, "find_reader", lambda p: calls.append(p.name) or real(p))
    cohort = _open(cohort_csv)
    for _ in range(3):  # three epochs
        cohort.load_case("c0"), cohort.load_case("c1")
    assert calls == ["s0.h5", "s1.h5"]


def test_default_workers_rule(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(15) == 0 and default_workers(16) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert default_workers(1000) == 4
    assert TrainConfig(num_workers=None).workers_for(3) == 0
    assert TrainConfig(num_workers=2).workers_for(3) == 2


def test_cuda_copies_run_one_step_ahead_on_a_side_stream(monkeypatch):
    """The CUDA path's logic with stand-ins for streams and copies (no GPU needed)."""
    from r2t_plugin.bag import BagBatch
    from r2t_plugin.data.loader import on_device

    log = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def record_event(self):
            log.append(("event", self.name))
            return f"done{len([e for e in log if e[0] == 'event'])}"

        def wait_event(self, event):
            log.append(("wait", self.name, event))

    compute = Stream("compute")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream("side"))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: log.append(("on", s.name)) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(BagBatch, "to", lambda b, device, non_blocking=False:
                        log.append(("copy", b.case_ids[0], non_blocking)) or b)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: log.append(("keep", s.name)), raising=False)
    host = [BagBatch.collate([FeatureBag(torch.ones(2, 3).half(), case_id=f"b{i}")]) for i in range(3)]
    out = on_device(iter(host), torch.device("cuda"))
    first = next(out)
    assert first.features.dtype == torch.float32  # cast after the copy
    assert log[:6] == [("on", "side"), ("copy", "b0", True), ("event", "side"),
                       ("on", "side"), ("copy", "b1", True), ("event", "side")]  # b1 copied before b0 is used
    assert log[6] == ("wait", "compute", "done1")  # the compute stream waits for b0's copy only
    assert {e for e in log[7:]} == {("keep", "compute")}  # b0's device memory is tied to the compute stream
    rest = list(out)
    assert [b.case_ids[0] for b in [first, *rest]] == ["b0", "b1", "b2"]
    assert [e for e in log if e[0] == "wait"] == [("wait", "compute", f"done{k}") for k in (1, 2, 3)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_run_matches_the_cpu_run(cohort_csv, tmp_path, dtype):
    cache = dict(cache=True, cache_dtype=dtype)
    cpu = _fit(_open(cohort_csv, **cache), tmp_path, f"cpu-{dtype}", num_workers=2)
    gpu = _fit(_open(cohort_csv, **cache), tmp_path, f"gpu-{dtype}", num_workers=2, device="cuda")
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([h[key] for h in gpu[0].history], [h[key] for h in cpu[0].history],
                                   rtol=1e-3, atol=1e-4)
