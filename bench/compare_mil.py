"""Run a compare config (``bench/compare_mil.yaml``) on Musk1, Musk2 and UCSB breast cancer.

    python bench/compare_mil.py                       # all three (converts the tables first)
    python bench/compare_mil.py --datasets ucsb --quiet
    python bench/compare_mil.py --config bench/compare_mil_abmil.yaml   # settings of the old mil_cv.py

Outputs: ``r2t_runs/{config name}/{dataset}/`` (results.csv, summary.md, plots/, ...);
rerunning resumes. Prints each summary and its wall time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.runner import run_compare

from mil_cohorts import DATASETS, convert  # bench/ is on sys.path when this script runs

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--config", type=Path, default=HERE / "compare_mil.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        base = yaml.safe_load(f)
    for name in args.datasets:
        folder = convert(name)
        raw = dict(base, output=str(folder.parents[2] / args.config.stem / name))
        raw["cohort"] = dict(base["cohort"], csv=str(folder / "cohort.csv"), features=str(folder))
        config = parse_config(raw, args.config.parent, f"{args.config} ({name})")
        t0 = time.perf_counter()
        outcome = run_compare(config, progress=not args.quiet, title=f"r2t compare: {name} (bench/{args.config.name})")
        print(outcome.summary)
        print(f"{name}: wall time {time.perf_counter() - t0:.0f} s, outputs in {outcome.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
