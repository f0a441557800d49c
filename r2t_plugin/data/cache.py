"""Case-level bags kept in memory, up to a byte budget.

A cohort with ``cache`` set keeps every bag it reads in a :class:`BagCache` (see
:class:`~r2t_plugin.data.cohort.Cohort`), so that later epochs, the validation passes and
the other runs of a comparison in the same process read no file again. The budget is in
bytes (``cache: 8GB``; ``cache: true`` is half the memory the process may use: the machine's
physical memory, or less under a container's or batch job's cgroup limit); bags are
kept first come, first kept: once the budget is used up, further bags are read from their
files every time (no eviction, which would make a shuffled pass over a cohort larger than
the budget miss on almost every bag).

``cache_dtype: float16`` keeps the features in half precision (half the memory and half the
bytes copied to a GPU; the training loop casts them back to float32 on the device). Every
bag of such a cohort is rounded to float16, cached or not, so results do not depend on the
budget. Features beyond float16's range (|x| > 65504) are refused with the bag's name.
"""
from __future__ import annotations

import copy
import os
import re
import threading
from pathlib import Path, PurePosixPath

import torch

from ..bag import BagError, FeatureBag

__all__ = ["BagCache", "CACHE_DTYPES", "make_cache", "parse_size", "bag_nbytes", "as_float32"]

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*")
_F16_MAX = float(torch.finfo(torch.float16).max)
_ROOT = Path("/")  # where /proc and /sys/fs/cgroup are read (tests point it elsewhere)


def _cgroup_limits(root: Path) -> list[int]:
    """Memory limits (bytes) on this process's cgroup and its parents: cgroup v2 (``memory.max``
    along the path in ``/proc/self/cgroup``) or v1 (``memory.limit_in_bytes``)."""
    files = [root / "sys/fs/cgroup/memory/memory.limit_in_bytes"]
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for here in (PurePosixPath(line[3:].strip()) for line in lines if line.startswith("0::")):
        files += [root / "sys/fs/cgroup" / str(d).lstrip("/") / "memory.max" for d in (here, *here.parents)]
    limits = []
    for f in files:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            limits.append(int(text))
    return limits


def physical_memory() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or a container's
    or batch job's (cgroup) limit where that is lower; 8 GiB when the system does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return min([total, *_cgroup_limits(_ROOT)])


def parse_size(value: bool | int | float | str | None) -> int | None:
    """A cache budget in bytes: ``False`` / ``None`` / ``0``: no cache; ``True``: half of
    :func:`physical_memory`; a number: bytes; a string such as ``"8GB"``, ``"512 MiB"``."""
    if value is None or value is False:
        return None
    if value is True:
        return physical_memory() // 2
    if isinstance(value, (int, float)):
        size = value
    else:
        m = _SIZE.fullmatch(str(value).lower())
        if m is None or m.group(2) not in _UNITS:
            raise ValueError(f"{value!r} is not a size: give true/false, a number of bytes or a size "
                             "such as 8GB, 512MB, 16GiB")
        size = float(m.group(1)) * _UNITS[m.group(2)]
    if not size >= 0 or size == float("inf"):
        raise ValueError(f"a cache size must be a finite number >= 0, got {value!r}")
    return int(size) or None


def bag_nbytes(bag: FeatureBag) -> int:
    """Bytes held by a bag's tensors (features, coords, edge_index)."""
    return sum(t.numel() * t.element_size() for t in (bag.features, bag.coords, bag.edge_index)
               if t is not None)


def _with_features(bag: FeatureBag, features: torch.Tensor) -> FeatureBag:
    """``bag`` with other features of the same values (no re-validation)."""
    out = copy.copy(bag)
    out.features = features
    return out


def as_float32(bag: FeatureBag) -> FeatureBag:
    """``bag`` with float32 features (a half-precision bag cast back; others unchanged)."""
    if bag.features.dtype in (torch.float16, torch.bfloat16):
        return _with_features(bag, bag.features.float())
    return bag


class BagCache:
    """Bags by key, up to ``budget`` bytes of tensors; safe to use from several threads.

    ``dtype``: ``"float32"`` (features kept as read) or ``"float16"``.
    """

    def __init__(self, budget: int, dtype: str = "float32") -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype {dtype!r} is not one of: {', '.join(CACHE_DTYPES)}")
        self.budget, self.dtype = int(budget), CACHE_DTYPES[dtype]
        self._bags: dict[str, FeatureBag] = {}
        self._sizes: dict[str, int] = {}
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now (never more than ``budget``)."""
        return self._nbytes

    def keys(self) -> list[str]:
        """Keys of the bags held."""
        with self._lock:
            return list(self._bags)

    def get(self, key: str) -> FeatureBag | None:
        """The bag kept under ``key``, or None."""
        return self._bags.get(key)

    def compact(self, bag: FeatureBag) -> FeatureBag:
        """``bag`` in the cache's storage form: float16 features for a float16 cache."""
        if self.dtype != torch.float16 or bag.features.dtype == torch.float16:
            return bag
        f = bag.features
        lo, hi = float(f.min()), float(f.max())
        if max(-lo, hi) > _F16_MAX:
            who = bag.case_id or (bag.slide_ids[0] if bag.slide_ids else "bag")
            raise BagError(f"bag {who!r}: features reach {max(-lo, hi):.4g}, beyond float16's range "
                           f"(|x| <= {_F16_MAX:g}); use cache_dtype float32 for this cohort")
        return _with_features(bag, f.half())

    def put(self, key: str, bag: FeatureBag) -> bool:
        """Keep ``bag`` as given (pass it through :meth:`compact` first for the storage form)
        if it fits the budget; whether it is held."""
        size = bag_nbytes(bag)
        with self._lock:
            grown = self._nbytes - self._sizes.get(key, 0) + size
            if grown > self.budget:
                return False
            self._bags[key], self._sizes[key], self._nbytes = bag, size, grown
            return True

    def drop(self, key: str) -> None:
        """Forget the bag under ``key`` (if any)."""
        with self._lock:
            if self._bags.pop(key, None) is not None:
                self._nbytes -= self._sizes.pop(key)

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"BagCache({len(self._bags)} bags, {self._nbytes} of {self.budget} bytes, {dtype})"


def make_cache(size: bool | int | float | str | None, dtype: str = "float32") -> BagCache | None:
    """The cache of a ``cache`` setting (:func:`parse_size`) and ``cache_dtype``; None for no
    cache. ``ValueError`` for a bad size, an unknown dtype, or float16 without a cache."""
    budget = parse_size(size)
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype {dtype!r} is not one of: {', '.join(CACHE_DTYPES)}")
    if budget is None:
        if dtype != "float32":
            raise ValueError(f"cache_dtype {dtype} needs a cache (cache: true or a size such as 8GB)")
        return None
    return BagCache(budget, dtype)
