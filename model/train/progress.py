"""Progress with an ETA for a person: one line redrawn on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

Say = Callable[[str], None]

# On a terminal the line is redrawn at most this often: a tight loop must not spend its time
# writing to the terminal.
_REDRAW_S = 0.1


def duration(seconds: float) -> str:
    """7 -> '7s', 65 -> '1m05s', 3725 -> '1h02m'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int, elapsed: float, note: str = "") -> str:
    """'train: 3/10 (30%) 12s, ETA 28s, gru': the ETA assumes the remaining steps take as
    long as the finished ones did on average."""
    pct = 100 * done // total if total else 100
    eta = (f", ETA {duration(elapsed / done * (total - done))}" if 0 < done < total
           else "")
    return (f"{label}: {done}/{total} ({pct}%) {duration(elapsed)}{eta}"
            + (f", {note}" if note else ""))


class Progress:
    """Steps toward a total with elapsed time and an ETA, on `stream` (default stderr, so a
    command's stdout, e.g. its --json, stays clean).

    On a terminal one line is redrawn in place; elsewhere (a log file, CI) a plain line is
    written at most every `every_s` seconds and at the last step (after which the next
    update starts a new line, e.g. the next phase). Called with a message it
    is the plain progress callback the training code takes (`progress=`): the message gets a
    line of its own. Loops report their position through `step()`.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, tty: bool | None = None,
                 every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self._last_write = float("-inf")
        self._line = ""  # the bar now on screen (tty), cleared before a message

    def __call__(self, message: str) -> None:
        self._clear()
        self.stream.write(message + "\n")
        self._redraw()
        self.stream.flush()

    def update(self, done: int, total: int, note: str = "") -> None:
        """The loop is at step `done` of `total`."""
        now = self.clock()
        last = done >= total
        if now - self._last_write < (_REDRAW_S if self.tty else self.every_s) and not last:
            return
        self._last_write = now
        line = progress_line(self.label, done, total, now - self.started, note)
        if self.tty:
            self._line = line
            self._redraw()
            if last:  # the finished line stays; what follows starts on a line of its own
                self.close()
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._line:
            self.stream.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.tty and self._line:
            self.stream.write("\r\x1b[K" + self._line)

    def close(self) -> None:
        """End the redrawn line (the last state stays visible)."""
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def step(progress: Say | None, done: int, total: int, note: str = "") -> None:
    """Tell a Progress where a loop is; a plain message callback (or None) ignores it."""
    if isinstance(progress, Progress):
        progress.update(done, total, note)
