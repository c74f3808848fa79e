"""Progress of an iterative loop on stderr: a tqdm bar on a terminal, lines in a log.

A bar redrawn in place is right on a terminal; written to a file (a batch job's log, CI)
every redraw becomes a frame of text. ``LineProgress`` writes one line per few percent
instead. Both end honestly: ``finish`` sets the total to the iterations that ran when
the loop stopped early, and shows the final value (the one the caller's summary prints).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: Non-terminal output: one line each time the loop passes another this many percent.
LINE_STEP_PERCENT = 5


class LineProgress:
    """A tqdm-like progress report for a non-terminal stream: one line per
    ``LINE_STEP_PERCENT`` of ``total``, and a last line from ``close``.

    Parameters
    ----------
    total : int
        Iterations expected at most (``max_iter``).
    desc : str
        What runs (``"nmf k=10"``), the start of every line.
    file : text stream, optional
        Where the lines go (default: ``sys.stderr`` when the bar is created).
    """

    def __init__(self, total: int, desc: str, file: TextIO | None = None) -> None:
        self.total = int(total)
        self.n = 0
        self.desc = desc
        self.postfix = ""
        self.file = file if file is not None else sys.stderr
        self._next_percent = LINE_STEP_PERCENT
        self._t0 = time.perf_counter()
        self._closed = False
        self.ended_early = False

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """The value shown after the count (tqdm's name)."""
        self.postfix = s

    def update(self, n: int = 1) -> None:
        """Count ``n`` more iterations; write a line when another step of percent is passed."""
        self.n += int(n)
        if self.total <= 0:
            return
        percent = 100 * self.n / self.total
        if percent >= self._next_percent and self.n < self.total:
            self._write()
            while self._next_percent <= percent:
                self._next_percent += LINE_STEP_PERCENT

    def refresh(self) -> None:
        """Nothing to redraw: lines are written as the count passes each step."""

    def close(self) -> None:
        """Write the last line (the count, the final value, the time) once."""
        if not self._closed:
            self._closed = True
            self._write()

    def _write(self) -> None:
        percent = 100 * self.n / self.total if self.total > 0 else 100.0
        early = " (stopped early: converged)" if self.ended_early else ""
        tail = f", {self.postfix}" if self.postfix else ""
        seconds = time.perf_counter() - self._t0
        self.file.write(
            f"{self.desc}: {self.n}/{self.total} it ({percent:.0f}%){early}{tail}, {seconds:.1f}s\n"
        )
        self.file.flush()


def progress_bar(total: int, desc: str, file: TextIO | None = None) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``LineProgress``.

    The tqdm bar stays on screen when closed (``leave=True``), so the last thing it shows
    is the final count and value.
    """
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not (isatty is not None and isatty()):
        return LineProgress(total, desc, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", leave=True, file=stream)


def finish(bar: Any, done: int, postfix: str | None) -> None:
    """End ``bar`` honestly: its total becomes ``done`` when the loop stopped before the
    planned total, and it shows ``postfix`` (the final value of the kept run)."""
    total = getattr(bar, "total", None)
    if isinstance(total, int | float) and done < total:
        bar.total = done
        if isinstance(bar, LineProgress):
            bar.ended_early = True
    if postfix is not None:
        bar.set_postfix_str(postfix, refresh=False)
    refresh = getattr(bar, "refresh", None)
    if refresh is not None:
        refresh()
