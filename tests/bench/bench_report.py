"""Report benchmark (issue 15, "What it must show" 3): the report of a 50k-row job is under 5 MB and renders in
under 2 s.

Run: ``.venv/bin/python tests/bench/bench_report.py [--rows 50000] [--candidates 4] [--runs 3]``

A job folder of ``--rows`` web pairs is written directly (tests/synthetic_job.py, seed 0: caption_text and
clip_score drops, the kept rows' images in 16 shards, 16 thumbnails per drop reason, and with ``--candidates K``
a chain-of-thought candidates.parquet of K candidates for each of rows/10 prompts). Printed:

- ``build``: seconds of ``jobs.report.build_report`` (reads the parquet files, the example shards and the
  thumbnails, writes report.html), median of ``--runs``;
- ``size``: report.html in bytes;
- ``render``: seconds headless Chromium takes to load, lay out and paint the page into a screenshot, minus the
  same for an empty page (Chromium's own start-up), median of ``--runs``; skipped when chromium is absent.

This is a script, not a pytest test (the file name does not match test_*.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.report import build_report  # noqa: E402
from tests.synthetic_job import write_job  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024
MAX_RENDER_S = 2.0


def screenshot_seconds(chromium: str, page: Path, png: Path) -> float:
    t = time.perf_counter()
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1300,4000", f"--screenshot={png}", page.as_uri()],
                   capture_output=True, timeout=300, check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--candidates", type=int, default=4, help="candidates per prompt (0: not a CoT job)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out = write_job(Path(tmp) / "job", args.rows, candidates=args.candidates)
        print(f"job folder: {args.rows:,} rows written in {time.perf_counter() - t:.1f} s")
        builds = []
        for _ in range(args.runs):
            t = time.perf_counter()
            page = Path(build_report(str(out)))
            builds.append(time.perf_counter() - t)
        size = page.stat().st_size
        print(f"build: {statistics.median(builds):.2f} s (median of {args.runs}: "
              f"{', '.join(f'{b:.2f}' for b in builds)})")
        print(f"size: {size:,} bytes ({size / 2**20:.2f} MiB; limit 5 MiB: {'ok' if size < MAX_BYTES else 'OVER'})")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        ok = size < MAX_BYTES
        if chromium is None:
            print("render: skipped (chromium not installed)")
        else:
            empty = Path(tmp) / "empty.html"
            empty.write_text("<!doctype html><title>empty</title>")
            base, full = [], []
            for _ in range(args.runs):
                base.append(screenshot_seconds(chromium, empty, Path(tmp) / "e.png"))
                full.append(screenshot_seconds(chromium, page, Path(tmp) / "r.png"))
            render = statistics.median(full) - statistics.median(base)
            ok = ok and render < MAX_RENDER_S
            print(f"render: {render:.2f} s in headless Chromium (page {statistics.median(full):.2f} s - empty page "
                  f"{statistics.median(base):.2f} s; limit {MAX_RENDER_S} s: "
                  f"{'ok' if render < MAX_RENDER_S else 'OVER'})")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
