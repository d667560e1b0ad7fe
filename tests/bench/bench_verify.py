"""Verifier benchmark: math and code verifications per second (issue 12, item 4).

Run: ``.venv/bin/python tests/bench/bench_verify.py [--threads 1 2 4] [--math-n 400] [--code-n 164]``

Math: ``math_equal`` on labelled (gold, prediction) pairs built from the MATH-500 / GSM8K dev samples and
fixed cases (fractions, intervals, sets, expressions; equal and different), cycled to ``--math-n`` calls;
each thread has its own math-verify worker (started and warmed before the clock starts).
Code: ``verify_code`` on HumanEval's canonical solutions (prompt + solution + tests, one sandboxed run
each, ``--code-n`` of them). Reported per thread count: calls, seconds, calls per second.
This is a script, not a pytest test (the file name does not match test_*.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from filters.verifiers.code import verify_code  # noqa: E402
from filters.verifiers.math import math_equal  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
FIXED = [("1/2", "\\boxed{0.5}"), ("1,000", "Answer: 1000"), ("(1,2]", "\\boxed{(1, 2]}"),
         ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"), ("x^2+2x+1", "\\boxed{(x+1)^2}"), ("3", "\\boxed{4}"),
         ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"), ("18", "\\boxed{\\$18}")]


def math_pairs() -> list[tuple[str, str]]:
    pairs = list(FIXED)
    for line in (DATA / "qa" / "math500_first10.jsonl").open():
        row = json.loads(line)
        pairs += [(row["answer"], row["solution"]), (row["answer"], "\\boxed{0}")]
    for line in (DATA / "qa" / "gsm8k_test_first10.jsonl").open():
        row = json.loads(line)
        pairs += [(row["answer"], f"So the answer is \\boxed{{{row['answer'].split('####')[1].strip()}}}.")]
    return pairs


def timed(fn, jobs: list, threads: int) -> tuple[float, list]:
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        out = list(pool.map(fn, jobs))
    return time.monotonic() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--math-n", type=int, default=400)
    ap.add_argument("--code-n", type=int, default=164)
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")

    pairs = math_pairs()
    jobs = [pairs[i % len(pairs)] for i in range(args.math_n)]
    for threads in args.threads:
        timed(lambda p: math_equal(*p), pairs[:threads] * 2, threads)  # start and warm the workers
        seconds, verdicts = timed(lambda p: math_equal(*p, timeout_s=30), jobs, threads)
        print(f"math  threads={threads}: {len(jobs)} verifications in {seconds:.1f}s = "
              f"{len(jobs) / seconds:.0f}/s ({sum(verdicts)} equal)")

    with gzip.open(DATA / "code" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f][: args.code_n]
    for threads in args.threads:
        seconds, runs = timed(lambda r: verify_code(r["canonical_solution"], r["test"], r["entry_point"],
                                                    prompt=r["prompt"], timeout_s=60), rows, threads)
        print(f"code  threads={threads}: {len(rows)} sandboxed HumanEval runs in {seconds:.1f}s = "
              f"{len(rows) / seconds:.1f}/s ({sum(r.passed for r in runs)} passed)")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
