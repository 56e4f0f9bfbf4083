"""How the CLI shows progress on stderr: rich bars on a terminal, plain lines otherwise.

When stderr is a file or a CI log, bars would be invisible (or garbage), so `PlainProgress`
prints a line when a stage starts, one every INTERVAL_S seconds with done/total, the rate and the
time left, and one when it ends: a long teacher run never looks like a hang.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from labelfix.progress import NullProgress

INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class PlainTask:
    def __init__(self, description: str, total: int | None, out: TextIO, interval: float, clock=time.monotonic):
        self.description, self.total, self.out, self.interval, self.clock = description, total, out, interval, clock
        self.done = 0
        self.start = self.last = clock()

    def line(self, text: str) -> None:
        self.out.write(f"labelfix: {self.description}: {text}\n")
        self.out.flush()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.line(self.status(now))

    def status(self, now: float) -> str:
        elapsed = now - self.start
        if not self.total:
            return f"{self.done} done, {_duration(elapsed)} elapsed"
        share = min(1.0, self.done / self.total)
        left = elapsed * (1 - share) / share if share > 0 else float("nan")
        eta = _duration(left) if share > 0 else "unknown"
        return f"{self.done}/{self.total} ({share:.0%}), {_duration(elapsed)} elapsed, about {eta} left"


class PlainProgress:
    """Progress as plain lines (stderr not a terminal)."""

    def __init__(self, out: TextIO | None = None, interval: float = INTERVAL_S, clock=time.monotonic):
        self.out, self.interval, self.clock = out or sys.stderr, interval, clock

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[PlainTask]:
        t = PlainTask(description, total, self.out, self.interval, self.clock)
        t.line("started" + (f" ({total} steps)" if total else ""))
        yield t
        t.line(f"done in {_duration(self.clock() - t.start)}")

    def log(self, message: str) -> None:
        self.out.write(f"labelfix: {message}\n")
        self.out.flush()


class RichProgress:
    """Progress bars on stderr (a terminal)."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextmanager
    def task(self, description: str, total):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as prog:
            tid = prog.add_task(description, total=total)

            class _T:
                def advance(self, n: int = 1):
                    prog.advance(tid, n)

            yield _T()

    def log(self, message: str) -> None:
        self.console.print(message)


def make_progress(enabled: bool = True, stream: TextIO | None = None):
    """Bars on a terminal, plain lines otherwise, nothing when not `enabled` (--quiet, --json)."""
    if not enabled:
        return NullProgress()
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return RichProgress()
    return PlainProgress(stream)
