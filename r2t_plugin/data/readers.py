"""Feature-file readers for what the field's tools write, recognised by content.

Every reader has a ``name``, ``sniff(path) -> bool`` (looks inside the file, never at its
name) and ``read(path, mpp=None) -> FeatureBag`` with coordinates in level-0 pixels
(x, y of the top-left corner) and ``patch_size`` the level-0 patch side in pixels.

- ``clam_h5``: CLAM ``h5_files/{slide}.h5``: ``features`` (N, D), ``coords`` (N, 2) level-0.
  Patch size from the ``coords`` attributes (``patch_size`` x ``downsample`` / at
  ``patch_level`` 0), else inferred from the coordinate spacing.
- ``trident_h5``: TRIDENT ``{slide}.h5``: ``features``, ``coords`` whose attributes carry
  ``patch_size_level0``, magnifications, ``overlap`` and the level-0 size. ``overlap`` is in
  pixels at the patching magnification, so patches with overlap sit ``patch_size_level0 x
  (1 - overlap / patch_size)`` level-0 pixels apart: the bag's ``grid_step``. A slide-level
  file (``slide_features_<encoder>/``, ``features`` of shape (D,)) is refused by name.
- ``stamp_h5``: STAMP ``{slide}.h5``: ``feats`` (N, D) (older files: ``patch_embeddings``;
  float16 on disk, float32 here), ``coords`` in micrometres (root attribute ``unit="um"``
  with ``tile_size_um``, or the older ``tile_size``). With ``mpp`` (level-0 microns per pixel) the
  coordinates are converted to pixels; without it they stay in micrometres and
  ``patch_size`` is ``tile_size_um`` (same unit, so the patch grid is unchanged);
  ``meta["coord_unit"]`` says which.
  :func:`write_clam_h5` writes this layout (tiling, synthetic cohorts).
- ``clam_pt``: CLAM ``pt_files/{slide}.pt``: one float tensor (N, D), no coordinates.
- ``npy``: a NumPy ``.npy`` array (N, D), no coordinates.

A file with no patch (TRIDENT writes one for a slide without tissue) raises
:class:`EmptySlideError`, so that a cohort can skip that slide alone.

The readers are registered through the ``r2t_register_readers`` hook (see
:func:`r2t_register_readers`); :func:`find_reader` picks one by sniffing.
"""
from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..bag import FeatureBag
from ..geometry import infer_patch_size
from ..hookspecs import hookimpl
from ..io import atomic_h5

__all__ = [
    "ReaderError", "EmptySlideError", "ClamH5Reader", "TridentH5Reader", "StampH5Reader", "ClamPtReader",
    "NpyReader", "BUILTIN_READERS", "find_reader", "read_bag", "r2t_register_readers", "write_clam_h5",
]

PathLike = str | os.PathLike

_TRIDENT_ATTRS = ("patch_size", "patch_size_level0", "level0_magnification",
                  "target_magnification", "overlap", "level0_width", "level0_height")
_STAMP_ATTRS = ("unit", "tile_size_um", "tile_size", "tile_size_px", "extractor", "stamp_version")
_STAMP_FEATURES = ("feats", "patch_embeddings")  # the second in older STAMP files
_NPY_MAGIC = b"\x93NUMPY"


class ReaderError(ValueError):
    """A feature file that cannot be read; the message names the file."""


class EmptySlideError(ReaderError):
    """A feature file that holds no patch (0 instances); the message names the file."""


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, float, int, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size != 1 else _plain(value.reshape(-1)[0].item())  # [] stays []
    if isinstance(value, np.generic):
        return value.item()
    return value


def _h5_layout(path: PathLike) -> tuple[set[str], dict[str, Any]]:
    """Dataset names at the root and the attributes of ``coords`` (both empty if not HDF5)."""
    try:
        if not h5py.is_hdf5(path):
            return set(), {}
        with h5py.File(path, "r") as f:
            names = {k for k, v in f.items() if isinstance(v, h5py.Dataset)}
            attrs = dict(f["coords"].attrs) if "coords" in names else {}
    except OSError:
        return set(), {}
    return names, attrs


