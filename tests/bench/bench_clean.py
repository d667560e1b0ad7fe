"""Cleaning benchmark: images per second through image checks + near-duplicate hashing (issue 3, item 4).

Run: ``.venv/bin/python tests/bench/bench_clean.py [--n 2000] [--data DIR] [--partition-rows 200]``

Data: ``--n`` photo-like JPEGs (default 2,000; seeded, so the same every run) of 640-2000 px a side, aspect
ratios 1:1 to 16:9 both ways, JPEG quality 75-95 with 4:2:0 chroma, about 1.8 bits per pixel (web photos are
1-3): a muted colour field, filled shapes with edges, three octaves of textured noise and sensor-like grain.
They are written once, with ``data.jsonl`` beside them, under ``--data`` (default
``$TMPDIR/vlcurate-bench-clean``; about 5 minutes on 2 cores) and reused while the generator version and
``--n`` match.

Compared, on the same files in the same run:
  naive     one process: ``Image.open(path).convert("RGB")`` (a full decode), then the same pHash function
            (``filters.dedup.phash64``) on the decoded image
  vlcurate  ``run_job`` with the ``image_check`` and ``dedup`` stages (defaults) on a local Ray started by
            this script with every core: read, check, hash, global dedup decision, shards, manifest,
            rejects. Timed from the ``run_job`` call to its return: first on the fresh Ray (worker processes
            still importing), with and without the Ray startup, then the same job again with warm workers.
It also prints how far the job's pHashes (reduced-scale decode) are from the baseline's (full decode).
This is a script, not a pytest test (the file name does not match test_*.py).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GENERATOR_VERSION = 1


def _octave(rng: np.random.Generator, w: int, h: int, cell: int, amp: float, chroma: float) -> np.ndarray:
    """Noise with features about ``cell`` px wide, mostly in luminance, as int16 around 0."""
    gh, gw = max(2, h // cell), max(2, w // cell)
    lum = rng.normal(0, 1, (gh, gw, 1))
    small = np.clip(128 + amp * (lum + chroma * rng.normal(0, 1, (gh, gw, 3))), 0, 255).astype(np.uint8)
    big = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.int16) - 128


def photo_like(seed: int) -> bytes:
    """One photo-like JPEG (see the module docstring), the same for the same seed."""
    rng = np.random.default_rng(seed)
    aspect = float(rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16]))
    long_side = int(rng.integers(640, 2001))
    w, h = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    w, h = min(2000, max(640, w)), min(2000, max(640, h))
    field = rng.uniform(20, 235, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    field = 0.5 * field + 0.5 * field.mean(axis=2, keepdims=True)
    im = Image.fromarray(field.astype(np.uint8), "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 16))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 20, w // 2)), y0 + int(rng.integers(h // 20, h // 2))
        colour = tuple(int(c) for c in rng.uniform(20, 235, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon(
                [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(5)], fill=colour
            )
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
    a = np.asarray(im, dtype=np.int16)
    a = a + _octave(rng, w, h, 48, 30, 0.3) + _octave(rng, w, h, 12, 14, 0.2) + _octave(rng, w, h, 3, 8, 0.1)
    grain = np.asarray(Image.effect_noise((w, h), float(rng.uniform(2, 5))), dtype=np.int16) - 128
    a = np.clip(a + grain[..., None], 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, "JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue()


def _write_one(args: tuple[Path, int]) -> int:
    path, seed = args
    data = photo_like(seed)
    path.write_bytes(data)
    return len(data)


def make_dataset(root: Path, n: int, workers: int) -> Path:
    """``root/data.jsonl`` naming ``root/img/NNNNN.jpg``; generated once, reused while it matches."""
    stamp = root / "dataset.json"
    want = {"generator": GENERATOR_VERSION, "n": n}
    jsonl = root / "data.jsonl"
    if stamp.is_file() and json.loads(stamp.read_text()) == want and jsonl.is_file():
        return jsonl
    shutil.rmtree(root, ignore_errors=True)
    (root / "img").mkdir(parents=True)
    t = time.perf_counter()
    jobs = [(root / "img" / f"{i:05d}.jpg", i) for i in range(n)]
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_write_one, jobs, chunksize=16))
    lines = [json.dumps({"image": f"img/{i:05d}.jpg", "caption": f"generated photo {i}"}) for i in range(n)]
    jsonl.write_text("\n".join(lines) + "\n")
    stamp.write_text(json.dumps(want))
    print(f"generated {n} JPEGs ({total / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s under {root}")
    return jsonl


def naive(paths: list[Path]) -> tuple[float, list[int]]:
    """The baseline: open, convert to RGB (a full decode), pHash; one process. Returns (seconds, hashes)."""
    from filters.dedup import phash64

    t = time.perf_counter()
    hashes = []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        hashes.append(phash64(rgb))
    return time.perf_counter() - t, hashes


def start_ray(cpus: int) -> float:
    """Local Ray with every core, as `vlcurate run` starts it; returns the seconds it took."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    t = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    seconds = time.perf_counter() - t
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return seconds


