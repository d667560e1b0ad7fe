"""Memory and time of the dedup stage's global decision over many rows (issue 16: "dedup over 10 M rows fits
in a few GB"), on synthetic hashes: the decision is the one step that holds every row's id and scores on
the driver, so its peak is the job's memory floor per million rows.

Each size runs in its own process (peak RSS from the kernel's ru_maxrss, so sizes do not share a peak):
N rows with 32-hex ids and 64-hex SHA-256s, random 64-bit pHashes with 1% near copies (3 bits flipped) and
1% exact copies (same SHA-256 and pHash), the columns the image check leaves (width, height). The columns are
built as pyarrow arrays and passed as the runner passes them to a stage with ``arrow_columns`` (a
ChunkedArray per column), so no Python object per row exists. Printed: seconds to build the table, its RSS,
seconds of ``Dedup.decide_global``, the passes of its search, peak RSS and the peak per million rows.

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

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from filters.dedup import Dedup, _mix64, search_plan  # noqa: E402  (the repository root, put on the path)

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_column(words: list[np.ndarray]) -> pa.StringArray:
    """A string array of ``16 * len(words)`` hex digits per row, the row's uint64 words in order."""
    n, width = len(words[0]), 16 * len(words)
    chars = np.empty((n, width), dtype=np.uint8)
    for w, word in enumerate(words):
        for j in range(16):
            chars[:, 16 * w + j] = HEX[(word >> np.uint64(60 - 4 * j)) & np.uint64(15)]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32 if n * width < 2**31 else np.int64)
    kind = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def mix(x: np.ndarray, salt: int) -> np.ndarray:
    """64 pseudo-random bits per value of ``x`` (splitmix64 of ``x + salt``): a stand-in for SHA-256 words."""
    return _mix64(x.astype(np.uint64) + np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(n: int) -> dict:
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
    sha_of = np.arange(n, dtype=np.uint64)
    sha_of[exact] = sources[len(near):]
    table = pa.table({
        "id": hex_column([np.zeros(n, dtype=np.uint64), np.arange(n, dtype=np.uint64)]),
        "phash": phash,
        "sha256": hex_column([mix(sha_of, k) for k in range(4)]),
        "width": np.full(n, 640, dtype=np.int64),
        "height": np.full(n, 480, dtype=np.int64),
    })
    del phash, sha_of, copies, near, exact, sources, flips
    table_mib = rss_mib()
    t1 = time.perf_counter()
    out = Dedup(Dedup.Params()).decide_global({k: table[k] for k in table.column_names})
    t2 = time.perf_counter()
    dropped = len(out["drop_reason"]) - out["drop_reason"].null_count
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": n, "build_s": round(t1 - t0, 1), "table_mib": round(table_mib),
            "decide_s": round(t2 - t1, 1), "passes": len(search_plan(Dedup.Params().max_hamming, n)),
            "dropped": dropped, "peak_mib": round(peak_mib), "mib_per_million": round(peak_mib / (n / 1e6))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"python {platform.python_version()}, numpy {np.__version__}, pyarrow {pa.__version__}")
    print("| rows | table build s | table RSS MiB | decide_global s | passes | dropped | peak RSS MiB "
          "| MiB per million rows |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        got = json.loads(subprocess.run([sys.executable, __file__, "--one", str(n)], check=True,
                                        capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"| {got['rows']:,} | {got['build_s']} | {got['table_mib']:,} | {got['decide_s']} | "
              f"{got['passes']} | {got['dropped']:,} | {got['peak_mib']:,} | {got['mib_per_million']:,} |",
              flush=True)


if __name__ == "__main__":
    main()
