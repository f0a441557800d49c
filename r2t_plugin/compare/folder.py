"""The output folder of a comparison: whose it is, its lock, and the temp files to clean.

A comparison writes only into a folder that is new, empty, or already its own: one whose
``manifest.json`` carries :data:`MANIFEST_FORMAT`. A folder without that manifest may hold
only what a start that stopped before writing the manifest leaves (the lock, the hash
cache, ``splits/``); anything else is refused, naming the folder, so a user's files are
never adopted or overwritten. Cleaning removes only this package's temp files
(:func:`r2t_plugin.io.is_temp_file`) and only in the folders the comparison writes.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from ..io import is_temp_file

__all__ = ["OutputError", "MANIFEST", "MANIFEST_FORMAT", "LOCK", "HASH_CACHE", "check_output", "exclusive",
           "remove_stale_temps"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "r2t-compare/1"
"""The value of ``manifest.json``'s ``format`` field: the mark of a folder written by r2t compare."""
LOCK = ".r2t-compare.lock"
HASH_CACHE = "hashes.json"
_RESULTS = ("results.csv", "summary.md", "runs", "plots")
_SPLIT_FILES = ("manifest.json",)


class OutputError(RuntimeError):
    """The output folder cannot be used (not ours, a file, locked by another comparison)."""


def _is_ours_manifest(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT


def _is_ours_splits(folder: Path) -> bool:
    """Whether ``folder`` holds only what :func:`r2t_plugin.data.write_folds` writes."""
    if not folder.is_dir():
        return False
    for p in folder.iterdir():
        name = p.name
        if not p.is_file() or not (name in _SPLIT_FILES or is_temp_file(p)
                                   or (name.startswith("fold_") and name.endswith(".csv"))):
            return False
    return True


def check_output(out: Path) -> bool:
    """Raise :class:`OutputError` unless ``out`` may be written by a comparison; True when it
    holds a manifest of ours (a comparison to resume or extend)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file, not a folder; set output (or -o) to a new or existing "
                          "r2t compare folder")
    if not out.exists():
        return False
    manifest = out / MANIFEST
    if manifest.exists():
        if not _is_ours_manifest(manifest):
            raise OutputError(f"output {out} holds a {MANIFEST} that r2t compare did not write; choose "
                              "a new or empty output folder")
        return True
    entries = sorted(out.iterdir())
    results = [p.name for p in entries if p.name in _RESULTS]
    if results:
        raise OutputError(f"output {out} holds {', '.join(results)} but no {MANIFEST} (deleted?), so "
                          "these results cannot be checked against the data; to start over, move the "
                          "folder away (or choose another output folder)")
    foreign = [p.name for p in entries if not (p.name in (LOCK, HASH_CACHE) or is_temp_file(p)
                                               or (p.name == "splits" and _is_ours_splits(p)))]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"output {out} is not empty and is not an r2t compare folder (it holds {shown}); "
                          "choose a new or empty output folder")
    return False


def _own_folders(out: Path) -> Iterator[Path]:
    """The folders a comparison writes files into."""
    yield out
    for sub in ("splits", "plots"):
        if (out / sub).is_dir():
            yield out / sub
    if (out / "runs").is_dir():
        yield from (d for d in (out / "runs").iterdir() if d.is_dir())


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temp files of this package that a killed earlier driver left in ``out``'s
    own folders; returns them."""
    stale = [p for d in _own_folders(out) for p in d.iterdir() if is_temp_file(p) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``out/.r2t-compare.lock`` (released by the OS even on SIGKILL) and clean the stale
    temp files; ``out`` must have passed :func:`check_output`."""
    fh = open(out / LOCK, "a")  # "a": never truncates a file
    try:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError as exc:
            raise OutputError(f"output {out}: another r2t compare is running in this folder; wait for it "
                              "or choose another output folder") from exc
        remove_stale_temps(out)
        yield
    finally:
        fh.close()
