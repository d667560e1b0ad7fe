"""Report benchmark (issue 15, "What it must show" 3): the report of a 50k-row job is under 5 MB and renders in
under 2 s.

Run: ``.venv/bin/python tests/bench/bench_report.py [--rows 50000] [--candidates 4] [--runs 3]``

A job folder of ``--rows`` web pairs is written directly (tests/synthetic_job.py, seed 0: caption_text and
clip_score drops, the kept rows' images in 16 shards, 16 thumbnails per drop reason, and with ``--candidates K``
a chain-of-thought candidates.parquet of K candidates for each of rows/10 prompts). Printed:

- ``build``: seconds of ``jobs.report.build_report`` (reads the parquet files, the example shards and the
  thumbnails, writes report.html), median of ``--runs``;
- ``size``: report.html in bytes;
- ``render``: in headless Chromium, the seconds from navigation start until the page is parsed and laid out
  (read from the page: a script at its end forces layout and records ``performance.now()``), and the seconds a
  screenshot of it takes beyond one of an empty page (Chromium's own start-up), medians of ``--runs``; skipped
  when chromium is absent. Both must be under 2 s.

This is a script, not a pytest test (the file name does not match test_*.py).
"""

from __future__ import annotations

import argparse
import os
import re
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


PROBE = ("<script>document.body.offsetHeight;"  # forces style and layout of the whole page
         "document.body.setAttribute('data-laid-out-ms', performance.now())</script>")


def layout_seconds(chromium: str, page: Path, probe: Path) -> float:
    """Seconds from navigation start until the page is parsed and laid out (images decoded into it), read from
    the page itself: a copy of it with a script at the end that forces layout and records performance.now()."""
    probe.write_text(page.read_text() + PROBE)
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=300, check=True)
    return float(re.search(r'data-laid-out-ms="([0-9.]+)"', proc.stdout).group(1)) / 1000


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
            base, full, layout = [], [], []
            for _ in range(args.runs):
                base.append(screenshot_seconds(chromium, empty, Path(tmp) / "e.png"))
                full.append(screenshot_seconds(chromium, page, Path(tmp) / "r.png"))
                layout.append(layout_seconds(chromium, page, Path(tmp) / "probe.html"))
            render = statistics.median(full) - statistics.median(base)
            ok = ok and max(render, statistics.median(layout)) < MAX_RENDER_S
            print(f"render: parsed and laid out {statistics.median(layout):.2f} s after navigation start (median; "
                  f"{', '.join(f'{x:.2f}' for x in layout)}); screenshot {render:.2f} s longer than an empty page's "
                  f"(page {statistics.median(full):.2f} s - empty {statistics.median(base):.2f} s); limit "
                  f"{MAX_RENDER_S} s: {'ok' if max(render, statistics.median(layout)) < MAX_RENDER_S else 'OVER'}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
