"""The one feature-bag interface shared by every stage, aggregator and reader.

A :class:`FeatureBag` is one slide (or one case: several slides) as a bag of N patch
features. A :class:`BagBatch` is B bags padded to the longest, with a boolean mask
(True = real instance). Both validate on construction and name the bag in their errors.
"""
from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, field, fields, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureBag", "BagBatch", "BagError"]


class BagError(ValueError):
    """A bag (or batch) that breaks the feature-bag contract."""


def _name(bag_id: str | None) -> str:
    return f"bag {bag_id!r}" if bag_id else "bag"


def _all_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite, in one pass: a NaN or Inf anywhere makes the
    sum NaN or Inf in any summation order (the element-wise test runs only when the sum is
    not finite, which finite values that overflow it can also cause). CPU float32 / float64
    sum in NumPy: one thread, so its cost does not depend on how busy the other cores are."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad:
        with np.errstate(all="ignore"):
            total = float(np.add.reduce(t.numpy(), axis=None))
    else:
        total = float(t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum())
    return math.isfinite(total) or bool(torch.isfinite(t).all())


@dataclass
class FeatureBag:
    """One bag of patch features.

    Shapes: ``features`` (N, D) float; ``coords`` (N, 2) level-0 pixels (x, y) or None;
    ``patch_size`` level-0 patch side in pixels or None; ``edge_index`` (2, E) or None.
    ``grid_step``: the level-0 distance between neighbouring patch positions when it is not
    the patch side (patches extracted with overlap: TRIDENT's ``overlap > 0``), else None.
    Grid cells and patch graphs use :attr:`cell_size`; heatmaps draw ``patch_size``.
    Targets: ``label`` (int) for classification, or ``time`` + ``event`` (1 = event
    observed) for survival. Construction checks shapes, types and that features and coords
    are finite; ``check_values=False`` skips the NaN/Inf scan, for tensors taken from bags
    that passed it (moved, concatenated, cast to another float type).
    """

    features: Tensor
    coords: Tensor | None = None
    patch_size: float | None = None
    edge_index: Tensor | None = None
    slide_ids: tuple[str, ...] = ()
    case_id: str | None = None
    label: int | None = None
    time: float | None = None
    event: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    grid_step: float | None = None
    check_values: InitVar[bool] = True

    def __post_init__(self, check_values: bool = True) -> None:
        who = _name(self.case_id or (self.slide_ids[0] if self.slide_ids else None))
        f = self.features
        if not isinstance(f, Tensor):
            f = torch.as_tensor(f)
        if f.dim() != 2:
            raise BagError(f"{who}: features must be (N, D), got shape {tuple(f.shape)}")
        if not f.is_floating_point():
            raise BagError(f"{who}: features must be floating point, got {f.dtype}")
        if f.shape[0] == 0:
            raise BagError(f"{who}: empty bag (0 instances)")
        if f.shape[1] == 0:
            raise BagError(f"{who}: features have width 0")
        if check_values and not _all_finite(f):
            bad = int((~torch.isfinite(f)).any(dim=1).sum())
            raise BagError(f"{who}: {bad} instance(s) have NaN or Inf features")
        self.features = f
        if self.coords is not None:
            c = torch.as_tensor(self.coords)
            if c.dim() != 2 or c.shape[1] != 2:
                raise BagError(f"{who}: coords must be (N, 2), got shape {tuple(c.shape)}")
            if c.shape[0] != f.shape[0]:
                raise BagError(
                    f"{who}: coords has {c.shape[0]} rows but features has {f.shape[0]}"
                )
            if check_values and c.is_floating_point() and not _all_finite(c):
                raise BagError(f"{who}: coords contain NaN or Inf")
            self.coords = c
        if self.patch_size is not None:
            self.patch_size = float(self.patch_size)
            if not self.patch_size > 0:
                raise BagError(f"{who}: patch_size must be > 0, got {self.patch_size}")
        if self.grid_step is not None:
            self.grid_step = float(self.grid_step)
            if not self.grid_step > 0:
                raise BagError(f"{who}: grid_step must be > 0, got {self.grid_step}")
        if self.edge_index is not None:
            e = torch.as_tensor(self.edge_index, dtype=torch.long)
            if e.dim() != 2 or e.shape[0] != 2:
                raise BagError(f"{who}: edge_index must be (2, E), got {tuple(e.shape)}")
            if e.numel() and (int(e.min()) < 0 or int(e.max()) >= f.shape[0]):
                raise BagError(f"{who}: edge_index refers to instances outside 0..{f.shape[0] - 1}")
            self.edge_index = e
        self.slide_ids = tuple(self.slide_ids)
        if (self.time is None) != (self.event is None):
            raise BagError(f"{who}: survival targets need both time and event")

    @property
    def n(self) -> int:
        """Number of instances."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self.features.shape[1])

    @property
    def cell_size(self) -> float | None:
        """The side of one patch-grid cell in level-0 pixels: ``grid_step``, else ``patch_size``."""
        return self.grid_step if self.grid_step is not None else self.patch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FeatureBag":
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(self, features=mv(self.features), coords=mv(self.coords),
                       edge_index=mv(self.edge_index), check_values=False)

    def batch(self) -> "BagBatch":
        """This bag as a batch of one."""
        return BagBatch.collate([self])


@dataclass
class BagBatch:
    """B bags padded to the longest.

    Shapes: ``features`` (B, Nmax, D); ``mask`` (B, Nmax) bool, True = real instance;
    ``coords`` (B, Nmax, 2) or None; ``patch_size`` (B,) or None; ``label`` (B,) long or
    None; ``time`` (B,) float and ``event`` (B,) long or None. Padded rows are zero.
    ``grid_step`` (B,): each bag's :attr:`FeatureBag.cell_size` (None unless every bag has
    one); models called with a batch take it as their ``patch_size`` argument, the grid cell.
    """

    features: Tensor
    mask: Tensor
    coords: Tensor | None = None
    patch_size: Tensor | None = None
    label: Tensor | None = None
    time: Tensor | None = None
    event: Tensor | None = None
    edge_index: list[Tensor | None] | None = None
    case_ids: tuple[str | None, ...] = ()
    grid_step: Tensor | None = None

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise BagError(f"batch features must be (B, N, D), got {tuple(self.features.shape)}")
        b, n, _ = self.features.shape
        if self.mask.shape != (b, n) or self.mask.dtype != torch.bool:
            raise BagError(
                f"batch mask must be bool ({b}, {n}), got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if self.coords is not None and self.coords.shape != (b, n, 2):
            raise BagError(f"batch coords must be ({b}, {n}, 2), got {tuple(self.coords.shape)}")

    @classmethod
    def collate(cls, bags: Sequence[FeatureBag]) -> "BagBatch":
        """Pad ``bags`` to the longest one; all must share the feature width.

        The batch lives on the first bag's device (the others are moved there).
        """
        if not bags:
            raise BagError("cannot collate an empty list of bags")
        widths = {bag.dim for bag in bags}
        if len(widths) > 1:
            raise BagError(f"bags have different feature widths {sorted(widths)}: "
                           + ", ".join(f"{_name(b.case_id)}={b.dim}" for b in bags))
        b, nmax, d = len(bags), max(bag.n for bag in bags), bags[0].dim
        dtype, device = bags[0].features.dtype, bags[0].features.device
        feats = torch.zeros(b, nmax, d, dtype=dtype, device=device)
        mask = torch.zeros(b, nmax, dtype=torch.bool, device=device)
        with_coords = [bag.coords is not None for bag in bags]
        if any(with_coords) and not all(with_coords):
            missing = [_name(bag.case_id) for bag in bags if bag.coords is None]
            raise BagError(f"some bags in the batch have no coords: {', '.join(missing)}")
        coords = torch.zeros(b, nmax, 2, device=device) if all(with_coords) else None
        for i, bag in enumerate(bags):
            feats[i, : bag.n] = bag.features.to(device)
            mask[i, : bag.n] = True
            if coords is not None:
                coords[i, : bag.n] = bag.coords.to(device, coords.dtype)
        ps = [bag.patch_size for bag in bags]
        patch = torch.tensor(ps, dtype=torch.float32, device=device) if all(p is not None for p in ps) else None
        steps = [bag.cell_size for bag in bags]
        step = torch.tensor(steps, dtype=torch.float32, device=device) if all(s is not None for s in steps) else None
        labels = [bag.label for bag in bags]
        label = (torch.tensor(labels, dtype=torch.long, device=device)
                 if all(x is not None for x in labels) else None)
        times = [bag.time for bag in bags]
        surv = all(t is not None for t in times)
        return cls(
            features=feats,
            mask=mask,
            coords=coords,
            patch_size=patch,
            label=label,
            time=torch.tensor(times, dtype=torch.float32, device=device) if surv else None,
            event=torch.tensor([bag.event for bag in bags], dtype=torch.long, device=device) if surv else None,
            edge_index=[bag.edge_index for bag in bags] if any(bag.edge_index is not None for bag in bags) else None,
            case_ids=tuple(bag.case_id for bag in bags),
            grid_step=step,
        )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def lengths(self) -> Tensor:
        """(B,) number of real instances per bag."""
        return self.mask.sum(dim=1)

    def _map(self, fn) -> "BagBatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = fn(v)
            elif f.name == "edge_index" and v is not None:
                v = [None if e is None else fn(e) for e in v]
            out[f.name] = v
        return BagBatch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "BagBatch":
        """Move every tensor to ``device`` (asynchronously from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "BagBatch":
        """Pinned copy, so that ``.to(cuda, non_blocking=True)`` overlaps with compute."""
        if not torch.cuda.is_available():
            return self
        return self._map(lambda t: t.pin_memory())

    def unbatch(self) -> list[FeatureBag]:
        """The bags again, without padding."""
        out = []
        for i in range(len(self)):
            m = self.mask[i]
            step = None if self.grid_step is None else float(self.grid_step[i])
            patch = None if self.patch_size is None else float(self.patch_size[i])
            out.append(FeatureBag(
                features=self.features[i][m],
                coords=None if self.coords is None else self.coords[i][m],
                patch_size=patch,
                grid_step=None if step == patch else step,
                edge_index=None if self.edge_index is None else self.edge_index[i],
                case_id=self.case_ids[i] if self.case_ids else None,
                label=None if self.label is None else int(self.label[i]),
                time=None if self.time is None else float(self.time[i]),
                event=None if self.event is None else int(self.event[i]),
            ))
        return out

    def to_pyg(self):
        """A ``torch_geometric.data.Batch`` with ``x``, ``pos`` and ``edge_index`` per bag.

        Bags without an ``edge_index`` get a graph from their coordinates (8-neighbour
        patch grid); without coordinates, no edges.
        """
        from torch_geometric.data import Batch, Data

        from .geometry import grid_edges

        graphs = []
        for i, bag in enumerate(self.unbatch()):
            e = bag.edge_index
            if e is None:
                e = (grid_edges(bag.coords, bag.cell_size) if bag.coords is not None
                     else torch.zeros(2, 0, dtype=torch.long, device=bag.features.device))
            data = Data(x=bag.features, edge_index=e, pos=bag.coords)
            if self.label is not None:
                data.y = self.label[i : i + 1]
            graphs.append(data)
        return Batch.from_data_list(graphs)
