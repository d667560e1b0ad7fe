"""Progress of a running step on one updating terminal line: rows done / total, rate and ETA.

The runner feeds it each partition as Ray hands the partition's result back (``update``); ``close`` clears the
line before the step's own log line. It writes only to a terminal: when its stream is not one (a pipe, a file,
``ray job submit``'s log) it writes nothing at all.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any, TextIO

from pipeline.storage import WORK, Store

CLEAR = "\r\x1b[K"
INTERVAL_S = 0.2  # at most one redraw in this time (the last update of a step always draws)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def step_rows(store: Store, prev: str | None, todo: list[Any]) -> int | None:
    """The rows a step will see in these partitions: the rows the previous step wrote for them (their
    completion markers), or for the first step the records the plan assigns them (None when a partition's
    size is unknown before it is read, as for a whole tar)."""
    if prev is None:
        sizes = [p.stop - p.start for p in todo if p.stop is not None]
        return sum(sizes) if len(sizes) == len(todo) else None
    return sum(int(json.loads(store.read_bytes(WORK, prev, f"{p.name}.done"))["rows"]) for p in todo)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """One step's progress line. ``total_rows`` may be None (the input does not say how many records it holds):
    the ETA then comes from the share of partitions done."""

    def __init__(self, label: str, total_rows: int | None, total_parts: int, stream: TextIO | None = None,
                 interval_s: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = is_terminal(self.stream)
        self.label, self.total_rows, self.total_parts = label, total_rows, max(total_parts, 1)
        self.rows = self.parts = 0
        self.t0 = self.last = time.monotonic()
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        if self.on:
            self._write(force=True)

    def update(self, rows: int, parts: int = 1) -> None:
        self.rows += int(rows)
        self.parts += parts
        if self.on:
            self._write(force=self.parts >= self.total_parts)

    def line(self) -> str:
        """The text of the line now: ``LABEL: DONE / TOTAL rows (P/N partitions)  R rows/s  ETA M:SS``."""
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rows = f"{self.rows:,}" + (f" / {self.total_rows:,}" if self.total_rows is not None else "") + " rows"
        text = f"{self.label}: {rows} ({self.parts}/{self.total_parts} partitions)"
        if self.rows:
            text += f"  {self.rows / elapsed:,.1f} rows/s"
        if self.total_rows:
            left = (self.total_rows - self.rows) / self.total_rows
            done = self.rows / self.total_rows
        else:
            left, done = 1 - self.parts / self.total_parts, self.parts / self.total_parts
        if done > 0 and left > 0:
            text += f"  ETA {_duration(elapsed * left / done)}"
        return text

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        self.last = now
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write(CLEAR + self.line()[:width])
        self.stream.flush()

    def close(self) -> None:
        """Clear the line (the caller logs the step's result in its place)."""
        if self.on:
            self.stream.write(CLEAR)
            self.stream.flush()
