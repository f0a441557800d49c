"""``results.csv``: one row per finished run, rewritten atomically after every run.

Key columns come first (``run_id, aggregator, variant, fold, seed, status``), then the
validation metrics, the test metrics, the run figures and ``error``. A row is the commit
point of a run: the driver writes it last, after the run's other files, so a run killed at
any moment leaves either no row or a complete one. A failed run has ``status = failed``, an
``error`` line and its traceback in ``runs/{run_id}/traceback.txt``; rerunning retries it.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..io import atomic_write_text

__all__ = ["KEY_COLUMNS", "ResultsTable", "ResultsError", "metric_columns", "read_rows", "with_status"]

KEY_COLUMNS = ("run_id", "aggregator", "variant", "fold", "seed", "status")
RUN_COLUMNS = ("epochs", "best_epoch", "seconds", "peak_memory_mb", "params")
# columns that depend on the machine and load, not on the computation
TIMING_COLUMNS = ("seconds", "peak_memory_mb")


class ResultsError(ValueError):
    """A ``results.csv`` that this package did not write completely (truncated, edited)."""


def _check_complete(path: Path) -> None:
    """Raise :class:`ResultsError` unless ``path`` is a whole table as :class:`ResultsTable` writes it:
    a header with the key columns, every row as wide, a final newline."""
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    problem = None
    if not rows or any(k not in rows[0] for k in KEY_COLUMNS):
        problem = f"its header lacks the key columns {list(KEY_COLUMNS)}"
    elif not text.endswith("\n"):
        problem = "its last line is incomplete (the file was cut short)"
    elif bad := [i + 1 for i, r in enumerate(rows) if len(r) != len(rows[0])]:
        problem = f"line {bad[0]} has a different number of fields than the header"
    if problem:
        raise ResultsError(f"{path}: {problem}; restore the file, or delete it and run the same command again "
                           "(finished runs are read back from runs/ without training again)")


def _column_rank(name: str) -> tuple[int, str]:
    if name in KEY_COLUMNS:
        return (0, f"{KEY_COLUMNS.index(name):02d}")
    if name.startswith("val_"):
        return (1, name)
    if name.startswith("test_"):
        return (2, name)
    if name in RUN_COLUMNS:
        return (3, f"{RUN_COLUMNS.index(name):02d}")
    if name == "error":
        return (5, name)
    return (4, name)


def metric_columns(columns: Iterable[str], split: str = "test") -> list[str]:
    """The ``{split}_*`` metric columns, sorted."""
    return sorted(c for c in columns if c.startswith(f"{split}_"))


def with_status(rows: Iterable[dict[str, Any]], status: str = "ok") -> list[dict[str, Any]]:
    """The rows of runs with ``status`` (``"ok"``: finished; ``"failed"``: raised)."""
    return [r for r in rows if r.get("status") == status]


def _typed(text: pd.Series) -> pd.Series:
    """A column of CSV text as integers, else floats (``nan`` included), else text; empty
    cells None."""
    filled = text != ""
    values = text[filled]
    for kind in ("int64", "float64"):
        try:
            values = text[filled].astype(kind)
            break
        except (ValueError, OverflowError):
            pass
    return values.astype(object).reindex(text.index).where(filled, None)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a CSV file written by this package, each column typed (see :func:`_typed`)."""
    try:
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return []
    return text.apply(_typed).to_dict("records")


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value).replace("\n", " ")


class ResultsTable:
    """The rows of ``results.csv``, kept in grid order (``order``: run ids)."""

    def __init__(self, path: str | os.PathLike, order: list[str] | None = None) -> None:
        self.path = Path(path)
        self._rank = {rid: i for i, rid in enumerate(order or [])}
        self._rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            _check_complete(self.path)
            self._rows = {row["run_id"]: row for row in read_rows(self.path)}

    def rows(self) -> list[dict[str, Any]]:
        """Every row (finished and failed), in grid order."""
        big = len(self._rank)
        return sorted(self._rows.values(), key=lambda r: (self._rank.get(r["run_id"], big), r["run_id"]))

    def finished(self) -> set[str]:
        """Run ids that completed successfully."""
        return {r["run_id"] for r in with_status(self._rows.values())}

    def failed(self) -> list[dict[str, Any]]:
        """Rows of runs that raised."""
        return with_status(self.rows(), "failed")

    def record(self, row: dict[str, Any]) -> None:
        """Add (or replace) the row of ``row["run_id"]`` and rewrite the file atomically."""
        missing = [k for k in KEY_COLUMNS if k not in row]
        if missing:
            raise ValueError(f"result row lacks {missing}")
        self._rows[row["run_id"]] = dict(row)
        atomic_write_text(self.path, self.to_csv())

    def columns(self) -> list[str]:
        """Union of the columns of every row, in canonical order."""
        names = set(KEY_COLUMNS)
        for r in self._rows.values():
            names.update(r)
        return sorted(names, key=_column_rank)

    def to_csv(self) -> str:
        """The table as CSV text."""
        cols = self.columns()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in self.rows():
            w.writerow([_format(r.get(c)) for c in cols])
        return buf.getvalue()
