"""Forward and train-step time and peak memory of R2TABMIL (C16-R50 configuration).

One configuration per process so that peak RSS is honest:
    python bench/r2tabmil_step.py --n 20000 --mode official
    python bench/r2tabmil_step.py --n 20000 --mode default
Prints one JSON line: median seconds of forward and of forward+CE+backward, peak RSS (GB).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from r2t_plugin import R2TABMIL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--mode", choices=["official", "default"], default="official")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    opts = dict(epeg_k=15, crmsa_k=1, crmsa_heads=8, all_shortcut=True, abmil_act="tanh")
    model = (R2TABMIL.official(1024, 2, **opts) if args.mode == "official"
             else R2TABMIL(1024, 2, **opts))
    x = torch.randn(args.n, 1024)
    y = torch.tensor([1])

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def train() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    out = {"n": args.n, "mode": args.mode, "threads": args.threads}
    for name, fn in (("forward", forward), ("train", train)):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[f"{name}_s"] = round(statistics.median(times), 4)
        out[f"{name}_peak_gb_after"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
