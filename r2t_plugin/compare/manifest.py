"""``manifest.json``: what a comparison ran on (config, versions, git commit, data hashes).

It also guards resuming: an output folder whose manifest describes other data or other
settings for the same aggregator ids / variant names is refused, so results of two
different comparisons never mix in one ``results.csv``. Adding aggregators, variants or
seeds to a finished comparison is allowed.

Feature files are recorded by their path relative to the features folder. Their sha256 is
kept in ``hashes.json`` in the output folder with each file's size and ``mtime_ns``; a
later launch rehashes only the files whose size or modification time changed.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import CompareConfig
from .folder import MANIFEST_FORMAT
from ..checkpoint import settled
from ..io import atomic_write_json, sha256_file
from ..wrap import recorded_options

__all__ = ["build_manifest", "check_resumable", "write_manifest", "package_versions", "git_commit",
           "ManifestMismatch", "hash_data", "feature_key"]

PACKAGES = ("r2t-plugin", "torch", "numpy", "scipy", "scikit-learn", "scikit-survival", "pandas", "h5py",
            "torch-geometric", "pluggy", "matplotlib", "pyyaml", "tqdm", "torchmil", "ray")


class ManifestMismatch(RuntimeError):
    """The output folder holds results of a different comparison."""


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a comparison depends on (None if absent)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (the package by default)."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _fingerprint(config: CompareConfig, data: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    return _jsonable({
        "cohort": asdict(config.cohort) | {"csv": None, "features": None},
        "data": data,
        "folds": config.folds, "val_fraction": config.val_fraction, "split_seed": config.split_seed,
        "training": settled(config.training), "device": config.device,
        "aggregators": {a.id: {"name": a.name, "options": a.options} for a in config.aggregators},
        # residual made explicit: a folder started when it defaulted to False does not resume as True
        "variants": {v.name: None if v.r2t is None else recorded_options(v.r2t) for v in config.variants},
    })


def feature_key(path: Path, roots: Sequence[Path]) -> str:
    """``path`` relative to the features folder holding it (``s1/x.h5``); with several
    folders, prefixed by the folder's index (``features[1]/s1/x.h5``)."""
    for i, root in enumerate(roots):
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            continue
        return rel if len(roots) == 1 else f"features[{i}]/{rel}"
    return Path(path).as_posix()


def _read_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}  # unreadable: everything is hashed again
    return files if isinstance(files, dict) else {}


def hash_data(csv: Path, files: Iterable[Path], roots: Sequence[Path],
              cache: Path | None = None) -> dict[str, Any]:
    """sha256 of the cohort table and of every feature file, keyed by :func:`feature_key`.

    With ``cache`` (a JSON file), a file whose size and ``mtime_ns`` match its cached entry
    is not read again; the cache is rewritten with the current files when anything changed.
    """
    old = _read_cache(cache)
    new: dict[str, dict[str, Any]] = {}
    for p in sorted(set(files)):
        key = feature_key(p, roots)
        st = p.stat()  # before reading: a change while hashing shows on the next launch
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        hit = old.get(key)
        if isinstance(hit, dict) and all(hit.get(k) == v for k, v in entry.items()) and "sha256" in hit:
            entry["sha256"] = hit["sha256"]
        else:
            entry["sha256"] = sha256_file(p)
        new[key] = entry
    if cache is not None and new != old:
        atomic_write_json(cache, {"files": new})
    return {"cohort_csv": sha256_file(csv), "feature_files": {k: v["sha256"] for k, v in new.items()}}


def build_manifest(config: CompareConfig, data: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a comparison."""
    return {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": _jsonable(config.raw),
        "resolved": {"cohort_csv": str(config.cohort.csv), "features": [str(p) for p in config.cohort.features],
                     "output": str(config.output)},
        "fingerprint": _fingerprint(config, data),
        "versions": package_versions(),
        "git": git_commit(),
        "platform": {"system": platform.platform(), "machine": platform.machine()},
        **(extra or {}),
    }


def check_resumable(path: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`ManifestMismatch` if ``path`` describes a comparison that differs."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f).get("fingerprint", {})
    new = manifest["fingerprint"]
    runtime = {"cohort": ("cache",), "training": ("num_threads", "num_workers")}  # do not change results

    def part(fp: dict[str, Any], key: str) -> Any:
        value = fp.get(key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in runtime.get(key, ())}
        return value

    differ = [k for k in ("cohort", "data", "folds", "val_fraction", "split_seed", "training", "device")
              if part(old, k) != part(new, k)]
    for axis in ("aggregators", "variants"):
        for name, spec in new[axis].items():
            if name in old.get(axis, {}) and old[axis][name] != spec:
                differ.append(f"{axis}.{name}")
    if differ:
        raise ManifestMismatch(f"{path.parent} holds results of a different comparison ({', '.join(differ)} "
                               "differ); choose another output folder or delete this one")


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically, keeping the axes of earlier runs in the same folder."""
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        fp = manifest["fingerprint"]
        for axis in ("aggregators", "variants"):
            fp[axis] = {**old.get("fingerprint", {}).get(axis, {}), **fp[axis]}
        manifest["created"] = old.get("created", manifest["created"])
    atomic_write_json(path, manifest)
