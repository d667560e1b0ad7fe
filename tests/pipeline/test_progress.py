"""Progress while a job runs: one updating line per step (rows done / total, rate, ETA) on a terminal, nothing
when the output is not a terminal. The job tests run the demo job with stderr on a pseudo-terminal, then on a
pipe."""

from __future__ import annotations

import io
import os
import re
import sys
import threading

from pipeline import progress
from pipeline.progress import CLEAR, Progress
from pipeline.recipe import load_recipe
from pipeline.runner import run_job
from tests.media import REPO

DEMO = REPO / "jobs" / "recipes" / "demo.yaml"


class Pty:
    """A pseudo-terminal: ``tty`` is a text stream on its slave side (isatty() is true), ``text()`` what was
    written to it, read from the master side by a thread (so a full buffer never blocks the writer)."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.tty = os.fdopen(slave, "w", buffering=1)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # the slave side closed
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        self.tty.close()
        self.reader.join(timeout=10)
        os.close(self.master)
        return b"".join(self.chunks).decode()


def test_progress_line_on_a_terminal_shows_rows_rate_and_eta():
    pty = Pty()
    bar = Progress("[vlcurate] step 01-clip", 1000, 4, stream=pty.tty, interval_s=0)
    bar.update(250)
    bar.update(250)
    assert re.fullmatch(r"\[vlcurate\] step 01-clip: 500 / 1,000 rows \(2/4 partitions\)  [\d,.]+ rows/s  ETA 0:\d\d",
                        bar.line()), bar.line()
    bar.update(500, 2)
    bar.close()
    out = pty.text()
    assert out.count(CLEAR) >= 4 and out.endswith(CLEAR)  # one line rewritten in place, cleared at the end
    assert "1,000 / 1,000 rows (4/4 partitions)" in out and "\n" not in out.replace("\r\n", "")


def test_progress_writes_nothing_when_not_a_terminal():
    buf = io.StringIO()
    bar = Progress("[vlcurate] step 00-read", None, 3, stream=buf, interval_s=0)
    bar.update(4)
    assert "ETA" in bar.line()  # unknown row total: the ETA comes from the partitions done
    bar.update(4)
    bar.close()
    assert buf.getvalue() == ""


def run_demo(out, stderr, monkeypatch) -> list[str]:
    logs: list[str] = []
    monkeypatch.setattr(sys, "stderr", stderr)
    run_job(load_recipe(str(DEMO), [f"input.path={REPO / 'jobs/demo_data/captions.jsonl'}"]), str(out),
            log=logs.append)
    return logs


def test_a_job_under_a_pty_shows_progress_per_step(ray_local, tmp_path, monkeypatch):
    pty = Pty()
    monkeypatch.setattr(progress, "INTERVAL_S", 0)  # every partition draws (two may finish within 0.2 s)
    logs = run_demo(tmp_path / "out", pty.tty, monkeypatch)
    monkeypatch.undo()
    out = pty.text()
    steps = [m.group(1) for m in map(re.compile(r"step (\S+): done").search, logs) if m]
    assert steps
    for step in steps:
        assert f"[vlcurate] step {step}: 0" in out  # the line starts at zero ...
    # ... and the first step ends at the 11 records the plan gives its 3 partitions (4 + 4 + 3)
    assert re.search(rf"step {steps[0]}: [34] / 11 rows \(1/3 partitions\)", out), out
    assert f"step {steps[0]}: 11 / 11 rows (3/3 partitions)" in out, out
    assert "rows/s" in out and out.endswith(CLEAR)


def test_a_job_not_on_a_terminal_shows_no_progress(ray_local, tmp_path, monkeypatch):
    r, w = os.pipe()
    pipe = os.fdopen(w, "w")
    logs = run_demo(tmp_path / "out", pipe, monkeypatch)
    monkeypatch.undo()
    pipe.close()
    with os.fdopen(r) as f:
        written = f.read()
    assert any("done in" in m for m in logs)
    assert "rows/s" not in written and "\r" not in written and "partitions)" not in written
