"""The ``r2t compare`` configuration: YAML (``yaml.safe_load``), validated with key paths.

Every problem is reported at once, each as ``key.path: what is wrong (valid choices)``.
Relative paths in the file are resolved against the file's folder. See
``bench/compare_mil.yaml`` and the README ("r2t compare") for a full example::

    cohort: {csv: cohort.csv, features: features/, task: classification}
    aggregators: [abmil, {name: transmil, options: {dim: 128}}]
    variants: [{name: plain}, {name: r2t, r2t: {layout: coords}}]   # or: variants: ablation
    folds: 5
    seeds: [0, 1]
    training: {epochs: 20, lr: 2.0e-4}
    output: runs/my-compare
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..data.cache import CACHE_DTYPES, parse_size
from ..r2t.stage import R2T
from ..train import TrainConfig, TrainConfigError
from ..wrap import PLACEMENTS, with_r2t
from .schema import Checker, ConfigError, accepted_types, literal_choices, positive, resolve_path
from .variants import ABLATION_KEYS, ablation_base, ablation_variants

__all__ = ["ConfigError", "CohortConfig", "AggregatorConfig", "VariantConfig", "CompareConfig",
           "load_config", "parse_config", "TRAINING_KEYS", "STAGE_OPTIONS", "r2t_option_names", "check_device"]


@dataclass(frozen=True)
class CohortConfig:
    """Where the cohort is and how to read its targets."""

    csv: Path
    features: tuple[Path, ...]
    task: str
    label_column: str = "label"
    classes: tuple[str, ...] | None = None
    time_column: str = "survival_months"
    event_column: str | None = None
    censorship_column: str | None = "censorship"
    format: str | None = None
    n_bins: int = 4
    skip_missing: bool = False
    cache: bool | int | str = False  # true, false, bytes or a size like "8GB" (data/cache.py)
    cache_dtype: str = "float32"
    standardize: bool = False
    case_column: str = "case_id"  # STAMP's tables: PATIENT
    slide_column: str = "slide_id"  # STAMP's tables: FILENAME (with .h5)
    mpp_column: str | None = None  # level-0 microns per pixel of each slide (STAMP's um coordinates)
    encoder: str | None = None  # features_<encoder>/ of a TRIDENT job folder


@dataclass(frozen=True)
class AggregatorConfig:
    """One aggregator of the grid: registered ``name``, a unique ``id``, factory ``options``."""

    id: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantConfig:
    """``plain`` (``r2t is None``) or with R²T (``r2t``: options of ``with_r2t``)."""

    name: str
    r2t: dict[str, Any] | None = None

    @property
    def is_plain(self) -> bool:
        return self.r2t is None


@dataclass(frozen=True)
class CompareConfig:
    """A validated comparison: cohort, grid axes, training settings, output."""

    cohort: CohortConfig
    aggregators: tuple[AggregatorConfig, ...]
    variants: tuple[VariantConfig, ...]
    folds: int
    seeds: tuple[int, ...]
    val_fraction: float
    split_seed: int
    training: dict[str, Any]
    device: str
    engine: str
    workers: int
    output: Path
    address: str | None = None  # engine ray: an existing cluster (None: start a local instance)
    cpus_per_run: float = 1.0  # engine ray: resources each run asks for
    gpus_per_run: float = 0.0
    retries: int = 1  # engine ray: attempts after a failed one
    splits: tuple[Path, ...] | None = None  # CLAM splits_{i}.csv files, one fold each (else folds are made)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def plain_variant(self) -> VariantConfig | None:
        """The variant without R²T (the baseline of every paired comparison)."""
        return next((v for v in self.variants if v.is_plain), None)


def _training_keys() -> dict[str, tuple[tuple[type, ...], Any]]:
    """The fields of :class:`~r2t_plugin.train.TrainConfig` a config sets: ``{key: (types, default)}``
    (``seed``, ``device``, ``progress`` and ``resume`` are set per run by the harness)."""
    hints = get_type_hints(TrainConfig)
    return {f.name: (accepted_types(hints[f.name]), f.default) for f in dataclasses.fields(TrainConfig)
            if f.name not in ("seed", "device", "progress", "resume")}


def _stage_options() -> dict[str, tuple[tuple[type, ...], tuple[Any, ...] | None]]:
    """``{key: (types, choices)}`` allowed under a variant's ``r2t``: the keyword options of
    ``with_r2t`` and of the R2T stage (not ``in_dim`` / ``out_dim``, which the adapter sets,
    nor ``mode``, which only the official import uses)."""
    wrap_hints, stage_hints = get_type_hints(with_r2t), get_type_hints(R2T.__init__)
    wrap_keys = [n for n, p in inspect.signature(with_r2t).parameters.items() if p.kind is p.KEYWORD_ONLY]
    stage_keys = [n for n in inspect.signature(R2T.__init__).parameters
                  if n not in ("self", "in_dim", "out_dim", "mode")]
    options = {n: (accepted_types(stage_hints[n]), literal_choices(stage_hints[n])) for n in stage_keys}
    options.update({n: (accepted_types(wrap_hints[n]), PLACEMENTS if n == "placement" else literal_choices(wrap_hints[n]))
                    for n in wrap_keys})
    return dict(sorted(options.items()))


TRAINING_KEYS = _training_keys()
STAGE_OPTIONS = _stage_options()
TASKS = ("classification", "survival")
ENGINES = ("local", "ray")


def r2t_option_names() -> list[str]:
    """Keys allowed under a variant's ``r2t``: the R2T stage options and with_r2t's own."""
    return list(STAGE_OPTIONS)


def _cache_size(v: Any) -> str | None:
    try:
        parse_size(v)
    except ValueError as exc:
        return str(exc)
    return None


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _reader_names() -> tuple[str, ...]:
    """The registered feature-file formats (``cohort.format``; null: sniffed per file)."""
    from ..plugins import registry

    return tuple(registry("readers").names())


def check_device(config: CompareConfig) -> None:
    """Raise :class:`ConfigError` if ``config.device`` does not exist on this machine (the
    runs of the local engine, and of a Ray instance started here, run on it)."""
    import torch

    if config.device == "cpu" or (config.engine == "ray" and config.address):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(config.device.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} CUDA device(s) (cuda:0 .. cuda:{count - 1})" if count else "no CUDA device"
        raise ConfigError([f"device: {config.device!r}, but this machine has {have}; use "
                           + ("cpu or one of those" if count else "device: cpu")], "config")


def _cohort(c: Checker, raw: Any, base: Path) -> CohortConfig | None:
    keys = ["csv", "features", "task", "label_column", "classes", "time_column", "event_column",
            "censorship_column", "format", "n_bins", "skip_missing", "cache", "cache_dtype", "standardize", "case_column",
            "slide_column", "mpp_column", "encoder"]
    d = c.mapping(raw, "cohort", keys)
    csv = c.get(d, "csv", "cohort", (str,))
    feats = c.get(d, "features", "cohort", (str, list))
    task = c.get(d, "task", "cohort", (str,), choices=TASKS)
    out = dict(
        label_column=c.get(d, "label_column", "cohort", (str,), "label"),
        classes=c.get(d, "classes", "cohort", (list, type(None)), None),
        time_column=c.get(d, "time_column", "cohort", (str,), "survival_months"),
        event_column=c.get(d, "event_column", "cohort", (str, type(None)), None),
        censorship_column=c.get(d, "censorship_column", "cohort", (str, type(None)), None),
        format=c.get(d, "format", "cohort", (str, type(None)), None, choices=_reader_names()),
        n_bins=c.get(d, "n_bins", "cohort", (int,), 4, positive),
        skip_missing=c.get(d, "skip_missing", "cohort", (bool,), False),
        cache=c.get(d, "cache", "cohort", (bool, int, str), False, _cache_size),
        cache_dtype=c.get(d, "cache_dtype", "cohort", (str,), "float32", choices=tuple(CACHE_DTYPES)),
        standardize=c.get(d, "standardize", "cohort", (bool,), False),
        **{k: c.get(d, k, "cohort", (str,), v) for k, v in (("case_column", "case_id"), ("slide_column", "slide_id"))},
        **{k: c.get(d, k, "cohort", (str, type(None)), None) for k in ("mpp_column", "encoder")},
    )
    if out["cache_dtype"] != "float32" and _cache_size(out["cache"]) is None and parse_size(out["cache"]) is None:
        c.fail("cohort.cache_dtype", f"{out['cache_dtype']} needs a cache: set cohort.cache (true or a size such as 8GB)")
    if task == "survival":
        if out["event_column"] and out["censorship_column"]:
            c.fail("cohort", "give one of event_column (1 = event) or censorship_column (1 = censored), not both")
        elif not out["event_column"] and not out["censorship_column"]:
            out["censorship_column"] = "censorship"
    if isinstance(feats, list) and not all(isinstance(f, str) for f in feats):
        c.fail("cohort.features", "expected a folder or a list of folders (strings)")
        feats = None
    if csv is None or feats is None or task not in TASKS:
        return None
    folders = tuple(resolve_path(base, f) for f in ([feats] if isinstance(feats, str) else feats))
    if out["classes"] is not None:
        out["classes"] = tuple(str(x) for x in out["classes"])
    return CohortConfig(csv=resolve_path(base, csv), features=folders, task=task, **out)


def _splits(c: Checker, raw: Any, base: Path) -> tuple[Path, ...] | None:
    """``splits``: a folder of CLAM ``splits_{i}.csv`` files, or a list of them."""
    from ..data.clam_splits import clam_split_files
    from ..data.splits import SplitError

    if raw is None:
        return None
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        c.fail("splits", f"expected a folder of CLAM splits_{{i}}.csv files or a list of them, got {raw!r}")
        return None
    try:
        return tuple(clam_split_files([resolve_path(base, x) for x in items]))
    except SplitError as exc:
        c.fail("splits", str(exc))
        return None


def _aggregators(c: Checker, raw: Any) -> list[AggregatorConfig]:
    from ..plugins import registry

    known = registry("aggregators").names()
    if not isinstance(raw, list) or not raw:
        c.fail("aggregators", f"expected a non-empty list of aggregator names; registered: {', '.join(known)}")
        return []
    out: list[AggregatorConfig] = []
    for i, item in enumerate(raw):
        path = f"aggregators[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        d = c.mapping(item, path, ["name", "id", "options"])
        name = c.get(d, "name", path, (str,))
        ident = c.get(d, "id", path, (str,), name)
        options = c.get(d, "options", path, (dict,), {})
        if name is not None and name not in known:
            c.fail(f"{path}.name", f"{name!r} is not a registered aggregator"  # why, if a plugin failed to load
                   f"{registry('aggregators').why_missing(name)}; registered: {', '.join(known)}")
            continue
        if name is not None:
            out.append(AggregatorConfig(id=ident, name=name, options=dict(options or {})))
    ids = [a.id for a in out]
    for dup in sorted({x for x in ids if ids.count(x) > 1}):
        c.fail("aggregators", f"id {dup!r} appears twice; give each entry a distinct id")
    return out


def _r2t_options(c: Checker, raw: Any, path: str) -> dict[str, Any]:
    """The valid keys of a mapping of R²T / with_r2t options (problems reported to ``c``)."""
    d = c.mapping(raw, path, r2t_option_names())
    d = {k: v for k, v in d.items() if k in STAGE_OPTIONS}
    for key in d:
        c.get(d, key, path, STAGE_OPTIONS[key][0], choices=STAGE_OPTIONS[key][1])
    return d


def _ablation(c: Checker, raw: Any) -> dict[str, Any] | None:
    """The shared R²T options of ``variants: ablation`` / ``{ablation: {...}}``; None otherwise."""
    if (base := ablation_base(raw)) is None:
        return None
    base = _r2t_options(c, base, "variants.ablation")
    for key in set(base) & set(ABLATION_KEYS):
        c.fail(f"variants.ablation.{key}", "set by the ablation itself; remove it")
    return base


def _variants(c: Checker, raw: Any) -> list[VariantConfig]:
    if raw is None:
        raw = [{"name": "plain"}, {"name": "r2t", "r2t": {"residual": True}}]  # starts as the plain model
    if (base := _ablation(c, raw)) is not None:
        return [VariantConfig(n, r) for n, r in ablation_variants(base)]
    if not isinstance(raw, list) or not raw:
        c.fail("variants", "expected `ablation` or a non-empty list of variants like {name: r2t, r2t: {...}}")
        return []
    out: list[VariantConfig] = []
    for i, item in enumerate(raw):
        path = f"variants[{i}]"
        d = c.mapping(item, path, ["name", "r2t"])
        name = c.get(d, "name", path, (str,))
        r2t = _r2t_options(c, d["r2t"], f"{path}.r2t") if "r2t" in d else None
        if name is not None:
            out.append(VariantConfig(name=name, r2t=r2t))
    names = [v.name for v in out]
    for dup in sorted({x for x in names if names.count(x) > 1}):
        c.fail("variants", f"name {dup!r} appears twice")
    if sum(v.is_plain for v in out) > 1:
        c.fail("variants", "at most one variant without r2t (the baseline of the paired comparison)")
    return out


def _training(c: Checker, raw: Any) -> dict[str, Any]:
    """The training settings; their bounds and choices are TrainConfig's own checks."""
    d = c.mapping(raw, "training", list(TRAINING_KEYS))
    out = {key: c.get(d, key, "training", types, default) for key, (types, default) in TRAINING_KEYS.items()}
    try:
        TrainConfig(**out)
    except TrainConfigError as exc:
        for key, message in exc.problems.items():
            c.fail(f"training.{key}", message)
    return out


