"""The ``r2t`` command.

``r2t plugins`` lives here; every other subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int`` and keeps its heavy imports inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Callable

# name -> (module with add_arguments / run, or None for a subcommand of this module; help)
SUBCOMMANDS: dict[str, tuple[str | None, str]] = {
    "compare": ("r2t_plugin.compare.cli", "compare aggregators with and without R²T over folds x seeds (or --demo)"),
    "plugins": (None, "list stages, aggregators, adapters and readers with their providers"),
    "heatmap": ("r2t_plugin.heatmap.cli", "draw a model's instance scores on a slide (or on every test slide of a compare run)"),
    "bench": ("r2t_plugin.r2t.bench", "speed and memory of R²T: fast path vs the straightforward one, per bag size and mode"),
}


def run_plugins(args: argparse.Namespace) -> int:
    """``r2t plugins``: every stage, aggregator, adapter and reader with its provider.

    No options: the listing reflects the environment (``R2T_DISABLE_PLUGIN_AUTOLOAD``).
    Exit status 1 when two plugins provide the same name.
    """
    from .plugins import KINDS, get_manager

    pm = get_manager()
    for kind in KINDS:
        reg = pm.registries[kind]
        print(f"{kind}:")
        for name in reg.names():
            print(f"  {name:28s} {reg.provider(name)}")
    print("adapters (asked in this order):")
    for name, provider in pm.adapters():
        print(f"  {name:28s} {provider}")
    if pm.failed:
        print("failed to load:")
        for f in pm.failed:
            print(f"  {f.name:28s} {f.provider}: {f.error}")
    conflicts = pm.conflicts
    if conflicts:
        print("conflicts (these names cannot be used until one provider is removed):")
        for kind, names in conflicts.items():
            for name, providers in names.items():
                print(f"  {kind[:-1]} {name!r}: " + " and ".join(repr(p) for p in providers))
        return 1
    return 0


_LOCAL: dict[str, Callable[[argparse.Namespace], int]] = {"plugins": run_plugins}


def _available() -> dict[str, tuple[str | None, str]]:
    """The subcommands whose module is installed (the core ones always are)."""
    found = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        try:
            spec = module is None or importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec:
            found[name] = (module, help_)
    return found


def build_parser() -> argparse.ArgumentParser:
    """The ``r2t`` parser with one sub-parser per available subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="r2t", description="R²T re-embedding for MIL on whole-slide images.")
    parser.add_argument("--version", action="version", version=f"r2t-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if module is None:
            p.set_defaults(_run=_LOCAL[name])
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the subcommand; its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