def _features(array: np.ndarray, path: PathLike, key: str) -> torch.Tensor:
    if array.ndim == 3 and array.shape[0] == 1:  # some extractors save (1, N, D)
        array = array[0]
    if array.ndim != 2:
        raise ReaderError(f"{path}: {key!r} must be (N, D), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ReaderError(f"{path}: {key!r} must be floating point, got {array.dtype}")
    if array.dtype.itemsize <= 4:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    over = (np.isinf(out) & np.isfinite(array)).any(axis=1)
    if over.any():  # finite in the file, infinite in training's float32
        raise ReaderError(f"{path}: {key!r}: {int(over.sum())} instance(s) have values beyond float32's range "
                          f"(|x| up to {float(np.abs(array[over]).max()):.3g}); training uses float32: rescale them")
    return torch.from_numpy(out)


def _coords(array: np.ndarray, path: PathLike) -> torch.Tensor:
    if array.size == 0:  # a slide without patches may store its coords as shape (0,)
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ReaderError(f"{path}: 'coords' must be (N, 2), got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _bag(path: PathLike, features: torch.Tensor, coords: torch.Tensor | None,
         patch_size: float | None, meta: dict[str, Any], grid_step: float | None = None) -> FeatureBag:
    if features.shape[0] == 0:
        raise EmptySlideError(f"{path}: no patches (0 instances; e.g. a slide without tissue)")
    try:
        return FeatureBag(features=features, coords=coords, patch_size=patch_size, grid_step=grid_step,
                          slide_ids=(Path(path).stem,), meta={"path": str(path), **meta})
    except ValueError as exc:
        raise ReaderError(f"{path}: {exc}") from exc


def _read_h5(path: PathLike, feature_key: str | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Features, coords and the attributes of coords and of the root; ``feature_key`` a
    dataset name, or names of which the first present is read."""
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(feature_key, str):
                feature_key = next((k for k in feature_key if k in f), feature_key[0])
            for key in (feature_key, "coords"):
                if key not in f:
                    raise ReaderError(f"{path}: no {key!r} dataset (found {sorted(f.keys())})")
            feats = f[feature_key][()]
            coords = f["coords"][()]
            coord_attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
            root_attrs = {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise ReaderError(f"{path}: unreadable HDF5 file ({exc})") from exc
    return feats, coords, coord_attrs, root_attrs


class ClamH5Reader:
    """CLAM's ``h5_files/{slide}.h5`` (``features`` + level-0 ``coords``)."""

    name = "clam_h5"

    def sniff(self, path: PathLike) -> bool:
        names, attrs = _h5_layout(path)
        return {"features", "coords"} <= names and "patch_size_level0" not in attrs

    def read(self, path: PathLike, mpp: float | None = None) -> FeatureBag:
        feats, coords, attrs, _ = _read_h5(path, "features")
        features, xy = _features(feats, path, "features"), _coords(coords, path)
        meta: dict[str, Any] = {"format": self.name, "coord_unit": "px", "mpp": mpp}
        patch, source = None, "inferred from coordinate spacing"
        if "patch_size" in attrs:
            downsample = attrs.get("downsample")
            if downsample is not None:
                factor = downsample[0] if isinstance(downsample, list) else downsample
                patch, source = float(attrs["patch_size"]) * float(factor), "coords attrs"
            elif int(attrs.get("patch_level", 0)) == 0:
                patch, source = float(attrs["patch_size"]), "coords attrs"
        if patch is None and xy.shape[0] > 1:
            patch = infer_patch_size(xy)
        meta["patch_size_source"] = source if patch is not None else "unknown"
        return _bag(path, features, xy, patch, meta)


def write_clam_h5(path: PathLike, features: np.ndarray, coords: np.ndarray, patch_size: int,
                  patch_level: int = 0) -> Path:
    """Write CLAM's ``h5`` layout atomically: ``features`` (N, D) float32, ``coords`` (N, 2)
    int64 level-0 top-left corners with ``patch_size`` / ``patch_level`` / ``downsample``."""
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ValueError(f"features must be (N, D) and coords (N, 2), got {features.shape} and {coords.shape}")
    with atomic_h5(path) as f:
        f.create_dataset("features", data=features)
        ds = f.create_dataset("coords", data=coords)
        ds.attrs["patch_size"] = int(patch_size)
        ds.attrs["patch_level"] = int(patch_level)
        ds.attrs["downsample"] = np.array([1.0, 1.0])
    return Path(path)


class TridentH5Reader:
    """TRIDENT's ``{slide}.h5`` (``features`` + ``coords`` with patch attributes)."""

    name = "trident_h5"

    def sniff(self, path: PathLike) -> bool:
        names, attrs = _h5_layout(path)
        return {"features", "coords"} <= names and "patch_size_level0" in attrs

    def read(self, path: PathLike, mpp: float | None = None) -> FeatureBag:
        feats, coords, attrs, _ = _read_h5(path, "features")
        if feats.ndim == 1:
            raise ReaderError(f"{path}: a TRIDENT slide embedding ('features' of shape {feats.shape}, "
                              "from slide_features_<encoder>/), not patch features; point cohort.features "
                              "at the features_<encoder>/ folder")
        meta = {"format": self.name, "coord_unit": "px", "mpp": mpp,
                **{k: attrs[k] for k in _TRIDENT_ATTRS if k in attrs}}
        patch = float(attrs["patch_size_level0"])
        return _bag(path, _features(feats, path, "features"), _coords(coords, path), patch, meta,
                    grid_step=_trident_step(path, patch, attrs))


def _trident_step(path: PathLike, patch_level0: float, attrs: dict[str, Any]) -> float | None:
    """The level-0 stride of TRIDENT patches made with ``overlap`` > 0 (None without overlap):
    ``overlap`` and ``patch_size`` are pixels at the patching magnification."""
    overlap = float(attrs.get("overlap") or 0)
    if overlap <= 0:
        return None
    size = float(attrs.get("patch_size") or 0)
    if not 0 < overlap < size:
        raise ReaderError(f"{path}: coords attributes overlap={overlap:g} and patch_size={size:g}: "
                          "the overlap must be smaller than the patch")
    return patch_level0 * (1.0 - overlap / size)


class StampH5Reader:
    """STAMP's ``{slide}.h5`` (``feats`` + ``coords`` in micrometres)."""

    name = "stamp_h5"

    def sniff(self, path: PathLike) -> bool:
        names = _h5_layout(path)[0]
        return "coords" in names and any(k in names for k in _STAMP_FEATURES)

    def read(self, path: PathLike, mpp: float | None = None) -> FeatureBag:
        feats, coords, _, root = _read_h5(path, _STAMP_FEATURES)
        features, xy = _features(feats, path, "feats"), _coords(coords, path)
        meta = {"format": self.name, **{k: root[k] for k in _STAMP_ATTRS if k in root}}
        unit = str(root.get("unit", "px"))
        if unit not in ("um", "px"):
            raise ReaderError(f"{path}: unknown coordinate unit {unit!r} (expected 'um' or 'px')")
        if unit == "um":
            size = root.get("tile_size_um", root.get("tile_size"))  # 'tile_size' + unit: STAMP v2
            if size is None:
                raise ReaderError(f"{path}: coordinates in um but no 'tile_size_um' (or 'tile_size') attribute")
            patch = float(size)
            if mpp is not None:
                if not mpp > 0:
                    raise ReaderError(f"{path}: microns per pixel must be > 0, got {mpp}")
                xy, patch, unit = xy / float(mpp), patch / float(mpp), "px"
        else:
            patch = float(root["tile_size_px"]) if "tile_size_px" in root else (
                infer_patch_size(xy) if xy.shape[0] > 1 else None)
        meta.update(coord_unit=unit, mpp=mpp)
        return _bag(path, features, xy, patch, meta)


def _torch_pickle_root(path: PathLike) -> str | None:
    """What a ``torch.save`` zip file holds at its root ("tensor", "dict", ...), without
    unpickling it; None when the file is not a torch zip file."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                return None
            data = z.read(pkl[0])
    except (OSError, zipfile.BadZipFile):
        return None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("PROTO", "FRAME"):
                continue
            if op.name == "GLOBAL" and str(arg).startswith("torch._utils _rebuild_tensor"):
                return "tensor"
            return op.name.lower()
    except Exception:  # noqa: BLE001 - a malformed pickle is simply not ours
        return None
    return None


class ClamPtReader:
    """CLAM's ``pt_files/{slide}.pt``: one float tensor (N, D), no coordinates."""

    name = "clam_pt"

    def sniff(self, path: PathLike) -> bool:
        return _torch_pickle_root(path) == "tensor"

    def read(self, path: PathLike, mpp: float | None = None) -> FeatureBag:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a named error
            raise ReaderError(f"{path}: unreadable torch file ({exc})") from exc
        if not isinstance(obj, torch.Tensor):
            raise ReaderError(f"{path}: expected a tensor, got {type(obj).__name__}")
        feats = _features(obj.detach().numpy() if obj.dtype != torch.bfloat16
                          else obj.float().numpy(), path, "tensor")
        return _bag(path, feats, None, None, {"format": self.name, "mpp": mpp})


class NpyReader:
    """A NumPy ``.npy`` feature array (N, D), no coordinates."""

    name = "npy"

    def sniff(self, path: PathLike) -> bool:
        try:
            with open(path, "rb") as fh:
                return fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC
        except OSError:
            return False

    def read(self, path: PathLike, mpp: float | None = None) -> FeatureBag:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ReaderError(f"{path}: unreadable .npy file ({exc})") from exc
        return _bag(path, _features(array, path, "array"), None, None,
                    {"format": self.name, "mpp": mpp})


BUILTIN_READERS = (ClamH5Reader, TridentH5Reader, StampH5Reader, ClamPtReader, NpyReader)


@hookimpl
def r2t_register_readers(registry: Any) -> None:
    """Register the built-in readers by name."""
    for cls in BUILTIN_READERS:
        registry.add(cls.name, cls)


def find_reader(path: PathLike) -> Any:
    """The registered reader whose ``sniff`` recognises ``path``.

    Raises :class:`ReaderError` naming the file when none (or more than one) does.
    """
    from ..plugins import registry

    readers = registry("readers")
    if not os.path.isfile(path):
        raise ReaderError(f"{path}: no such file")
    hits = []
    for name in readers.names():
        reader = readers.create(name)
        if reader.sniff(path):
            hits.append(reader)
    if not hits:
        raise ReaderError(f"{path}: not a known feature file (tried {', '.join(readers.names())})")
    if len(hits) > 1:
        raise ReaderError(f"{path}: recognised by several readers ({', '.join(h.name for h in hits)}); "
                          "name the format explicitly")
    return hits[0]


def read_bag(path: PathLike, format: str | None = None, mpp: float | None = None) -> FeatureBag:
    """Read one feature file; ``format`` names a registered reader, else it is sniffed."""
    if format is None:
        reader = find_reader(path)
    else:
        from ..plugins import registry

        reader = registry("readers").create(format)
    return reader.read(path, mpp=mpp)