def parse_config(data: Any, base_dir: str | os.PathLike = ".", source: str = "config") -> CompareConfig:
    """Validate a loaded mapping; raise :class:`ConfigError` listing every problem."""
    c = Checker()
    top = ["cohort", "aggregators", "variants", "folds", "seeds", "val_fraction", "split_seed",
           "training", "device", "engine", "workers", "output", "address", "cpus_per_run", "gpus_per_run",
           "retries", "splits"]
    d = c.mapping(data, "", top)
    base = Path(base_dir)
    for key in ("cohort", "aggregators"):
        if key not in d:
            c.fail(key, "required key is missing")
    cohort = _cohort(c, d["cohort"], base) if "cohort" in d else None
    aggs = _aggregators(c, d["aggregators"]) if "aggregators" in d else []
    variants = _variants(c, d.get("variants"))
    folds = c.get(d, "folds", "", (int,), 5, lambda v: None if v >= 2 else f"must be >= 2, got {v}")
    splits = _splits(c, d.get("splits"), base)
    if splits and "folds" in d and folds != len(splits):
        c.fail("folds", f"{folds}, but splits names {len(splits)} CLAM file(s), one fold each; remove folds")
    folds = len(splits) if splits else folds
    seeds = c.get(d, "seeds", "", (list, int), [0])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        c.fail("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        c.fail("seeds", f"seeds repeat: {seeds}")
    elif bad := [s for s in seeds if not 0 <= s < 2**32]:
        c.fail("seeds", f"{bad} outside 0 .. 2**32 - 1 (numpy's seeds); use smaller non-negative seeds")
    val_fraction = c.get(d, "val_fraction", "", (float,), 0.2,
                         lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}")
    split_seed = c.get(d, "split_seed", "", (int,), 0,
                       lambda v: None if 0 <= v < 2**32 else f"must be in 0 .. 2**32 - 1 (numpy's seeds), got {v}")
    training = _training(c, d.get("training"))
    device = c.get(d, "device", "", (str,), "cpu",
                   lambda v: None if _DEVICE.fullmatch(v) else f"{v!r} is not cpu, cuda or cuda:N")
    engine = c.get(d, "engine", "", (str,), "local", choices=ENGINES)
    workers = c.get(d, "workers", "", (int,), 1, positive)
    address = c.get(d, "address", "", (str, type(None)), None)
    cpus = c.get(d, "cpus_per_run", "", (int, float), 1.0, lambda v: None if v > 0 else f"must be > 0, got {v}")
    gpus = c.get(d, "gpus_per_run", "", (int, float), 0.0, lambda v: None if v >= 0 else f"must be >= 0, got {v}")
    retries = c.get(d, "retries", "", (int,), 1, lambda v: None if v >= 0 else f"must be >= 0, got {v}")
    if engine == "ray" and isinstance(device, str) and device.startswith("cuda") and not gpus:
        c.fail("gpus_per_run", f"device {device!r} with engine ray needs gpus_per_run > 0 (e.g. 0.25 to share a GPU)")
    output = c.get(d, "output", "", (str,))
    if c.problems:
        raise ConfigError(c.problems, source)
    return CompareConfig(cohort=cohort, aggregators=tuple(aggs), variants=tuple(variants), folds=folds,
                         seeds=tuple(seeds), val_fraction=float(val_fraction), split_seed=split_seed,
                         training=training, device=device, engine=engine, workers=workers, output=resolve_path(base, output),
                         address=address, cpus_per_run=float(cpus), gpus_per_run=float(gpus), retries=retries,
                         splits=splits, raw=dict(data))


def load_config(path: str | os.PathLike) -> CompareConfig:
    """Read a YAML config with ``yaml.safe_load`` and validate it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"not valid YAML{where}: {what}; fix the syntax there"], str(path)) from exc
    return parse_config(data, path.parent, str(path))
