"""Convert the classic MIL tables of ``../shared/data/mil`` into ``r2t compare`` cohorts.

Each table (gzipped CSV, no header: bag label, bag id, instance features) becomes
``OUT/{dataset}/cohort.csv`` (``case_id, slide_id, label``; one "slide" per bag) and
``OUT/{dataset}/pt_files/{bag}.pt`` (the bag's (N, D) float32 features, no coordinates, so
R²T runs in the sequence layout). Existing conversions are kept.

    python bench/mil_cohorts.py                  # -> r2t_runs/bench_data/mil/{musk1,musk2,ucsb}
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

from r2t_plugin.io import atomic_write_bytes, atomic_write_text
from r2t_plugin.data.mil_table import read_mil_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mil"
DATASETS = {"musk1": "musk1.csv.gz", "musk2": "musk2.csv.gz", "ucsb": "ucsb_breast_cancer.csv.gz"}
OUT = ROOT / "r2t_runs" / "bench_data" / "mil"


def convert(name: str, out: Path = OUT) -> Path:
    """Write the cohort of dataset ``name`` (unless present); returns its folder."""
    folder = out / name
    if (folder / "cohort.csv").is_file():
        return folder
    bags = read_mil_table(DATA / DATASETS[name])
    for bag in bags:
        buf = io.BytesIO()
        torch.save(bag.features.float().contiguous(), buf)
        atomic_write_bytes(folder / "pt_files" / f"{bag.case_id}.pt", buf.getvalue())
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["case_id", "slide_id", "label"])
    w.writerows([bag.case_id, bag.case_id, bag.label] for bag in bags)
    atomic_write_text(folder / "cohort.csv", text.getvalue())  # written last: marks a complete conversion
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"no data at {DATA}", file=sys.stderr)
        return 1
    for name in args.datasets:
        print(convert(name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
