"""A finished job folder written directly (no Ray): what `vlcurate report` reads, at any size, for the report's
tests and its benchmark (tests/bench/bench_report.py).

``write_job(folder, n)``: ``n`` web pairs through ``caption_text`` (``min_words: 3``) and ``clip_score``
(``min_clip_score: 0.2``): manifest.parquet, rejects.parquet, shards with the kept rows' images, the runner's
thumbnails of dropped rows (16 per reason), stats.json and job.json as a job writes them. ``candidates=K`` adds
a chain-of-thought candidates.parquet (K candidates per prompt); ``mix=True`` makes it a mix's folder instead
(pipeline.mix's manifest / rejects schemas and stats.json ``sources``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from formatters.draw import thumbnail
from pipeline import thumbs
from pipeline.mix import MANIFEST_SCHEMA, REJECTS_SCHEMA
from pipeline.tar import tar_bytes

MIN_CLIP = 0.2
MIN_WORDS = 3
SHARDS = 16
WORDS = "a photo of the red car parked near old stone house on a sunny day with people".split()


def photos(k: int = 24, seed: int = 0) -> list[bytes]:
    """Distinct small JPEGs (smooth colour gradients with noise: photo-like, many colours)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        base = rng.integers(0, 255, 3)
        yy, xx = np.mgrid[0:120, 0:160]
        img = (base + np.stack([xx, yy, xx + yy], -1) * rng.uniform(0.2, 0.8, 3) + rng.normal(0, 12, (120, 160, 3)))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def _candidates(n_prompts: int, per_prompt: int, rng: np.random.Generator) -> pa.Table:
    kinds = ["math", "vqa", "mc"]
    quality = [None] * 6 + ["truncated", "too_long", "repetition"]
    rows: dict[str, list[Any]] = {c: [] for c in ("id", "parent_id", "cot_kind", "cot_sample", "cot_correct",
                                                   "cot_verify_reason", "cot_quality_reason", "cot_verdict",
                                                   "cot_reason", "cot_selected", "drop_reason")}
    for p in range(n_prompts):
        kind = kinds[p % len(kinds)]
        for s in range(per_prompt):
            correct = bool(rng.random() < 0.5)
            q = quality[int(rng.integers(len(quality)))]
            reason = q or (None if correct else "wrong_answer")
            for col, v in (("id", f"c{p:06d}{s:02d}"), ("parent_id", f"p{p:06d}"), ("cot_kind", kind),
                           ("cot_sample", s), ("cot_correct", correct),
                           ("cot_verify_reason", None if correct else "wrong_answer"), ("cot_quality_reason", q),
                           ("cot_verdict", "fail" if reason else "pass"), ("cot_reason", reason),
                           ("cot_selected", False), ("drop_reason", reason)):
                rows[col].append(v)
    return pa.table(rows)


