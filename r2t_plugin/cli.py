"""The ``r2t`` command. Each subcommand lives in its own module (``add_arguments`` + ``run``)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, help); each module keeps heavy imports inside run()
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("r2t_plugin.compare.cli", "compare aggregators with and without R²T over folds x seeds (or --demo)"),
    "plugins": ("r2t_plugin.plugins_cli", "list stages, aggregators, adapters and readers with their providers"),
    "heatmap": ("r2t_plugin.heatmap.cli", "draw a model's instance scores on a slide (or on every test slide of a compare run)"),
    "bench": ("r2t_plugin.benchmark", "speed and memory of R²T: fast path vs the straightforward one, per bag size and mode"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[name] = (module, help_)
    return found


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="r2t", description="R²T re-embedding for MIL on whole-slide images.")
    parser.add_argument("--version", action="version", version=f"r2t-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