def run_vlcurate(jsonl: Path, out: Path, partition_rows: int) -> tuple[float, dict]:
    """``run_job`` with image_check + dedup (defaults) on the running Ray; returns (seconds, stats)."""
    from pipeline.recipe import parse_recipe
    from pipeline.runner import run_job

    raw = {
        "input": {"path": str(jsonl), "format": "jsonl", "partition_rows": partition_rows},
        "stages": {"image_check": {}, "dedup": {}},
    }
    recipe = parse_recipe(raw)
    t = time.perf_counter()
    result = run_job(recipe, str(out), log=lambda m: None)
    return time.perf_counter() - t, result.stats


def hash_agreement(out: Path, naive_hashes: list[int]) -> tuple[float, int]:
    """Mean and largest Hamming distance between the job's pHashes (reduced-scale decode) and the
    baseline's (full decode), matched by input line."""
    import pyarrow.parquet as pq

    from filters.dedup import hamming

    manifest = pq.read_table(out / "manifest.parquet", columns=["source", "phash"]).to_pylist()
    dist = [hamming(r["phash"], naive_hashes[int(r["source"].rsplit(":", 1)[1]) - 1]) for r in manifest]
    return sum(dist) / max(1, len(dist)), max(dist, default=0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of JPEGs (default 2000)")
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vlcurate-bench-clean",
        help="where the generated JPEGs are cached",
    )
    ap.add_argument(
        "--partition-rows",
        type=int,
        default=200,
        help="rows per partition (default 200: 10 partitions for 2,000 images, 5 per core)",
    )
    args = ap.parse_args(argv)
    cpus = os.cpu_count() or 1
    jsonl = make_dataset(args.data, args.n, cpus)
    paths = [args.data / "img" / f"{i:05d}.jpg" for i in range(args.n)]
    sizes = [Image.open(p).size for p in paths]
    pixels = sum(w * h for w, h in sizes)
    nbytes = sum(p.stat().st_size for p in paths)
    n = len(paths)
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {cpus} CPU(s), "
        f"Python {platform.python_version()}, Pillow {Image.__version__}"
    )
    print(
        f"data: {n} JPEGs, {min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px, "
        f"{pixels / n / 1e6:.2f} MP and {nbytes / n / 1024:.0f} KiB on average ({8 * nbytes / pixels:.2f} "
        f"bits/pixel), {nbytes / 2**20:.0f} MiB in all"
    )

    naive_s, naive_hashes = naive(paths)
    naive_rate = n / naive_s
    print(
        f"{'naive baseline, 1 process (open, RGB, full decode, pHash):':58s} {naive_s:6.2f} s "
        f"{naive_rate:6.1f} images/s"
    )
    startup_s = start_ray(cpus)
    import ray

    try:
        with tempfile.TemporaryDirectory(prefix="bench-clean-") as tmp:
            cold_s, stats = run_vlcurate(jsonl, Path(tmp) / "cold", args.partition_rows)
            warm_s, _ = run_vlcurate(jsonl, Path(tmp) / "warm", args.partition_rows)
            mean_bits, max_bits = hash_agreement(Path(tmp) / "cold", naive_hashes)
    finally:
        ray.shutdown()
    figures = [
        ("vlcurate job on a fresh local Ray (Ray startup excluded)", cold_s),
        (f"  the same with Ray startup ({startup_s:.1f} s)", cold_s + startup_s),
        ("  the same job again, workers warm", warm_s),
    ]
    for label, seconds in figures:
        rate = n / seconds
        print(f"{label + ':':58s} {seconds:6.2f} s {rate:6.1f} images/s  {rate / naive_rate:.2f}x baseline")
    st = stats["stages"]
    work = {k: v.get("seconds", 0.0) for k, v in st.items()}
    print(
        f"  {args.partition_rows} rows a partition, {stats['partitions']} partitions, {cpus} CPUs; "
        f"kept {stats['kept']}, rejected {stats['rejected']}; seconds inside the stages, summed over "
        f"workers: " + ", ".join(f"{k} {v:.1f}" for k, v in work.items())
    )
    print(
        f"  pHash of the job vs the baseline's full-decode pHash: {mean_bits:.2f} bits apart on average, "
        f"{max_bits} at most"
    )


if __name__ == "__main__":
    main()
