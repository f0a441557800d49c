"""``r2t compare CONFIG.yaml`` and ``r2t compare --demo``."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "demo_config", "demo_spec", "user_errors"]


def demo_spec(task: str = "binary"):
    """The synthetic demo cohort of ``task`` (see :mod:`r2t_plugin.data.synthetic`)."""
    from ..data.synthetic import SyntheticSpec

    return SyntheticSpec(task=task, n_classes=3 if task == "multiclass" else 2, n_cases=160, dim=8,
                         min_patches=60, max_patches=160, shift=1.5, mimic=0.6, region_fraction=(0.2, 0.35),
                         slide_offset=0.05)


def demo_config(cohort_csv: Path, feature_dir: Path, output: Path, task: str = "binary") -> dict[str, Any]:
    """The configuration ``r2t compare --demo`` runs: ABMIL and mean pooling (permutation
    invariant: the reference for what the patches alone tell), each plain and with R²T,
    4 folds x 2 seeds = 8 pairs each (sized to finish in about 3 minutes on 2 CPU cores)."""
    width = {"dim": 32, "hidden": 16}
    cohort: dict[str, Any] = {"csv": str(cohort_csv), "features": str(feature_dir), "cache": True}
    if task == "survival":
        cohort.update(task="survival", time_column="survival_months", censorship_column="censorship", n_bins=4)
    else:
        cohort.update(task="classification", label_column="label")
    return {
        "cohort": cohort,
        "aggregators": [{"name": "abmil", "options": dict(width)}, {"name": "mean", "options": {"dim": 32}}],
        "variants": [
            {"name": "plain"},
            {"name": "r2t", "r2t": {"layout": "coords", "heads": 4, "crmsa_heads": 4, "residual": True}},
        ],
        "folds": 4,
        "seeds": [0, 1],
        "val_fraction": 0.25,
        "training": {"epochs": 30, "lr": 2e-3, "weight_decay": 1e-3, "batch_size": 4, "patience": 10,
                     "num_threads": 1},
        "workers": 2,
        "output": str(output),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``r2t compare``."""
    parser.add_argument("config", nargs="?", help="comparison config (YAML); see the README")
    parser.add_argument("--demo", action="store_true",
                        help="generate the synthetic demo cohort and compare ABMIL and mean pooling "
                             "with and without R²T (about 3 minutes on 2 CPU cores)")
    parser.add_argument("--demo-task", choices=("binary", "multiclass", "survival"), default="binary",
                        help="task of the demo cohort (default: binary)")
    parser.add_argument("--output", "-o", help="output folder (overrides the config's; demo default: "
                                               "./r2t-compare-demo)")
    parser.add_argument("--cache-dir", help="where the demo cohort is generated (default: $R2T_CACHE_DIR "
                                            "or ~/.cache/r2t-plugin)")
    parser.add_argument("--engine", choices=("local", "ray"),
                        help="where the runs execute (overrides the config's engine; default: local)")
    parser.add_argument("--address", help="with --engine ray: the Ray cluster to join (e.g. ray://head:10001 "
                                          "or auto); without it a local Ray instance is started")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the Python traceback too (by default: one line)")


def _cache_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("R2T_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "r2t-plugin"


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean a mistake in the config, the data or the output folder
    (each names what, where and how to fix it); ``OSError`` is described by
    :func:`r2t_plugin.io.describe_os_error`."""
    from ..bag import BagError
    from ..data import CohortError, PreflightError, ReaderError, SplitError
    from .config import ConfigError
    from .folder import OutputError
    from .manifest import ManifestMismatch
    from .results import ResultsError

    return (ConfigError, ManifestMismatch, OutputError, CohortError, PreflightError, SplitError,
            ReaderError, BagError, ResultsError)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``r2t compare``; returns the exit status (2: a mistake, told in one line)."""
    from dataclasses import replace

    from ..io import describe_os_error
    from .config import ConfigError, load_config, parse_config
    from .engines import get_engine
    from .runner import run_compare

    if bool(args.demo) == bool(args.config):
        print("r2t compare: give a CONFIG.yaml or --demo (not both)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.demo:
            from ..data.synthetic import cached_cohort

            cohort = cached_cohort(_cache_dir(args.cache_dir), demo_spec(args.demo_task))
            output = Path(args.output or "r2t-compare-demo")
            config = parse_config(demo_config(cohort.csv, cohort.feature_dir, output.resolve(), args.demo_task),
                                  source="demo")
            title = f"r2t compare --demo ({args.demo_task} synthetic cohort, {cohort.root})"
        else:
            config = load_config(args.config)
            if args.output:
                config = replace(config, output=Path(args.output).resolve())
            title = f"r2t compare {args.config}"
        if args.engine or args.address:
            config = replace(config, engine=args.engine or config.engine, address=args.address or config.address)
            if args.address and config.engine != "ray":
                raise ConfigError(["--address: joins a Ray cluster; use it with --engine ray"], "command line")
        engine = get_engine(config)  # fails now (e.g. Ray not installed), before any work
        outcome = run_compare(config, engine=engine, progress=not args.quiet, title=title)
    except Exception as exc:  # a user's mistake (or a full disk) is one line; --debug adds the traceback
        if not isinstance(exc, (OSError, *user_errors())):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"r2t compare: {describe_os_error(exc) if isinstance(exc, OSError) else exc}", file=sys.stderr)
        return 2
    print(outcome.summary)
    print(f"wall time {time.perf_counter() - t0:.1f} s; outputs in {outcome.output}")
    return 1 if outcome.failed else 0
