"""The Ray engine of ``r2t compare``: every cell of the grid is one Ray task.

Each task runs the same pure worker function as the local engine
(:func:`~r2t_plugin.compare.cell.run_cell`) and asks Ray for ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs (fractions allowed, so small MIL runs can share a GPU). The
:class:`~r2t_plugin.compare.cell.Plan` sent to the workers holds the config and the fold
case ids only: each worker opens the cohort from the config's paths (shared storage) and
trains into ``runs/{run_id}/`` there. Outcomes come back to the driver, which alone writes
``results.csv`` and the other shared files (see :mod:`r2t_plugin.compare.runner`), so
resuming, and finishing with the other engine, work exactly as with the local engine.

A failed attempt (an exception in the run, or a worker or node that died) is retried up to
``retries`` times, then yielded as a ``failed`` outcome with its traceback; the other tasks
carry on. Ray is optional: ``pip install 'r2t-plugin[ray]'``.
"""
from __future__ import annotations

import traceback
from dataclasses import replace
from typing import Any, Iterable, Iterator

from ..cell import CellOutcome, Plan, run_cell
from ..config import ConfigError
from ..grid import Cell

__all__ = ["RayEngine", "require_ray", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'r2t-plugin[ray]'"


def require_ray() -> Any:
    """The ``ray`` module; a :class:`ConfigError` saying how to install it if it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError([f"engine: 'ray' needs Ray, which is not installed; install it with: {INSTALL_HINT}"],
                          "config") from exc
    return ray


def _ray_task(cell: Cell, plan: Plan, threads: int) -> CellOutcome:
    """What a Ray worker executes: ``threads`` torch threads, then :func:`run_cell`."""
    import torch

    torch.set_num_threads(threads)
    return run_cell(cell, plan)


def _crashed(cell: Cell, exc: BaseException) -> CellOutcome:
    """The outcome of a task that Ray could not finish (worker or node died, cancelled, ...)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    message = f"ray task failed: {type(exc).__name__}: {first}"[:500]
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return CellOutcome({**cell.key(), "status": "failed", "error": message}, [], tb)


class RayEngine:
    """Cells as Ray tasks, on the cluster at ``address`` or on a local Ray instance.

    If this process is already connected to Ray (``ray.init`` was called), that connection
    is used and left open; otherwise the engine connects (``address``) or starts a local
    instance (``address=None``) and shuts it down when the grid is done.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                 retries: int = 1, threads: int | None = None) -> None:
        require_ray()
        if cpus_per_run <= 0 or gpus_per_run < 0 or retries < 0:
            raise ValueError("need cpus_per_run > 0, gpus_per_run >= 0 and retries >= 0")
        self.address, self.retries = address, int(retries)
        self.cpus_per_run, self.gpus_per_run = float(cpus_per_run), float(gpus_per_run)
        self.threads = int(threads) if threads else max(1, int(self.cpus_per_run))

    def _connect(self, ray: Any) -> bool:
        """Connect to Ray if needed; True when this engine owns the connection."""
        if ray.is_initialized():
            return False
        ray.init(address=self.address or "local", include_dashboard=False, configure_logging=False)
        return True

    def run(self, cells: Iterable[Cell], plan: Plan) -> Iterator[tuple[Cell, CellOutcome]]:
        """Submit every cell; yield each final outcome as its task finishes."""
        cells = list(cells)
        if not cells:
            return
        ray = require_ray()
        owned = self._connect(ray)
        pending: dict[Any, Cell] = {}
        try:
            plan_ref = ray.put(replace(plan, progress=False))  # no progress bars in worker logs
            task = ray.remote(_ray_task)
            resources = dict(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                             max_retries=0)  # retries are counted here, for failed runs and dead workers alike
            attempts = dict.fromkeys((c.run_id for c in cells), 0)

            def submit(cell: Cell) -> None:
                pending[task.options(name=f"r2t:{cell.run_id}", **resources).remote(cell, plan_ref, self.threads)] = cell

            for cell in cells:
                submit(cell)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a dead worker must not stop the grid
                        outcome = _crashed(cell, exc)
                    if (outcome.traceback is not None and outcome.disk_full is None
                            and attempts[cell.run_id] < self.retries):
                        attempts[cell.run_id] += 1
                        submit(cell)
                        continue
                    yield cell, outcome
        finally:
            for ref in pending:  # the driver stops early (error, Ctrl-C): do not leave tasks running
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort
                    pass
            if owned:
                ray.shutdown()
