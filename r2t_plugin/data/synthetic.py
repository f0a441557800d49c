"""A deterministic synthetic WSI cohort where neighbourhood context matters.

Every slide is a tissue-shaped patch layout (one or two irregular fragments with small
lumens, 150-600 patches by default), written in CLAM's format: ``h5_files/{slide}.h5``
with ``features`` (N, D) float32 and ``coords`` (N, 2) int64 level-0 top-left corners
(attributes ``patch_size`` and ``patch_level`` on ``coords``), plus a cohort CSV.

Features are ``zone mean + slide offset + noise + signal``: tissue zones (Voronoi cells
of a few seeds, means orthogonal to the signal directions) give spatial structure that
carries no label. The class signal is a shift of ``shift`` (< ``noise``, so each patch is
only weakly different) along a class direction ``u_c`` on contiguous regions grown from a
seed patch: a neighbourhood of ~16 patches separates clearly, one patch does not. As a
decoy, ``mimic`` x the same number of patches carry the shift of *other* classes, scattered
one by one over the tissue (``mimic=1``: the multiset of patch features no longer tells
the classes apart; only their arrangement does).

Tasks: ``binary`` (label 0/1), ``multiclass`` (``n_classes`` labels; class 0 has no
region), ``survival`` (``survival_months`` + ``censorship``, 1 = censored; the hazard
grows with the fraction of tissue in signal regions). Some cases have two slides.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..io import atomic_write_text
from .readers import write_clam_h5

__all__ = ["SyntheticSpec", "SyntheticCohort", "generate_cohort", "cached_cohort", "tissue_layout"]

Task = Literal["binary", "multiclass", "survival"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic cohort (same spec + seed -> same bytes)."""

    task: Task = "binary"
    n_cases: int = 60
    n_classes: int = 2
    dim: int = 32
    min_patches: int = 150
    max_patches: int = 600
    patch_size: int = 256
    two_slide_fraction: float = 0.2
    noise: float = 1.0
    shift: float = 0.9
    region_fraction: tuple[float, float] = (0.1, 0.2)
    mimic: float = 0.5
    n_zones: int = 3
    zone_scale: float = 1.0
    slide_offset: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in ("binary", "multiclass", "survival"):
            raise ValueError(f"task must be one of binary, multiclass, survival; got {self.task!r}")
        k = self.classes
        if k < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.dim < (k - 1) + self.n_zones:
            raise ValueError(f"dim={self.dim} too small for {k - 1} signal directions + {self.n_zones} zones")
        if not 20 <= self.min_patches <= self.max_patches:
            raise ValueError(f"need 20 <= min_patches <= max_patches, got {self.min_patches}, {self.max_patches}")
        if self.n_cases < 2 * k:
            raise ValueError(f"n_cases={self.n_cases} too small for {k} classes")
        lo, hi = self.region_fraction
        if not 0 < lo <= hi < 0.5:
            raise ValueError(f"region_fraction must satisfy 0 < lo <= hi < 0.5, got {self.region_fraction}")
        if not 0 <= self.mimic <= 2:
            raise ValueError(f"mimic must be in [0, 2], got {self.mimic}")

    @property
    def classes(self) -> int:
        """Number of classes (2 for binary; survival uses one signal direction)."""
        return 2 if self.task in ("binary", "survival") else self.n_classes

    def key(self) -> str:
        """A short hash of the spec (cache directory name)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticCohort:
    """Where a generated cohort lies."""

    root: Path
    csv: Path
    feature_dir: Path
    spec: SyntheticSpec


# ----------------------------------------------------------------------------- layout
def _fragment(rng: np.random.Generator, area: float) -> np.ndarray:
    """Cells (row, col) of one irregular star-shaped fragment of about ``area`` cells."""
    r0 = math.sqrt(area / math.pi)
    aspect = rng.uniform(1.0, 1.8)
    theta = rng.uniform(0, math.pi)
    harmonics = [(k, rng.uniform(0, 0.12), rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    a, b = r0 * math.sqrt(aspect), r0 / math.sqrt(aspect)
    half = int(math.ceil(a * 1.6)) + 2
    rr, cc = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    u = cc * math.cos(theta) + rr * math.sin(theta)
    v = -cc * math.sin(theta) + rr * math.cos(theta)
    rad = np.hypot(u / a, v / b)
    phi = np.arctan2(v / b, u / a)
    bound = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in harmonics)
    inside = rad <= bound
    for _ in range(rng.integers(0, 4)):  # lumens
        cr, ccol = rng.normal(0, r0 / 2.5, size=2)
        hr = rng.uniform(0.8, 2.2)
        inside &= np.hypot(rr - cr, cc - ccol) > hr
    cells = np.argwhere(inside)
    return cells - cells.min(axis=0)


def tissue_layout(rng: np.random.Generator, n_target: int) -> np.ndarray:
    """(N, 2) distinct grid cells (row, col) of a tissue-shaped layout of about ``n_target``."""
    if rng.random() < 0.3:  # a biopsy in two fragments
        share = rng.uniform(0.35, 0.65)
        first = _fragment(rng, n_target * share * 1.05)
        second = _fragment(rng, n_target * (1 - share) * 1.05)
        gap = int(rng.integers(2, 5))
        if rng.random() < 0.5:
            second = second + [0, first[:, 1].max() + gap]
        else:
            second = second + [first[:, 0].max() + gap, 0]
        cells = np.concatenate([first, second])
    else:
        cells = _fragment(rng, n_target * 1.05)
    cells = np.unique(cells, axis=0)  # row-major order (scan order of a tiler)
    return cells


def _neighbours(cell: tuple[int, int]) -> list[tuple[int, int]]:
    r, c = cell
    return [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]


def _grow_region(rng: np.random.Generator, cells: np.ndarray, free: np.ndarray, size: int) -> list[int]:
    """Indices of a contiguous region of up to ``size`` free cells (random growth from a seed)."""
    where = {tuple(c): i for i, c in enumerate(cells.tolist())}
    candidates = np.flatnonzero(free)
    if size <= 0 or candidates.size == 0:
        return []
    seed = int(rng.choice(candidates))
    region, frontier = [seed], []
    taken = {seed}
    frontier.extend(where[n] for n in _neighbours(tuple(cells[seed])) if n in where)
    while len(region) < size and frontier:
        j = int(frontier.pop(int(rng.integers(len(frontier)))))
        if j in taken or not free[j]:
            continue
        taken.add(j)
        region.append(j)
        frontier.extend(where[n] for n in _neighbours(tuple(cells[j])) if n in where and where[n] not in taken)
    return region


# ----------------------------------------------------------------------------- cohort
def _directions(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal signal directions (K-1, D) and zone means (n_zones, D) orthogonal to them."""
    k = spec.classes - 1
    q, _ = np.linalg.qr(rng.normal(size=(spec.dim, k + spec.n_zones)))
    signal = q[:, :k].T
    zones = q[:, k:].T * spec.zone_scale
    return signal, zones


