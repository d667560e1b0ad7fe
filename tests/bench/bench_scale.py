"""Scaling benchmark (issue 16): the web-pairs job against a plain 2-process loop, at several input sizes.

Run: ``nice -n 5 .venv/bin/python tests/bench/bench_scale.py [--sizes 2000,10000] [--repeats 1] [--data DIR]``
(``--sizes`` also takes 50000,200000; the issue's figures are medians of ``--repeats 3``).

Data: per size N, seeded synthetic web pairs in the layout ``jobs/recipes/web_pairs.yaml`` reads (``pairs.jsonl``
with ``image`` paths relative to it and a ``caption``; JPEGs of 76-160 px a side, quality 70-95, a few KiB):
5% exact duplicates (the same bytes in another file, another caption), 5% near duplicates (re-encoded at
another quality and resized by 85-95%), 2% broken (a distinct JPEG cut at 30-70% of its bytes); captions are
4-12 plain English words; ``--photo``: 480-1280 px a side instead (photo-sized, 30-150 KiB, where decoding
costs what it costs on web pairs). Written once under ``--data`` (default ``$TMPDIR/vlcurate-bench-scale``) and reused
while ``GENERATOR_VERSION`` and N match.

Compared at each size, interleaved (job, job on Ray, loop, ...), each as a subprocess:
  vlcurate  ``.venv/bin/vlcurate run jobs/recipes/web_pairs.yaml -o OUT --input pairs.jsonl
            --set stages.clip_score.enabled=false`` (image_check, caption_text, dedup), ``--executor auto``:
            up to 10,000 rows on local worker processes without Ray, above that a fresh local Ray with every
            core (Ray start included), Ray's temp folder redirected to a fresh folder (RAY_TMPDIR).
  vlcurate-ray  the same with ``--executor ray``: a fresh local Ray at every size.
  loop      this script with ``--loop``: a 2-process ``multiprocessing.Pool`` over the records: read the file,
            PIL full decode (``convert("RGB")``), the image_check limits of the recipe (file size, min side
            64 px, aspect ratio 3, decompression bomb, truncated/undecodable), the recipe's caption_text
            check (``filters.text.CaptionText.measure``/``reason``), SHA-256 of the bytes and the pHash of the
            decoded image (``filters.dedup.phash64``); then one global decision (``filters.dedup.Dedup
            .decide_global``: LSH candidates, union-find, largest image kept per group) and the kept samples
            written by the pool as webdataset tars (KEY.jpg, KEY.txt, KEY.json; 1,000 a tar) with ``tarfile``.
Figures per run: wall seconds from process start to exit; rows/s; kept samples; peak PSS of the whole process
tree (``/proc/PID/smaps_rollup`` of the process and every descendant, sampled every 0.2 s and summed, so pages
shared between processes, Ray's object store in /dev/shm included, count once); bytes written / input bytes.
Bytes written: for the loop, the size of its output folder; for vlcurate, the size of OUT after the job plus
what the job's end-of-job clean-up removed from ``OUT/_work`` (``stats.json`` -> ``work``:
``bytes_at_end_of_job - bytes_kept``) plus Ray's session folder (logs, spilled objects). Sizes are file sizes
(apparent bytes), input bytes are the images plus the jsonl. This is a script, not a pytest test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from filters.dedup import Dedup, phash64  # noqa: E402
from filters.text import CaptionText  # noqa: E402

GENERATOR_VERSION = 2
RECIPE = ROOT / "jobs" / "recipes" / "web_pairs.yaml"
MIN_SIDE, MAX_ASPECT, MAX_FILE_BYTES = 64, 3.0, 50_000_000  # the recipe's image_check (and its defaults)
CAPTION_PARAMS = {"min_words": 2, "languages": None}  # the recipe's caption_text
MAX_HAMMING = 8  # the recipe's dedup
WORDS = ("red blue green small large old new wooden stone bright dark happy quiet busy tall round "
         "dog cat house tree car bicycle street river mountain beach kitchen table chair window garden "
         "child woman man bird flower boat bridge road city field forest lamp book cup plate bottle "
         "standing sitting running lying near under beside behind above inside with on in at of").split()


# ---------------------------------------------------------------- data

SMALL, PHOTO = (76, 161), (480, 1281)  # picture sides in px: the default, and --photo


def _picture(rng: np.random.Generator, sides: tuple[int, int] = SMALL) -> Image.Image:
    """A small photo-like picture: a smooth random colour field, a few filled shapes, some grain. The field
    has 5-8 cells a side: with 2-4, distinct pictures fell within 8 pHash bits of each other (33 pairs in
    5,000), with 5-8 none did."""
    w, h = int(rng.integers(*sides)), int(rng.integers(*sides))
    field = rng.uniform(20, 235, (int(rng.integers(5, 9)), int(rng.integers(5, 9)), 3)).astype(np.uint8)
    im = Image.fromarray(field, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        box = (x0, y0, x0 + int(rng.integers(w // 6, w // 2)), y0 + int(rng.integers(h // 6, h // 2)))
        colour = tuple(int(c) for c in rng.uniform(20, 235, 3))
        (draw.ellipse if rng.integers(0, 2) else draw.rectangle)(box, fill=colour)
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + grain, 0, 255).astype(np.uint8), "RGB")


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _caption(rng: np.random.Generator) -> str:
    return "a " + " ".join(rng.choice(WORDS, int(rng.integers(4, 13))).tolist())


def _make_one(job: tuple[int, str, int, int, tuple[int, int]]) -> tuple[bytes, str]:
    """(JPEG bytes, caption) of row ``i``: kind 'u' a distinct picture, 'x' an exact copy of distinct picture
    ``src``, 'n' a near copy of it, 'b' a distinct picture cut short."""
    seed, kind, src, i, sides = job
    rng = np.random.default_rng([seed, i])
    caption = _caption(rng)
    if kind in "xn":
        rng_src = np.random.default_rng([seed, src])
        _caption(rng_src)
        im, quality = _picture(rng_src, sides), int(rng_src.integers(70, 96))
        if kind == "x":
            return _jpeg(im, quality), caption
        scale = float(rng.uniform(0.85, 0.95))
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        return _jpeg(im, 165 - quality), caption
    data = _jpeg(_picture(rng, sides), int(rng.integers(70, 96)))
    return (data[: int(len(data) * rng.uniform(0.3, 0.7))] if kind == "b" else data), caption


def plan_rows(n: int, seed: int = 0) -> list[tuple[int, str, int, int]]:
    """Per row (seed, kind, source row, row): 5% exact and 5% near copies of distinct rows, 2% broken."""
    rng = np.random.default_rng(seed)
    n_x, n_n, n_b = round(0.05 * n), round(0.05 * n), round(0.02 * n)
    n_u = n - n_x - n_n - n_b
    kinds = ["u"] * n_u + ["x"] * n_x + ["n"] * n_n + ["b"] * n_b
    order = rng.permutation(n)  # row order shuffled; copies point at distinct rows
    rows: list[tuple[int, str, int, int]] = [(seed, "u", -1, 0)] * n
    unique_rows = order[:n_u]
    sources = rng.choice(unique_rows, n_x + n_n, replace=False)
    for k, (kind, row) in enumerate(zip(kinds, order.tolist(), strict=True)):
        rows[row] = (seed, kind, int(sources[k - n_u]) if kind in "xn" else -1, row)
    return rows


def make_data(root: Path, n: int, photo: bool = False) -> Path:
    """The size-n data set under root (reused when complete); returns its jsonl. `photo`: pictures of
    480-1280 px a side (about 30-150 KiB) instead of 76-160 px (a few KiB)."""
    folder = root / f"n{n}-v{GENERATOR_VERSION}{'-photo' if photo else ''}"
    jsonl = folder / "pairs.jsonl"
    if jsonl.exists():
        return jsonl
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    rows = [(*r, PHOTO if photo else SMALL) for r in plan_rows(n)]
    lines = []
    with Pool(os.cpu_count()) as pool:
        for (_, kind, _, i, _), (data, caption) in zip(rows, pool.imap(_make_one, rows, chunksize=64), strict=True):
            rel = f"images/{i // 1000:04d}/{i:07d}.jpg"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
            lines.append(json.dumps({"key": f"{i:07d}", "image": rel, "caption": caption, "planted": kind}))
    tmp = jsonl.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(jsonl)
    print(f"generated {n} rows in {time.perf_counter() - t0:.1f} s under {folder}", flush=True)
    return jsonl


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# ---------------------------------------------------------------- the plain loop (run as `--loop JSONL OUT`)

_CAPTION: CaptionText | None = None


def _init_worker() -> None:
    global _CAPTION
    _CAPTION = CaptionText(CaptionText.Params(**CAPTION_PARAMS))


def _check(rec: tuple[str, str, str]) -> dict[str, Any]:
    key, path, caption = rec
    out: dict[str, Any] = {"id": key, "reason": None, "width": None, "height": None, "sha256": None,
                           "phash": None, "text": caption}
    try:
        data = Path(path).read_bytes()
    except OSError:
        return {**out, "reason": "missing_file"}
    if not data or len(data) > MAX_FILE_BYTES:
        return {**out, "reason": "file_size"}
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")  # the full decode; a truncated JPEG raises here
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return {**out, "reason": "truncated" if "truncated" in str(e) else "decode_error"}
    w, h = rgb.size
    if min(w, h) < MIN_SIDE:
        return {**out, "reason": "min_side"}
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return {**out, "reason": "aspect_ratio"}
    assert _CAPTION is not None
    text, cols = _CAPTION.measure(caption)
    reason = _CAPTION.reason(cols)
    if reason:
        return {**out, "reason": reason}
    return {**out, "width": w, "height": h, "text": text, "sha256": hashlib.sha256(data).hexdigest(),
            "phash": phash64(rgb)}


def _write_tar(job: tuple[str, list[tuple[str, str, dict[str, Any]]]]) -> int:
    target, samples = job
    with tarfile.open(target + ".tmp", "w") as tar:
        for key, path, meta in samples:
            for name, payload in ((f"{key}.jpg", Path(path).read_bytes()), (f"{key}.txt", meta["text"].encode()),
                                  (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    os.replace(target + ".tmp", target)
    return len(samples)


def plain_loop(jsonl: Path, out: Path, processes: int = 2, per_tar: int = 1000) -> dict[str, Any]:
    base = jsonl.parent
    recs = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    jobs = [(r["key"], str(base / r["image"]), r["caption"]) for r in recs]
    out.mkdir(parents=True, exist_ok=True)
    with Pool(processes, initializer=_init_worker) as pool:
        checked = pool.map(_check, jobs, chunksize=64)
        passed = [c for c in checked if c["reason"] is None]
        table = {k: [c[k] for c in passed] for k in ("id", "sha256", "phash", "width", "height", "text")}
        table["phash"] = [p - (1 << 64) if p >= 1 << 63 else p for p in table["phash"]]
        decided = Dedup(Dedup.Params(max_hamming=MAX_HAMMING)).decide_global(table) if passed else {"drop_reason": []}
        path_of = dict((k, p) for k, p, _ in jobs)
        kept = [(c["id"], path_of[c["id"]], {"text": c["text"], "sha256": c["sha256"], "width": c["width"],
                                            "height": c["height"]})
                for c, r in zip(passed, decided["drop_reason"], strict=True) if r is None]
        kept.sort(key=lambda s: s[0])
        tars = [(str(out / f"shard-{k // per_tar:05d}.tar"), kept[k:k + per_tar]) for k in range(0, len(kept), per_tar)]
        written = sum(pool.map(_write_tar, tars, chunksize=1))
    reasons = Counter(r for r in [c["reason"] for c in checked] + list(decided["drop_reason"]) if r)
    summary = {"kept": written, "reasons": dict(reasons)}
    (out / "summary.json").write_text(json.dumps(summary))
    return summary


# ---------------------------------------------------------------- measuring

def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run cmd; wall seconds, peak summed PSS of its process tree, peak process count, exit code."""
    peak = {"pss_kib": 0, "procs": 0}
    t0 = time.perf_counter()
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    pids = [proc.pid] + [c.pid for c in root.children(recursive=True)]
                except psutil.Error:
                    pids = [proc.pid]
                peak["pss_kib"] = max(peak["pss_kib"], sum(_pss_kib(p) for p in pids))
                peak["procs"] = max(peak["procs"], len(pids))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    return {"wall": wall, "pss_mib": peak["pss_kib"] / 1024, "procs": peak["procs"], "rc": rc}