def write_job(folder: Path, n: int, seed: int = 0, candidates: int = 0, mix: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:016x}" for i in rng.permutation(n * 7 + 1)[:n]]
    words = rng.integers(1, 14, n)
    texts = [" ".join(WORDS[:w]) for w in words]
    clip = np.round(rng.normal(0.22, 0.04, n), 4)
    stage = np.where(words < MIN_WORDS, "caption_text", np.where(clip < MIN_CLIP, "clip_score", ""))
    kept = stage == ""
    pics = photos()
    shard_of = [f"shard-{i % SHARDS:05d}.tar" for i in range(n)]
    manifest = {"id": [], "key": [], "shard": [], "source": [], "text": [], "clip_score": [], "caption_words": [],
                "n_tokens": []}
    rejects = {"id": [], "source": [], "text": [], "drop_stage": [], "drop_reason": [], "meta": [],
               "clip_score": [], "caption_words": [], "sha256": []}
    by_shard: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
    dropped: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i, row_id in enumerate(ids):
        source = f"pairs.jsonl:{i + 1}"
        if kept[i]:
            for col, v in (("id", row_id), ("key", row_id), ("shard", shard_of[i]), ("source", source),
                           ("text", texts[i]), ("clip_score", float(clip[i])), ("caption_words", int(words[i])),
                           ("n_tokens", int(60 + 4 * words[i]))):
                manifest[col].append(v)
            by_shard.setdefault(shard_of[i], []).append(
                (row_id, {"0.jpg": pics[i % len(pics)], "json": json.dumps({"id": row_id}).encode()}))
            continue
        reason = "too_few_words" if stage[i] == "caption_text" else "clip_score_low"
        for col, v in (("id", row_id), ("source", source), ("text", texts[i]), ("drop_stage", str(stage[i])),
                       ("drop_reason", reason), ("meta", "{}"),
                       ("clip_score", None if stage[i] == "caption_text" else float(clip[i])),
                       ("caption_words", int(words[i])), ("sha256", f"{i:064x}")):
            rejects[col].append(v)
        dropped.setdefault((str(stage[i]), reason), []).append((thumbs.rank(row_id), row_id))
    (folder / "shards").mkdir(exist_ok=True)
    for shard, samples in by_shard.items():
        (folder / "shards" / shard).write_bytes(tar_bytes(sorted(samples)))
    small = [thumbnail(p, thumbs.PX) for p in photos(8, seed + 1)]
    t: dict[str, list[Any]] = {name: [] for name in thumbs.SCHEMA.names}
    for (st, reason), members in sorted(dropped.items()):
        for k, (r, row_id) in enumerate(sorted(members)[: thumbs.PER_REASON]):
            for col, v in zip(thumbs.SCHEMA.names, (st, reason, row_id, r, small[k % len(small)]), strict=True):
                t[col].append(v)
    (folder / "_work" / thumbs.FOLDER).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(t, schema=thumbs.SCHEMA), folder / "_work" / thumbs.FOLDER / "01-clip.00000.parquet")
    reasons = {f"{r}": len(m) for (_, r), m in dropped.items()}
    n_text = int((stage == "caption_text").sum())
    stats: dict[str, Any] = {
        "records_in": n, "kept": int(kept.sum()), "rejected": n - int(kept.sum()), "rejected_by_reason": reasons,
        "wall_seconds": 12.5, "partitions_resumed": 0,
        "stages": {"read": {"in": n, "kept": n, "dropped": {}, "seconds": 1.0},
                   "caption_text": {"in": n, "kept": n - n_text, "dropped": {"too_few_words": n_text},
                                    "seconds": 2.0},
                   "clip_score": {"in": n - n_text, "kept": int(kept.sum()),
                                  "dropped": {"clip_score_low": reasons.get("clip_score_low", 0)}, "seconds": 9.0}}}
    job = {"recipe": {"stages": {"caption_text": {"min_words": MIN_WORDS},
                                 "clip_score": {"min_clip_score": MIN_CLIP}}},
           "versions": {"vlcurate": "0", "ray": "x"}, "input_path": "pairs.jsonl", "partitions": 1}
    manifest_table, rejects_table = pa.table(manifest), pa.table(rejects)
    if mix:
        manifest_table = pa.Table.from_pylist(
            [{**r, "source_job": "ocr" if k % 3 else "pairs", "source_id": r["id"], "copy": 0}
             for k, r in enumerate(manifest_table.to_pylist())], schema=MANIFEST_SCHEMA)
        rejects_table = pa.Table.from_pylist(
            [{**r, "source_job": "pairs"} for r in rejects_table.to_pylist()], schema=REJECTS_SCHEMA)
        n_kept = manifest_table.num_rows
        n_ocr = sum(1 for k in range(n_kept) if k % 3)
        stats = {"by": "samples", "seed": 0, "total_asked": n_kept, "total": n_kept, "samples": n_kept,
                 "tokens": 1000 * n_kept, "rejected_by_reason": reasons, "warnings": ["source ocr: asked 70 but short"],
                 "sources": {
                     "ocr": {"path": "jobs/ocr_out", "kind": "job", "asked_share": 0.7, "asked": 0.7 * n_kept,
                             "achieved_share": n_ocr / n_kept, "samples": n_ocr, "tokens": 1000 * n_ocr,
                             "repeated_samples": 3, "available_samples": n_ocr, "rejected": 0},
                     "pairs": {"path": "jobs/pairs_out", "kind": "job", "asked_share": 0.3, "asked": 0.3 * n_kept,
                               "achieved_share": 1 - n_ocr / n_kept, "samples": n_kept - n_ocr,
                               "tokens": 1000 * (n_kept - n_ocr), "repeated_samples": 0,
                               "available_samples": n_kept - n_ocr, "rejected": rejects_table.num_rows}}}
        job = {"mix": {"sources": {}}, "versions": {"vlcurate": "0"}}
    pq.write_table(manifest_table, folder / "manifest.parquet")
    pq.write_table(rejects_table, folder / "rejects.parquet")
    if candidates:
        pq.write_table(_candidates(max(1, n // 10), candidates, rng), folder / "candidates.parquet")
    (folder / "stats.json").write_text(json.dumps(stats))
    (folder / "job.json").write_text(json.dumps(job))
    return folder
