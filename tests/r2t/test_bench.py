"""``r2t bench`` on a tiny bag, in this process: the worker's figures, its RESULT line, the
analytic FLOP count (checked against torch's FLOP counter) and the table."""
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from r2t_plugin.r2t import bench

N = 120


def _spec(mode: str, impl: str = "fast") -> dict:
    return dict(mode=mode, n=N, impl=impl, device="cpu", dtype="fp32",
                region_size=4 if mode == "coords" else None, repeats=1, threads=None)


@pytest.mark.parametrize("mode", ["official", "default", "coords"])
def test_forward_flops_match_torch_counter(mode) -> None:
    model = bench.build(mode, region_size=4).eval()
    coords = bench.tissue_coords(N) if mode == "coords" else None
    forward, train = bench.model_flops(model.stage, (N, bench.D_IN), coords)
    kw = {} if coords is None else dict(coords=coords, patch_size=256.0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(N, bench.D_IN), **kw)
    # the counter sees the matmuls and convolutions the fast path really runs
    assert counter.get_total_flops() == pytest.approx(forward, rel=0.05)
    assert train == 3 * forward - 2 * N * bench.D_IN * bench.DIM
    assert bench.naive_logit_gb(model.stage, N, coords) > 0


def test_worker_and_its_result_line(capsys) -> None:
    results = []
    for impl in ("fast", "naive"):
        assert bench.main(["--worker", json.dumps(_spec("default", impl))]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("RESULT ")
        results.append(json.loads(line[len("RESULT "):]))
    for r, impl in zip(results, ("fast", "naive")):
        assert r["impl"] == impl and r["n"] == N and r["mode"] == "default"
        for key in ("forward_s", "train_s", "forward_peak_gb", "train_peak_gb"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["train_s"] > r["forward_s"] / 10  # a backward pass really ran
        r.update(train_gflop=1.0, train_gflops=1.0 / r["train_s"], train_peak_fraction=0.5)
    results.append(dict(_spec("official", "naive"), skipped="skipped: too big"))
    lines = bench.table(results).splitlines()
    assert len(lines) == 2 + 3 and lines[2].split()[:3] == ["default", str(N), "fast"]
    ratio = results[1]["train_s"] / results[0]["train_s"]
    assert lines[3].split()[-1] == f"{ratio:.2f}"  # naive / fast
    assert lines[4].endswith("skipped: too big")
