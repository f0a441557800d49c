"""``r2t plugins``: every stage, aggregator, adapter and reader with its provider."""
from __future__ import annotations

import argparse

from .plugins import KINDS, get_manager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the listing reflects the environment (``R2T_DISABLE_PLUGIN_AUTOLOAD``)."""


def run(args: argparse.Namespace) -> int:
    """Print the listing; exit status 1 when two plugins provide the same name."""
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
