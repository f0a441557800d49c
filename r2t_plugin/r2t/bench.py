"""``r2t bench``: speed and memory of R²T-ABMIL, the fast path against the straightforward one.

C16-R50 configuration (D_in 1024, C 512, 8 heads, epeg_k 15, crmsa_k 1, all_shortcut,
tanh ABMIL). For every bag size N and mode (``official``: the reference's exact math;
``default``: sequence layout, 8 x 8 regions; ``coords``: coords layout, fixed region
size), one fresh process per (mode, N, implementation) measures the median forward time
(eval, no grad), the median train-step time (forward + cross-entropy + backward) and the
peak memory (process max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA; also
what was held before the first step: imports, model and input, ``inputs_gb``). FLOPs
are counted analytically from the partition (model FLOPs: recomputation is not counted)
and reported as achieved GFLOP/s and as a fraction of the float32 matmul peak
(``torch.mm`` of two 4096 x 4096 matrices) measured in the same run. The straightforward
implementation (:mod:`r2t_plugin.r2t.naive`, all logits stored) runs only where its
logits fit ``--naive-max-gb``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from ..io import atomic_write_text

CONFIG = dict(epeg_k=15, crmsa_k=1, crmsa_heads=8, all_shortcut=True, attn_act="tanh")
D_IN, DIM, HEADS, ABMIL_HIDDEN = 1024, 512, 8, 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 20000, 50000, 100000], help="bag sizes")
    p.add_argument("--modes", nargs="+", default=["official", "default", "coords"],
                   choices=["official", "default", "coords"])
    p.add_argument("--region-size", type=int, default=16, help="window side of the coords mode (cells)")
    p.add_argument("--impl", nargs="+", default=["fast", "naive"], choices=["fast", "naive"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    p.add_argument("--naive-max-gb", type=float, default=2.0,
                   help="skip the straightforward path where its stored logits would exceed this")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--json", default=None, help="write every result and the machine's figures here")


# ---------------------------------------------------------------- FLOPs
def model_flops(stage, x_shape: tuple[int, int], coords=None) -> tuple[float, float]:
    """(forward, train) model FLOPs of R²T-ABMIL on one bag, counted from its partition."""
    from .regions import official_regions

    n, d_in = x_shape
    c, k = stage.dim, stage.crmsa.attn.k if stage.crmsa is not None else 0
    if stage.mode == "official":
        rm, cr = official_regions(1, n, stage.region_num), official_regions(1, n, 8)
    else:
        mask = torch.ones(1, n, dtype=torch.bool)
        rm = cr = stage.partition(mask, None if coords is None else coords[None],
                                  None if coords is None else torch.tensor([256.0]))

    def slots(r) -> int:
        return sum((e - s) * p for s, e, p in r.groups)

    def pairs(r) -> int:
        return sum((e - s) * p * p for s, e, p in r.groups)

    f = 2 * n * d_in * c  # input projection
    for layer in stage.layers:
        kk = layer.attn.pe.weight.shape[2] if layer.attn.pe is not None else 0
        f += 2 * n * c * 3 * c + 4 * pairs(rm) * c + 2 * n * c * c + 2 * kk * slots(rm) * c
    if stage.crmsa is not None:
        m, r = slots(cr), cr.n_regions
        f += 3 * 2 * m * c * k  # logits, representatives, dispatch
        f += k * (2 * r * c * 3 * c + 4 * r * r * c + 2 * r * c * c)
    f += 2 * n * c * ABMIL_HIDDEN + 2 * n * ABMIL_HIDDEN + 2 * c * 2
    train = 3 * f - 2 * n * d_in * c  # no gradient for the input features
    return float(f), float(train)


def naive_logit_gb(stage, n: int, coords=None) -> float:
    """GB of one copy of the straightforward path's logits (its padded R x h x P x P)."""
    from .regions import official_regions

    if stage.mode == "official":
        r = official_regions(1, n, stage.region_num)
    else:
        r = stage.partition(torch.ones(1, n, dtype=torch.bool), None if coords is None else coords[None],
                            None if coords is None else torch.tensor([256.0]))
    return r.n_regions * HEADS * r.size**2 * 4 / 2**30


