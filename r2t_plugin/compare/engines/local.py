"""The local engine: the cells of a grid on this machine.

With ``workers=1`` the cells run one after another in this process (the run's own progress
bar shows); otherwise in ``workers`` spawned processes with ``threads`` torch threads each,
one progress bar per running cell (following its epoch log) on a terminal. A worker stops
at once when the driver dies, so a killed driver leaves no orphans.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ...progress import ProgressBar, is_terminal
from ..cell import CellOutcome, Plan, run_cell
from ..grid import Cell

__all__ = ["LocalEngine"]


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # the driver died (e.g. SIGKILL): stop at once
            os._exit(1)


def _worker_init(threads: int, driver: int) -> None:
    """Worker process set-up: ``threads`` torch threads; exit when the driver (pid) dies."""
    if os.getppid() != driver:  # the driver died while this worker was starting
        os._exit(1)
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(driver,), daemon=True).start()


def _epochs_logged(run_dir: Path) -> int:
    """Epochs a running fit has logged so far (lines of its ``log.csv``)."""
    try:
        with open(run_dir / "log.csv", encoding="utf-8") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


class LocalEngine:
    """Cells on this machine: one after another in this process (``workers=1``; the run's
    own progress bar shows), or in ``workers`` spawned processes with ``threads`` torch
    threads each (one progress bar per running cell, following its epoch log). Outcomes
    are yielded as cells finish."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        self.workers, self.threads = max(1, workers), threads

    def run(self, cells: Iterable[Cell], plan: Plan) -> Iterator[tuple[Cell, CellOutcome]]:
        cells = list(cells)
        if self.workers == 1 or len(cells) <= 1:
            for cell in cells:
                yield cell, run_cell(cell, plan)
            return
        show = plan.progress and is_terminal()  # per-cell bars only on a terminal
        plan = replace(plan, progress=False)
        epochs = int(plan.config.training["epochs"])
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(self.threads or 1, os.getpid())) as pool:
            pending = {pool.submit(run_cell, cell, plan): cell for cell in cells}
            bars: dict[Any, Any] = {}
            try:
                while pending:
                    done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    if show:
                        for fut, cell in pending.items():
                            if fut.running() and fut not in done and (plan.run_root / cell.run_id).is_dir():
                                bar = bars.get(fut)
                                if bar is None:
                                    bar = bars[fut] = ProgressBar(epochs, cell.run_id, "epoch", leave=False)
                                bar.advance_to(_epochs_logged(plan.run_root / cell.run_id))
                    for fut in done:
                        cell = pending.pop(fut)
                        if fut in bars:
                            bars.pop(fut).close()
                        try:
                            outcome = fut.result()
                        except Exception as exc:  # noqa: BLE001 - a worker process died (e.g. killed for memory)
                            row = {**cell.key(), "status": "failed", "error": f"worker process failed: {exc!r}"[:500]}
                            outcome = CellOutcome(row, [], traceback.format_exc())
                        yield cell, outcome
            finally:  # the driver stopped early (disk full, Ctrl-C): start no further cell
                for fut in pending:
                    fut.cancel()
