"""TRIDENT job folders: find the patch-feature folder a cohort reads.

TRIDENT writes ``<job>/<mag>x_<patch>px_<overlap>px_overlap/features_<encoder>/<slide>.h5``
(patch features) next to ``patches/`` (coordinates) and ``slide_features_<encoder>/``
(one embedding per slide, not usable as a bag). :func:`resolve_feature_dirs` turns a job
folder, or one of its patching folders, into that ``features_<encoder>/`` folder: the one
named by ``encoder``, or the only one there is. Any other folder is kept as it is.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PATCHING_DIR", "TridentLayoutError", "resolve_feature_dirs", "trident_feature_dirs"]

PATCHING_DIR = re.compile(r"^\d+(\.\d+)?x_\d+px_\d+px_overlap$")
"""The name of a TRIDENT patching folder, e.g. ``20x_256px_0px_overlap``."""


class TridentLayoutError(ValueError):
    """A TRIDENT folder where the features to read are missing or ambiguous (one line)."""


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def trident_feature_dirs(folder: Path) -> tuple[list[Path], list[Path]] | None:
    """``(features_* folders, slide_features_* folders)`` of a TRIDENT job or patching folder,
    or None when ``folder`` is neither (no patching folder in it, no ``features_*`` in it)."""
    subs = _subdirs(folder)
    patchings = [p for p in subs if PATCHING_DIR.match(p.name)]
    if not patchings and not any(p.name.startswith("features_") for p in subs):
        return None
    inner = [q for p in patchings for q in _subdirs(p)] if patchings else subs
    return ([q for q in inner if q.name.startswith("features_")],
            [q for q in inner if q.name.startswith("slide_features_")])


def _rel(paths: Sequence[Path], root: Path) -> str:
    return ", ".join(str(p.relative_to(root)) for p in paths) or "nothing"


def _resolve(folder: Path, encoder: str | None) -> Path:
    found = trident_feature_dirs(folder)
    if found is None:
        return folder
    patch_dirs, slide_dirs = found
    if encoder is not None:
        picked = [p for p in patch_dirs if p.name == f"features_{encoder}"]
    else:
        picked = patch_dirs
    if len(picked) == 1:
        return picked[0]
    where = f"{folder}: TRIDENT job folder"
    if not picked and encoder is not None:
        slides = [p for p in slide_dirs if p.name == f"slide_features_{encoder}"]
        hint = (f"; {_rel(slides, folder)} holds slide embeddings, not patch features" if slides else "")
        raise TridentLayoutError(f"{where} has no features_{encoder}/ (has: {_rel(patch_dirs, folder)}){hint}; "
                                 "set cohort.encoder to one of those encoders")
    if not picked:
        raise TridentLayoutError(f"{where} has no features_<encoder>/ folder (has: "
                                 f"{_rel(_subdirs(folder), folder)}); run TRIDENT's feature extraction first")
    if encoder is None and len({p.name for p in picked}) > 1:
        raise TridentLayoutError(f"{where} has several encoders ({_rel(picked, folder)}); choose one "
                                 "with cohort.encoder (e.g. cohort.encoder: "
                                 f"{picked[0].name[len('features_'):]})")
    raise TridentLayoutError(f"{where} has several patching folders with {picked[0].name}/ "
                             f"({_rel(picked, folder)}); point cohort.features at one of them")


def resolve_feature_dirs(folders: Sequence[Path], encoder: str | None = None) -> list[Path]:
    """``folders`` with every TRIDENT job / patching folder replaced by its
    ``features_<encoder>/`` folder. Raises :class:`TridentLayoutError` (naming the folder,
    what is there and the ``cohort.encoder`` / ``cohort.features`` key to set) when that
    folder is missing or ambiguous, or when ``encoder`` is given and no folder is TRIDENT's."""
    out = [_resolve(Path(f), encoder) for f in folders]
    if encoder is not None and all(trident_feature_dirs(Path(f)) is None for f in folders):
        raise TridentLayoutError(f"cohort.encoder {encoder!r} is set, but no feature folder is a TRIDENT job "
                                 f"folder ({', '.join(str(f) for f in folders)}); remove cohort.encoder or point "
                                 "cohort.features at the job folder")
    return out
