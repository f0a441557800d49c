"""Bags into the training loop: read ahead by worker threads, pinned, moved to the device.

:class:`BagLoader` yields the batches of a sequence of bags in a given order. With
``num_workers=0`` each batch is read when the loop asks for it; with ``num_workers=k``,
``k`` threads read, collate and (for CUDA) pin up to ``2 k`` batches ahead, and the loop
receives them in order, so results do not depend on ``k``. On CUDA each batch is copied
(``non_blocking``, from pinned memory) on a side stream one step ahead of its use; the
compute stream waits for that copy only. Half-precision features (a float16 cache) are cast
to float32 on the device.

Why threads and not worker processes: a bag read is one contiguous HDF5 read plus a few
vectorised passes, all outside Python's interpreter lock, so they overlap the training step
(h5py serialises HDF5 calls with one lock: two threads' reads of the file bytes themselves
take turns; their decoding, checks and collation do not), the cohort's in-memory cache
(:mod:`r2t_plugin.data.cache`) lives in this process and is filled by the threads as they
read, and a bag is not copied through shared memory on its way back.

:func:`default_workers` is the rule for ``num_workers=None``: 0 for fewer than 16 bags
(nothing worth overlapping), else ``min(4, cpu_count - 1)`` and at least 1.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..bag import BagBatch, FeatureBag
from .cache import as_float32
from .cohort import CaseBags

__all__ = ["BagLoader", "BagTargets", "bag_targets", "default_workers", "waited", "SMALL_COHORT"]

SMALL_COHORT = 16  # fewer bags than this: no worker threads by default
_clock = threading.local()


def waited() -> float:
    """Seconds this thread has waited so far for batches of any :class:`BagLoader` (a
    running total: the difference over a span is that span's wait for data)."""
    return getattr(_clock, "seconds", 0.0)


def _add_wait(seconds: float) -> None:
    _clock.seconds = waited() + seconds


def default_workers(n_bags: int) -> int:
    """Worker threads for ``n_bags`` when ``num_workers`` is not given (module docstring)."""
    if n_bags < SMALL_COHORT:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclasses.dataclass(frozen=True)
class BagTargets:
    """A bag's id and targets, without its features (what a task's ``fit`` reads)."""

    case_id: str | None
    label: int | None = None
    time: float | None = None
    event: int | None = None


def bag_targets(bags: Sequence[FeatureBag]) -> Sequence[Any]:
    """The targets of ``bags`` without reading their features where the sequence knows them
    (a cohort's :class:`~r2t_plugin.data.cohort.CaseBags`, also inside standardisation);
    other sequences are returned as they are."""
    inner = getattr(bags, "bags", None)  # data.transforms.standardized keeps its source here
    if isinstance(inner, CaseBags) and len(inner) == len(bags):
        bags = inner
    if isinstance(bags, CaseBags):
        return [BagTargets(c, **bags.cohort.target(c)) for c in bags.case_ids]
    return bags


def _float32(batch: BagBatch) -> BagBatch:
    if batch.features.dtype in (torch.float16, torch.bfloat16):
        return dataclasses.replace(batch, features=batch.features.float())
    return batch


def _tensors(batch: BagBatch) -> Iterator[torch.Tensor]:
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            yield value
        elif f.name == "edge_index" and value is not None:
            yield from (e for e in value if e is not None)


def _ready(batch: BagBatch, copied: Any) -> BagBatch:
    """A batch copied on a side stream, made safe to use on the current stream."""
    stream = torch.cuda.current_stream(batch.features.device)
    stream.wait_event(copied)
    for t in _tensors(batch):
        t.record_stream(stream)  # its memory is not reused before this stream is done with it
    return _float32(batch)


def on_device(batches: Iterable[BagBatch], device: torch.device) -> Iterator[BagBatch]:
    """``batches`` on ``device``, float32 features. CUDA: batch ``j + 1`` is copied on a side
    stream (asynchronously, from pinned memory) before batch ``j`` is handed out."""
    if device.type == "cpu":
        yield from (_float32(b) for b in batches)
        return
    if device.type != "cuda":
        yield from (_float32(b.to(device)) for b in batches)
        return
    side = torch.cuda.Stream(device=device)
    ahead = None
    for batch in batches:
        with torch.cuda.stream(side):
            moved = batch.to(device, non_blocking=True)
        staged = (moved, side.record_event())
        if ahead is not None:
            yield _ready(*ahead)
        ahead = staged
    if ahead is not None:
        yield _ready(*ahead)


class BagLoader:
    """Batches of ``bags`` on ``device`` in a given order, read ahead by ``num_workers``
    threads (module docstring); the consumer's waits add up in :func:`waited`."""

    def __init__(self, bags: Sequence[FeatureBag], *, batch_size: int = 1, num_workers: int = 0,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.bags, self.batch_size, self.num_workers = bags, batch_size, num_workers
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.bags)

    def _bag(self, i: int) -> FeatureBag:
        bag = self.bags.stored(i) if isinstance(self.bags, CaseBags) else self.bags[i]
        return bag if self.device.type == "cuda" else as_float32(bag)  # CUDA: cast after the copy

    def _host_batch(self, idx: Sequence[int]) -> BagBatch:
        batch = BagBatch.collate([self._bag(i) for i in idx])
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def _init_thread(self) -> None:
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # pin for the loop's GPU

    def _host_batches(self, order: Sequence[int]) -> Iterator[BagBatch]:
        chunks = iter([list(order[s:s + self.batch_size]) for s in range(0, len(order), self.batch_size)])
        if self.num_workers == 0:
            for idx in chunks:
                t0 = time.perf_counter()
                batch = self._host_batch(idx)
                _add_wait(time.perf_counter() - t0)
                yield batch
            return
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="r2t-loader", initializer=self._init_thread)
        pending: deque[Future] = deque()
        try:
            for idx in chunks:
                pending.append(pool.submit(self._host_batch, idx))
                if len(pending) >= 2 * self.num_workers:
                    break
            while pending:
                t0 = time.perf_counter()
                batch = pending.popleft().result()
                _add_wait(time.perf_counter() - t0)
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append(pool.submit(self._host_batch, nxt))
                yield batch
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)

    def batches(self, order: Sequence[int] | None = None) -> Iterator[BagBatch]:
        """The batches of ``bags[order]`` (default: in sequence order), on the device. Close
        the iterator (``contextlib.closing``) when leaving it early: that stops the threads."""
        host = self._host_batches(range(len(self.bags)) if order is None else order)
        try:
            yield from on_device(host, self.device)
        finally:
            host.close()