# ---------------------------------------------------------------- data and models
def tissue_coords(n: int, seed: int = 0) -> torch.Tensor:
    """Level-0 corners of n patches (256 px) on a grid at 75% tissue density."""
    g = torch.Generator().manual_seed(seed)
    width = math.ceil(math.sqrt(n / 0.75))
    cells = torch.randperm(width * width, generator=g)[:n]
    return torch.stack([cells % width, cells // width], dim=1).float() * 256


def build(mode: str, region_size: int):
    from .model import R2TABMIL

    torch.manual_seed(0)
    if mode == "official":
        return R2TABMIL.official(D_IN, 2, DIM, heads=HEADS, **CONFIG)
    if mode == "default":
        return R2TABMIL(D_IN, 2, DIM, heads=HEADS, **CONFIG)
    return R2TABMIL(D_IN, 2, DIM, heads=HEADS, layout="coords", region_size=region_size, **CONFIG)


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: times and peaks."""
    from .naive import NaiveR2T

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    model = build(spec["mode"], spec["region_size"])
    if spec["impl"] == "naive":
        model.stage = NaiveR2T(model.stage)
    model.to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec["n"], D_IN, generator=g).to(device)
    coords = tissue_coords(spec["n"]).to(device) if spec["mode"] == "coords" else None
    kw = {} if coords is None else dict(coords=coords, patch_size=256.0)
    y = torch.tensor([1], device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model(x, **kw)

    def train() -> None:
        model.train()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x, **kw)["logits"].float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    out = dict(spec)
    out["inputs_gb"] = _peak_gb(device)  # imports, model and input before any step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out["forward_s"] = _median_time(forward, spec["repeats"], device)
    out["forward_peak_gb"] = _peak_gb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out["train_s"] = _median_time(train, spec["repeats"], device)
    out["train_peak_gb"] = _peak_gb(device)
    return out


# ---------------------------------------------------------------- driver
def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 3) -> float:
    """Median GFLOP/s of torch.mm on two 4096 x 4096 matrices."""
    a = torch.randn(4096, 4096, device=device, dtype=dtype)
    b = torch.randn(4096, 4096, device=device, dtype=dtype)
    return 2 * 4096**3 / _median_time(lambda: torch.mm(a, b), repeats, device) / 1e9


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "r2t_plugin.r2t.bench", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timed out after {timeout:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return dict(spec, error=f"exit {done.returncode}: {tail[0][:200]}")


def _fmt(v: Any, spec: str) -> str:
    return format("-", spec.rstrip(".0123456789f") + spec.lstrip("<>^").split(".")[0]) if v is None else format(v, spec)


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'mode':<9}{'N':>8} {'impl':<6}{'fwd s':>8}{'train s':>9}{'inp GB':>7}{'fwd GB':>8}{'train GB':>9}"
            f"{'train GFLOP':>12}{'GFLOP/s':>9}{'%peak':>7}{'naive/fast':>11}")
    lines = [head, "-" * len(head)]
    fast = {(r["mode"], r["n"]): r for r in results if r["impl"] == "fast" and "error" not in r}
    for r in results:
        if "error" in r or "skipped" in r:
            why = r.get("error") or r.get("skipped")
            lines.append(f"{r['mode']:<9}{r['n']:>8} {r['impl']:<6}  {why}")
            continue
        ratio = None
        f = fast.get((r["mode"], r["n"]))
        if r["impl"] == "naive" and f:
            ratio = r["train_s"] / f["train_s"]
        lines.append(
            f"{r['mode']:<9}{r['n']:>8} {r['impl']:<6}{r['forward_s']:>8.3f}{r['train_s']:>9.3f}"
            f"{_fmt(r.get('inputs_gb'), '>7.2f')}"
            f"{r['forward_peak_gb']:>8.2f}{r['train_peak_gb']:>9.2f}{r['train_gflop']:>12.0f}"
            f"{r['train_gflops']:>9.1f}{100 * r['train_peak_fraction']:>6.0f}%{_fmt(ratio, '>10.2f')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = dict(torch=torch.__version__, device=str(device), dtype=args.dtype, threads=torch.get_num_threads(),
                machine=platform.machine(), processor=platform.processor(), load_before=_load())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    peaks = [matmul_gflops(device)]
    results = []
    for mode in args.modes:
        stage = build(mode, args.region_size).stage
        for n in args.n:
            coords = tissue_coords(n) if mode == "coords" else None
            fwd_flops, train_flops = model_flops(stage, (n, D_IN), coords)
            for impl in args.impl:
                spec = dict(mode=mode, n=n, impl=impl, device=args.device, dtype=args.dtype,
                            region_size=args.region_size if mode == "coords" else None,
                            repeats=args.repeats, threads=args.threads)
                if impl == "naive":
                    gb = naive_logit_gb(stage, n, coords)
                    if gb > args.naive_max_gb:
                        results.append(dict(spec, skipped=f"skipped: one copy of its logits is {gb:.1f} GB "
                                                          f"(> --naive-max-gb {args.naive_max_gb:g})"))
                        print(table(results[-1:]).splitlines()[-1], flush=True)
                        continue
                r = _run_one(spec, args.timeout)
                r["load"] = _load()
                if "error" not in r:
                    r.update(forward_gflop=fwd_flops / 1e9, train_gflop=train_flops / 1e9,
                             forward_gflops=fwd_flops / 1e9 / r["forward_s"],
                             train_gflops=train_flops / 1e9 / r["train_s"],
                             train_peak_fraction=train_flops / 1e9 / r["train_s"] / peaks[0])
                results.append(r)
                print(table(results[-1:]).splitlines()[-1], flush=True)
    peaks.append(matmul_gflops(device))
    info.update(matmul_fp32_gflops=statistics.median(peaks), matmul_fp32_gflops_runs=peaks, load_after=_load())
    if args.dtype != "fp32":
        info[f"matmul_{args.dtype}_gflops"] = matmul_gflops(device, DTYPES[args.dtype])
    for r in results:
        if "train_gflops" in r:
            r["train_peak_fraction"] = r["train_gflops"] / info["matmul_fp32_gflops"]
            r["forward_peak_fraction"] = r["forward_gflops"] / info["matmul_fp32_gflops"]
    print()
    print(f"torch {info['torch']} on {info['device']} ({info.get('gpu', info['processor'])}), dtype "
          f"{args.dtype}, {info['threads']} threads; float32 matmul peak {info['matmul_fp32_gflops']:.1f} GFLOP/s "
          f"(runs {', '.join(f'{v:.1f}' for v in peaks)}); load {info['load_before']} -> {info['load_after']}")
    print(table(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(dict(machine=info, results=results), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m r2t_plugin.r2t.bench`` (and of each worker process)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print("RESULT " + json.dumps(worker(json.loads(argv[1]))), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="r2t bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