def _slide_features(rng: np.random.Generator, spec: SyntheticSpec, cells: np.ndarray,
                    zones: np.ndarray) -> np.ndarray:
    n = len(cells)
    n_seeds = int(rng.integers(4, 8))
    seeds = cells[rng.choice(n, size=min(n_seeds, n), replace=False)]
    zone_of_seed = rng.integers(0, len(zones), size=len(seeds))
    d2 = ((cells[:, None, :] - seeds[None, :, :]) ** 2).sum(-1)
    zone = zone_of_seed[d2.argmin(axis=1)]
    offset = rng.normal(0, spec.slide_offset, size=spec.dim)
    return zones[zone] + offset + rng.normal(0, spec.noise, size=(n, spec.dim))


def _case(rng: np.random.Generator, spec: SyntheticSpec, label: int, severity: float,
          signal: np.ndarray, zones: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The slides of one case: [(cells, features)]. ``label`` 0 = no region (classification);
    for survival ``label`` is 1 and ``severity`` in [0, 1] scales the region."""
    n_slides = 2 if rng.random() < spec.two_slide_fraction else 1
    slides = []
    for _ in range(n_slides):
        cells = tissue_layout(rng, int(rng.integers(spec.min_patches, spec.max_patches + 1)))
        slides.append([cells, _slide_features(rng, spec, cells, zones)])
    total = sum(len(c) for c, _ in slides)
    frac = rng.uniform(*spec.region_fraction)
    if spec.task == "survival":
        region_n = int(round(severity * frac * total))
        mimic_n = {0: int(round(spec.mimic * (1 - severity) * frac * total))}
    else:
        region_n = int(round(frac * total)) if label > 0 else 0
        mimic_n = {j: int(round(spec.mimic * frac * total)) for j in range(len(signal)) if j + 1 != label}
    used = [np.zeros(len(c), dtype=bool) for c, _ in slides]
    if region_n >= 4:
        s = int(rng.integers(n_slides))  # the region(s) lie on one slide
        cells, feats = slides[s]
        region_n = min(region_n, int(0.4 * len(cells)))
        n_regions = 1 if region_n < 60 or rng.random() < 0.5 else 2
        sizes = [region_n // n_regions + (i < region_n % n_regions) for i in range(n_regions)]
        direction = signal[(label if spec.task != "survival" else 1) - 1]
        for size in sizes:
            idx = _grow_region(rng, cells, ~used[s], size)
            used[s][idx] = True
            feats[idx] += spec.shift * direction
    for j, count in mimic_n.items():
        for s, (cells, feats) in enumerate(slides):
            share = int(round(count * len(cells) / total))
            free = np.flatnonzero(~used[s])
            idx = rng.choice(free, size=min(share, free.size), replace=False)
            used[s][idx] = True
            feats[idx] += spec.shift * signal[j]
    return [(c, f) for c, f in slides]


def _survival(rng: np.random.Generator, severity: float) -> tuple[float, int]:
    """(survival_months, censorship): exponential event time, uniform censoring."""
    hazard = math.log(2) / 24.0 * math.exp(3.0 * (severity - 0.5))
    event_time = rng.exponential(1 / hazard)
    censor_time = rng.uniform(6.0, 120.0)
    months = max(0.1, round(min(event_time, censor_time), 1))
    return months, int(censor_time < event_time)


def generate_cohort(out_dir: str | os.PathLike, spec: SyntheticSpec | None = None) -> SyntheticCohort:
    """Write the cohort of ``spec`` into ``out_dir`` (``cohort.csv``, ``h5_files/``, ``spec.json``).

    Deterministic: the same spec gives byte-identical features, coordinates and table.
    ``spec.json`` is written last, so its presence means the cohort is complete.
    """
    spec = spec or SyntheticSpec()
    root = Path(out_dir)
    h5_dir = root / "h5_files"
    h5_dir.mkdir(parents=True, exist_ok=True)
    seq = np.random.SeedSequence(spec.seed)
    cohort_seq, label_seq, *case_seqs = seq.spawn(2 + spec.n_cases)
    signal, zones = _directions(np.random.default_rng(cohort_seq), spec)
    label_rng = np.random.default_rng(label_seq)
    labels = label_rng.permutation(np.arange(spec.n_cases) % spec.classes)
    severities = label_rng.uniform(0, 1, size=spec.n_cases)
    rows = []
    for i, case_seq in enumerate(case_seqs):
        rng = np.random.default_rng(case_seq)
        label = 1 if spec.task == "survival" else int(labels[i])
        case_id = f"case-{i:03d}"
        target: dict[str, object]
        if spec.task == "survival":
            months, censored = _survival(rng, float(severities[i]))
            target = {"survival_months": months, "censorship": censored}
        else:
            target = {"label": label}
        slides = _case(rng, spec, label, float(severities[i]), signal, zones)
        origin = rng.integers(0, 40, size=2) * spec.patch_size
        for s, (cells, feats) in enumerate(slides):
            slide_id = f"{case_id}-{'AB'[s]}"
            coords = origin + cells[:, ::-1] * spec.patch_size  # (x, y) from (row, col)
            write_clam_h5(h5_dir / f"{slide_id}.h5", feats, coords, spec.patch_size)
            rows.append({"case_id": case_id, "slide_id": slide_id, **target})
    atomic_write_text(root / "cohort.csv", _csv_text(rows))
    atomic_write_text(root / "spec.json", json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")
    return SyntheticCohort(root, root / "cohort.csv", root / "h5_files", spec)


def cached_cohort(cache_dir: str | os.PathLike, spec: SyntheticSpec | None = None) -> SyntheticCohort:
    """The cohort of ``spec`` under ``cache_dir/synthetic-{task}-{hash}``, generated if absent."""
    spec = spec or SyntheticSpec()
    root = Path(cache_dir) / f"synthetic-{spec.task}-{spec.key()}"
    if (root / "spec.json").is_file():
        return SyntheticCohort(root, root / "cohort.csv", root / "h5_files", spec)
    return generate_cohort(root, spec)


def _csv_text(rows: list[dict[str, object]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
