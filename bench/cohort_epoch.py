"""Whole-run benchmark of the data path: does the training loop wait for its bags?

Generates (once, kept under ``--root``, git-ignored ``r2t_runs/`` by default) an on-disk
cohort of CLAM h5 slides (default 40 x 8,000 patches x 1024-d float32, 32 MB each), then
for ABMIL and ABMIL + R²T trains ``--epochs`` epochs (32 training + 8 validation bags per
epoch, batch 1) four ways, each from the same initial weights:

- ``compute``: the same bags already in memory (a list of bags: no file is read; the
  loader threads still collate them ahead);
- ``before``: read in the loop, synchronously (``num_workers=0``, no cache);
- ``after``: ``--workers`` loader threads reading ahead (no cache);
- ``after+cache``: the same with the cohort's in-memory cache (epoch 1 fills it).

Per epoch it prints the wall time, the time the loop waited for data (``wait``), the pure
compute time of the same epoch, the time to read the epoch's 40 bags one after the other
(``read``, from the page cache) and ``ratio = epoch / max(compute, read)``; on CUDA also
the device's busy fraction of the epoch, from CUDA events around every step (the first
forward to the optimiser step; the forward pass in validation). ``--read-only`` times only
the reads (``Cohort.load_case`` against a bare h5py read of the same bytes); it needs nothing
but the cohort reader, so it also runs against an older checkout (``PYTHONPATH=old/``).

    python bench/cohort_epoch.py                       # CPU, the full benchmark
    python bench/cohort_epoch.py --read-only --slides 8
    bash bench/cohort_gpu.sh                           # CUDA, float32 and bf16
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from r2t_plugin.data import Cohort
from r2t_plugin.data.readers import write_clam_h5

COLS = 100  # patch grid width of the generated slides


def make_cohort(root: Path, slides: int, patches: int, dim: int) -> tuple[Path, Path]:
    """``root/cohort.csv`` and ``root/features/h5_files/s{i}.h5`` (reused when present)."""
    feats = root / "features"
    (feats / "h5_files").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ys, xs = np.divmod(np.arange(patches), COLS)
    coords = np.stack([xs, ys], 1) * 256
    rows = []
    for i in range(slides):
        path = feats / "h5_files" / f"s{i}.h5"
        label = i % 2
        if not _matches(path, patches, dim):
            x = rng.standard_normal((patches, dim), dtype=np.float32)
            x[: patches // 50, :8] += 1.5 * label  # a few informative patches
            write_clam_h5(path, x, coords, 256)
        rows.append({"case_id": f"c{i}", "slide_id": f"s{i}", "label": label})
    csv = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, feats


def _matches(path: Path, patches: int, dim: int) -> bool:
    if not path.is_file():
        return False
    with h5py.File(path, "r") as f:
        return f["features"].shape == (patches, dim)


def warm(feats: Path, slides: int) -> None:
    """Read every file once, so that every timing below reads from the page cache."""
    for i in range(slides):
        with open(feats / "h5_files" / f"s{i}.h5", "rb") as fh:
            while fh.read(1 << 24):
                pass


def read_times(csv: Path, feats: Path, slides: int) -> dict[str, float]:
    """Seconds to read every bag with ``Cohort.load_case`` (no cache; a second pass, as in
    every epoch after the first: the cohort has sniffed each file's format), and per bag:
    median ms of ``load_case`` and of a bare h5py read of the same two datasets."""
    cohort = Cohort(csv, feats, label_col="label")
    for i in range(slides):
        cohort.load_case(f"c{i}")
    load, raw = [], []
    for i in range(slides):
        t0 = time.perf_counter()
        cohort.load_case(f"c{i}")
        load.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with h5py.File(feats / "h5_files" / f"s{i}.h5", "r") as f:
            f["features"][()], f["coords"][()]
        raw.append(time.perf_counter() - t0)
    return {"read_s": float(sum(load)), "load_case_ms": 1e3 * float(np.median(load)),
            "h5py_ms": 1e3 * float(np.median(raw))}


class DeviceBusy:
    """CUDA events around every step of ``model`` (forward start to optimiser step; forward
    only in eval mode): the GPU time between them, grouped ``per_epoch`` steps at a time."""

    def __init__(self, model: torch.nn.Module) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.start: torch.cuda.Event | None = None
        self.handles = [model.register_forward_pre_hook(self._begin),
                        model.register_forward_hook(self._end_eval),
                        register_optimizer_step_post_hook(lambda *a: self._end())]

    @staticmethod
    def _event() -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def _begin(self, module, args) -> None:
        self.start = self._event()

    def _end_eval(self, module, args, out) -> None:
        if not module.training:
            self._end()

    def _end(self) -> None:
        if self.start is not None:
            self.spans.append((self.start, self._event()))
            self.start = None

    def seconds_per_epoch(self, per_epoch: int) -> list[float]:
        for h in self.handles:
            h.remove()
        torch.cuda.synchronize()
        busy = [a.elapsed_time(b) / 1e3 for a, b in self.spans]
        return [float(sum(busy[k:k + per_epoch])) for k in range(0, len(busy), per_epoch)]


def train(name: str, r2t: bool, train_bags, val_bags, workers: int, args, out: Path) -> list[dict]:
    """Per-epoch rows of one fit: ``seconds``, ``wait_seconds`` (and ``busy`` on CUDA)."""
    from r2t_plugin.models import ModelSpec, build_model
    from r2t_plugin.tasks import ClassificationTask
    from r2t_plugin.train import TrainConfig, fit, seed_everything

    seed_everything(0)
    model = build_model(ModelSpec("abmil", args.dim, 2, r2t={} if r2t else None))
    cfg = TrainConfig(epochs=args.epochs, lr=2e-4, patience=None, progress=False, device=args.device,
                      amp=None if args.amp == "none" else args.amp, num_threads=args.threads,
                      num_workers=workers, resume=False)
    busy = DeviceBusy(model) if args.device.startswith("cuda") else None
    shutil.rmtree(out / name, ignore_errors=True)
    res = fit(model, ClassificationTask(2), train_bags, val_bags, [], cfg, out / name)
    rows = [{"seconds": h["seconds"], "wait_seconds": h["wait_seconds"]} for h in res.history]
    if busy is not None:
        for row, b in zip(rows, busy.seconds_per_epoch(len(train_bags) + len(val_bags))):
            row["busy"] = b / row["seconds"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("r2t_runs/bench_cohort"), help="cohort + runs folder")
    p.add_argument("--slides", type=int, default=40)
    p.add_argument("--patches", type=int, default=8000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="loader threads of the 'after' runs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: unchanged)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--models", nargs="+", default=["abmil", "abmil+r2t"], choices=["abmil", "abmil+r2t"])
    p.add_argument("--repeats", type=int, default=1, help="rounds of the four ways; the fastest epoch is shown")
    p.add_argument("--read-only", action="store_true", help="time the bag reads only")
    p.add_argument("--delete", action="store_true", help="delete the generated cohort afterwards")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args()

    csv, feats = make_cohort(args.root, args.slides, args.patches, args.dim)
    warm(feats, args.slides)
    load = os.getloadavg()[0]
    reads = read_times(csv, feats, args.slides)
    mb = args.patches * args.dim * 4 / 1e6
    print(f"{args.slides} slides x {args.patches} x {args.dim} ({mb:.0f} MB each), load {load:.2f}, "
          f"{os.cpu_count()} cpus, torch threads {args.threads or torch.get_num_threads()}, device {args.device}, "
          f"amp {args.amp}")
    print(f"read: load_case {reads['load_case_ms']:.1f} ms/bag (h5py alone {reads['h5py_ms']:.1f} ms), "
          f"all {args.slides} bags {reads['read_s']:.2f} s")
    report: dict = {"slides": args.slides, "patches": args.patches, "dim": args.dim, "load_before": load,
                    "device": args.device, "amp": args.amp, "reads": reads, "runs": {}}
    if not args.read_only:
        ids = [f"c{i}" for i in range(args.slides)]
        n_val = max(1, args.slides // 5)
        train_ids, val_ids = ids[:-n_val], ids[-n_val:]
        plain = Cohort(csv, feats, label_col="label")
        memory = ([plain.load_case(c) for c in train_ids], [plain.load_case(c) for c in val_ids])
        for model in args.models:
            rounds = []
            for r in range(args.repeats):  # each round in another order: load swings hit every way
                cached = Cohort(csv, feats, label_col="label", cache=True)  # filled again in epoch 1
                ways = {"compute": (*memory, args.workers),
                        "before": (plain.bags(train_ids), plain.bags(val_ids), 0),
                        "after": (plain.bags(train_ids), plain.bags(val_ids), args.workers),
                        "after+cache": (cached.bags(train_ids), cached.bags(val_ids), args.workers)}
                names = list(ways)[r % 4:] + list(ways)[:r % 4]
                rounds.append({w: train(f"{model}-{w}", model.endswith("r2t"), *ways[w], args, args.root / "runs")
                               for w in names})
            best = {w: [min((rd[w][e] for rd in rounds), key=lambda row: row["seconds"])
                        for e in range(args.epochs)] for w in rounds[0]}
            report["runs"][model] = {"best": best, "rounds": rounds}
            _print(model, best, reads["read_s"], args.repeats)
        report["load_after"] = os.getloadavg()[0]
        print(f"load average after: {report['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.delete:
        shutil.rmtree(args.root)


def _print(model: str, runs: dict, read_s: float, repeats: int) -> None:
    busy = "busy" in runs["compute"][0]
    fastest = f", fastest of {repeats} rounds" if repeats > 1 else ""
    print(f"\n{model}{fastest}: epoch | way | wall s | wait s (% of epoch) | compute s | read s | "
          f"epoch / max(compute, read)" + (" | GPU busy" if busy else ""))
    for way in ("before", "after", "after+cache", "compute"):
        for e, row in enumerate(runs[way]):
            compute = runs["compute"][e]["seconds"]
            ratio = row["seconds"] / max(compute, read_s)
            extra = f" | {row['busy']:.0%}" if busy else ""
            print(f"  {e + 1} | {way:11s} | {row['seconds']:6.2f} | {row['wait_seconds']:6.2f} "
                  f"({row['wait_seconds'] / row['seconds']:5.1%}) | {compute:6.2f} | {read_s:5.2f} | "
                  f"{ratio:4.2f}{extra}")


if __name__ == "__main__":
    main()
