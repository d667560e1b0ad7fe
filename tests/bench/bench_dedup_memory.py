"""Memory and time of the dedup stage's global decision over many rows (issue 16: "dedup over 10 M rows fits
in a few GB"), on synthetic hashes: the decision is the one step that holds every row's id and scores on
the driver, so its peak is the job's memory floor per million rows.

Each size runs in its own process (peak RSS from the kernel's ru_maxrss, so sizes do not share a peak):
N rows with 32-hex ids, random 64-bit pHashes with 1% near copies (3 bits flipped) and 1% exact copies
(same SHA-256 and pHash), the columns the image check leaves (width, height). Printed: seconds to build the
table, seconds of `Dedup.decide_global`, peak RSS, and the peak per million rows.

    .venv/bin/python tests/bench/bench_dedup_memory.py [--sizes 100000,1000000,10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def one(n: int) -> dict:
    import numpy as np

    from filters.dedup import Dedup

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    phash = rng.integers(-(1 << 63), (1 << 63) - 1, size=n, dtype=np.int64)
    copies = rng.choice(n, size=n // 50, replace=False)  # 2% copies of another row: half near, half exact
    near, exact = copies[: n // 100], copies[n // 100:]
    sources = rng.integers(0, n, size=len(copies))
    flips = np.zeros(len(near), dtype=np.uint64)
    for _ in range(3):
        flips |= np.left_shift(np.uint64(1), rng.integers(0, 64, size=len(near)).astype(np.uint64))
    phash[near] = (phash[sources[: len(near)]].view(np.uint64) ^ flips).view(np.int64)
    phash[exact] = phash[sources[len(near):]]
    sha_of = np.arange(n)
    sha_of[exact] = sources[len(near):]
    table = {
        "id": [f"{i:032x}" for i in range(n)],
        "phash": phash.tolist(),
        "sha256": [f"{int(s):064x}" for s in sha_of],
        "width": [640] * n,
        "height": [480] * n,
    }
    t1 = time.perf_counter()
    out = Dedup(Dedup.Params()).decide_global(table)
    t2 = time.perf_counter()
    dropped = sum(r is not None for r in out["drop_reason"])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": n, "build_s": round(t1 - t0, 1), "decide_s": round(t2 - t1, 1), "dropped": dropped,
            "peak_mib": round(peak_mib), "mib_per_million": round(peak_mib / (n / 1e6))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}")
    print("| rows | table build s | decide_global s | dropped | peak RSS MiB | MiB per million rows |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        got = json.loads(subprocess.run([sys.executable, __file__, "--one", str(n)], check=True,
                                        capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"| {got['rows']:,} | {got['build_s']} | {got['decide_s']} | {got['dropped']:,} | "
              f"{got['peak_mib']:,} | {got['mib_per_million']:,} |", flush=True)


if __name__ == "__main__":
    main()
