"""Where the cells of a grid run: :class:`Engine` and :func:`get_engine`.

An engine only decides where :func:`~r2t_plugin.compare.cell.run_cell` executes and yields
each outcome as its cell finishes; the driver (:mod:`r2t_plugin.compare.runner`) alone writes
the shared files. ``local``: this machine, one cell after another or in worker processes
(:mod:`.local`); ``ray``: one Ray task per cell (:mod:`.ray`, needs the ``ray`` extra).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Protocol

from ..cell import CellOutcome, Plan
from ..config import CompareConfig
from ..grid import Cell
from .local import LocalEngine

__all__ = ["Engine", "LocalEngine", "get_engine"]


class Engine(Protocol):
    """Runs cells and yields each outcome as it finishes (in any order)."""

    name: str

    def run(self, cells: Iterable[Cell], plan: Plan) -> Iterator[tuple[Cell, CellOutcome]]: ...


def get_engine(config: CompareConfig) -> Engine:
    """The engine that ``config`` asks for (see ``config.ENGINES``)."""
    if config.engine == "local":
        return LocalEngine(config.workers, config.training.get("num_threads"))
    if config.engine == "ray":
        from .ray import RayEngine

        return RayEngine(address=config.address, cpus_per_run=config.cpus_per_run,
                         gpus_per_run=config.gpus_per_run, retries=config.retries,
                         threads=config.training.get("num_threads"))
    raise ValueError(f"unknown engine {config.engine!r}; available: local, ray")
