"""Progress of long loops: a tqdm bar on a terminal, plain lines anywhere else.

When stderr is an interactive terminal, a loop shows a tqdm bar that redraws in place.
In a log file, CI or a Slurm job the same calls print one plain line per finished step
(``compare: run 3/8: abmil__plain__fold0__seed0 ok (0:42)``), with no carriage returns
and no cursor escape codes, so logs stay readable and small.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["ProgressBar", "is_terminal"]


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """A loop of ``total`` steps of ``unit``: call :meth:`step` after each, :meth:`close` at the end.

    A tqdm bar when ``stream`` (default ``sys.stderr``) is a terminal; otherwise one line per
    step, ``{desc}: {unit} {n}/{total}: {note} ({elapsed})``; nothing when not ``enabled``.
    """

    def __init__(self, total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True,
                 leave: bool = True, stream: IO[str] | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.unit, self.n, self.enabled = total, desc, unit, initial, enabled
        self._t0 = time.perf_counter()
        self._bar: Any = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream)

    @property
    def live(self) -> bool:
        """Whether this is a bar redrawn in place (on a terminal)."""
        return self._bar is not None

    def step(self, note: str = "", n: int = 1) -> None:
        """``n`` more steps are done; ``note`` says how they went."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note)
        elif self.enabled:
            line = f"{self.desc}: {self.unit} {self.n}/{self.total}" + (f": {note}" if note else "")
            print(f"{line} ({_clock(time.perf_counter() - self._t0)})", file=self.stream, flush=True)

    def advance_to(self, n: int, note: str = "") -> None:
        """``n`` steps are done so far (nothing happens unless that is more than before)."""
        if n > self.n:
            self.step(note, n - self.n)

    def close(self) -> None:
        """Finish the bar (a no-op for plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