def run_vlcurate(jsonl: Path, scratch: Path, num_cpus: int | None, executor: str = "auto") -> dict[str, Any]:
    out, raytmp = scratch / "vl_out", Path(tempfile.mkdtemp(prefix="vlcb-"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": str(raytmp), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(ROOT / ".venv" / "bin" / "vlcurate"), "run", str(RECIPE), "-o", str(out), "--input", str(jsonl),
           "--set", "stages.clip_score.enabled=false", "--executor", executor]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    res = run_measured(cmd, env, scratch / "vlcurate.log")
    if res["rc"] != 0:
        raise SystemExit(f"vlcurate failed (exit {res['rc']}); see {scratch / 'vlcurate.log'}")
    stats = json.loads((out / "stats.json").read_text())
    work = stats.get("work", {})
    cleaned = work.get("bytes_at_end_of_job", 0) - work.get("bytes_kept", 0)
    ray_bytes = tree_bytes(raytmp)
    stages = {k: round(v.get("seconds", 0), 1) for k, v in stats.get("stages", {}).items()}
    res.update(kept=stats["kept"], written=tree_bytes(out) + cleaned + ray_bytes, ray_bytes=ray_bytes,
               reasons=stats.get("rejected_by_reason", {}),
               note=f", job's own wall {stats.get('wall_seconds', 0):.1f} s, stage seconds {stages}, "
                    f"Ray temp {ray_bytes / 2**20:.1f} MiB, shards {tree_bytes(out / 'shards') / 2**20:.1f} MiB, "
                    f"_work at the end of the job {work.get('bytes_at_end_of_job', 0) / 2**20:.1f} MiB "
                    f"({work.get('bytes_kept', 0) / 2**20:.1f} MiB kept)")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(raytmp, ignore_errors=True)
    return res


def run_loop(jsonl: Path, scratch: Path) -> dict[str, Any]:
    out = scratch / "loop_out"
    res = run_measured([sys.executable, __file__, "--loop", str(jsonl), str(out)], dict(os.environ),
                       scratch / "loop.log")
    if res["rc"] != 0:
        raise SystemExit(f"plain loop failed (exit {res['rc']}); see {scratch / 'loop.log'}")
    summary = json.loads((out / "summary.json").read_text())
    res.update(kept=summary["kept"], written=tree_bytes(out) - (out / "summary.json").stat().st_size,
               reasons=summary["reasons"])
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,10000", help="comma-separated row counts (e.g. 2000,10000,50000,200000)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per tool and size; the median is shown")
    ap.add_argument("--photo", action="store_true", help="pictures of 480-1280 px a side (default 76-160 px)")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "vlcurate-bench-scale"))
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for vlcurate's local Ray (default: all)")
    ap.add_argument("--tools", default="vlcurate,vlcurate-ray,loop",
                    help="vlcurate (--executor auto: local processes up to 10,000 rows, else Ray), vlcurate-ray "
                         "(--executor ray: always a fresh local Ray), loop")
    ap.add_argument("--loop", nargs=2, metavar=("JSONL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        plain_loop(Path(args.loop[0]), Path(args.loop[1]))
        return
    import PIL
    import ray

    sizes = [int(s) for s in args.sizes.split(",")]
    data_root = Path(args.data)
    load_before = os.getloadavg()
    print(f"machine: {platform.platform()}, {os.cpu_count()} logical CPUs "
          f"({psutil.cpu_count(logical=False)} physical), {psutil.virtual_memory().total / 2**30:.1f} GiB RAM; "
          f"Python {platform.python_version()}, Pillow {PIL.__version__}, Ray {ray.__version__}; "
          f"nice {os.nice(0)}", flush=True)
    print(f"load average before (1/5/15 min): {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
          flush=True)
    rows = []
    for n in sizes:
        jsonl = make_data(data_root, n, args.photo)
        input_bytes = tree_bytes(jsonl.parent)
        planted = {k: 0 for k in "uxnb"}
        for line in jsonl.read_text().splitlines():
            planted[json.loads(line)["planted"]] += 1
        tools = args.tools.split(",")
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
        for r in range(args.repeats):
            for tool in tools:
                scratch = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-", dir=data_root))
                if tool == "loop":
                    res = run_loop(jsonl, scratch)
                else:
                    res = run_vlcurate(jsonl, scratch, args.num_cpus, "ray" if tool == "vlcurate-ray" else "auto")
                shutil.rmtree(scratch, ignore_errors=True)
                runs[tool].append(res)
                print(f"  n={n} run {r + 1} {tool:12s} {res['wall']:7.1f} s  kept {res['kept']}  "
                      f"peak PSS {res['pss_mib']:.0f} MiB ({res['procs']} processes)  written "
                      f"{res['written'] / 2**20:.1f} MiB  drops {res['reasons']}{res.get('note', '')}", flush=True)
        loop_wall = statistics.median(x["wall"] for x in runs["loop"]) if runs.get("loop") else float("nan")
        for tool, rs in runs.items():
            wall = statistics.median(x["wall"] for x in rs)
            rows.append((n, tool, wall, n / wall, rs[-1]["kept"], statistics.median(x["pss_mib"] for x in rs),
                         max(x["procs"] for x in rs), statistics.median(x["written"] for x in rs) / input_bytes,
                         loop_wall / wall, input_bytes))
        print(f"  n={n}: input {input_bytes / 2**20:.1f} MiB; planted {planted['x']} exact and {planted['n']} "
              f"near copies, {planted['b']} truncated: {planted['u']} distinct "
              f"images, the kept count when every copy and truncated file is caught", flush=True)
    load_after = os.getloadavg()
    print(f"\nload average after (1/5/15 min): {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"median of {args.repeats} interleaved run(s) per tool and size; wall time includes process (and Ray) "
          "start; bytes written: vlcurate = OUT after the job + OUT/_work removed by its clean-up + Ray's "
          "session folder; loop = its tars\n")
    print("| rows | tool | wall s | rows/s | kept | peak PSS MiB (processes) | bytes written / input | "
          "speed vs loop |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, tool, wall, rate, kept, pss, procs, ratio, speed, _ in rows:
        print(f"| {n:,} | {tool} | {wall:.1f} | {rate:.0f} | {kept:,} | {pss:.0f} ({procs}) | {ratio:.2f} | "
              f"{speed:.2f}x |")
    vl = {n: pss for n, tool, _, _, _, pss, *_ in rows if tool == "vlcurate"}
    if len(vl) > 1:
        small, big = min(vl), max(vl)
        print(f"\nvlcurate peak PSS at {big:,} rows / at {small:,} rows: {vl[big] / vl[small]:.2f}")


if __name__ == "__main__":
    main()
