"""Relevance scoring speed, in process (no Ray):

1. forward-only yes/no scoring vs generating a free-form answer and parsing yes/no from it, the same model
   (the tiny Qwen2.5-VL, or MODEL=DIR for a real one) on the same rows;
2. scoring in model calls of 16 items vs 1;
3. the prefetch overlap: a backend that stands in for a GPU by sleeping a fixed time per call, set equal to
   the CPU's preparation time of a call (decode + resize), the hardest case for overlap. Throughput is
   compared with the slower of (preparation alone, model alone): without overlap it would take their sum.

    .venv/bin/python tests/bench/bench_relevance.py [--rows 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from filters.relevance import Relevance  # noqa: E402
from model.backends import YesNo, load_backend, yes_no_item  # noqa: E402
from model.backends.base import answer_word  # noqa: E402
from model.tiny import build_tiny_qwen25vl  # noqa: E402
from tests.media import DEMO_IMAGES  # noqa: E402

MAX_PIXELS = 1003520


class Sleeping:
    """Stands in for a GPU: every call takes `sleep_s`, whatever it holds."""

    def __init__(self, model=None, min_pixels=3136, max_pixels=MAX_PIXELS, sleep_s=0.1):
        self.sleep_s = sleep_s

    def score_yes_no(self, items):
        time.sleep(self.sleep_s)
        return [YesNo(0.5, 1.0)] * len(items)


def photos(n: int) -> list[bytes]:
    """n JPEGs (quality 95) made from the bundled photos, upscaled to about 1.5 MP so decoding and resizing
    cost what web images do."""
    base = []
    for p in sorted(DEMO_IMAGES.iterdir()):
        im = Image.open(p).convert("RGB")
        scale = (1_500_000 / (im.width * im.height)) ** 0.5
        buf = io.BytesIO()
        im.resize((int(im.width * scale), int(im.height * scale))).save(buf, "JPEG", quality=95)
        base.append(buf.getvalue())
    return [base[i % len(base)] for i in range(n)]


def batch(images: list[bytes]) -> dict[str, list]:
    return {"id": [f"{i:016x}" for i in range(len(images))], "images": [[b] for b in images],
            "text": [f"a photo number {i} of something" for i in range(len(images))]}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_speed(model: str, device: str, rows: int) -> None:
    images = [Image.open(io.BytesIO(b)) for b in photos(rows)]
    items = [yes_no_item([im], f"a photo number {i} of something") for i, im in enumerate(images)]
    backend = load_backend("transformers", model, device=device, batch_size=16, max_pixels=200_704)
    backend.score_yes_no(items[:16])  # warm up
    t16 = timed(lambda: backend.score_yes_no(items))
    backend.batch_size = 1
    t1 = timed(lambda: backend.score_yes_no(items))
    backend.batch_size = 16
    answers = []
    tgen = timed(lambda: answers.extend(backend.generate(items, n=1, temperature=0, max_new_tokens=16)))
    parsed = sum(answer_word(c[0].text.split()[0] if c[0].text.split() else "") is not None for c in answers)
    print(f"rows: {rows}, images resized to <= 200,704 px, device {device}")
    print(f"  forward-only yes/no, batch 16:           {t16:7.2f} s  {rows / t16:7.1f} rows/s")
    print(f"  forward-only yes/no, batch 1:            {t1:7.2f} s  {rows / t1:7.1f} rows/s")
    print(f"  generate (16 new tokens) + parse, b. 16: {tgen:7.2f} s  {rows / tgen:7.1f} rows/s "
          f"({parsed}/{rows} answers parsed as yes/no)")


def overlap(rows: int) -> float:
    data = batch(photos(rows))
    model_batch = 4
    calls = -(-rows // model_batch)
    name = "tests.bench.bench_relevance:Sleeping"

    def stage(sleep_s: float, prefetch: bool) -> Relevance:
        s = Relevance(Relevance.Params(backend=name, options={"sleep_s": sleep_s}, batch_size=model_batch,
                                       max_pixels=MAX_PIXELS, prefetch=prefetch))
        s.setup()
        return s

    stage(0.0, False).score(batch(photos(model_batch)))  # warm up
    t_cpu = timed(lambda: stage(0.0, False).score(data))
    sleep_s = t_cpu / calls
    t_model = sleep_s * calls
    t_serial = timed(lambda: stage(sleep_s, False).score(data))
    t_overlap = timed(lambda: stage(sleep_s, True).score(data))
    ratio = max(t_cpu, t_model) / t_overlap
    print(f"overlap: {rows} rows of ~1.5 MP JPEG, {calls} model calls of {model_batch}, max_pixels {MAX_PIXELS:,}")
    print(f"  CPU preparation alone (decode + resize): {t_cpu:6.2f} s")
    print(f"  model alone (sleep {sleep_s * 1000:.0f} ms a call):        {t_model:6.2f} s")
    print(f"  without prefetch:                        {t_serial:6.2f} s  {rows / t_serial:6.1f} rows/s")
    print(f"  with prefetch:                           {t_overlap:6.2f} s  {rows / t_overlap:6.1f} rows/s  "
          f"= {ratio:.0%} of the slower of the two")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ratio = overlap(args.rows)
    model = os.environ.get("MODEL")
    with tempfile.TemporaryDirectory() as tmp:
        model_speed(model or build_tiny_qwen25vl(Path(tmp) / "tiny-qwen"), args.device, args.rows)
    if ratio < 0.85:
        sys.exit(f"overlap {ratio:.0%} is below 85%")


if __name__ == "__main__":
    main()
