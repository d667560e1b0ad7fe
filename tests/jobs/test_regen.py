"""`vlcurate regen-sft`: a finished job rerun with another CLIP cut takes its scores instead of the model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from model.clip import build_tiny_clip
from pipeline.recipe import parse_recipe
from pipeline.runner import run_job
from tests import media

pytestmark = pytest.mark.slow


def scored(out: Path) -> dict[str, float]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist() + pq.read_table(out / "rejects.parquet").to_pylist()
    return {r["id"]: r["clip_score"] for r in rows if r.get("clip_score") is not None}


def top(scores: dict[str, float], fraction: float) -> set[str]:
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return set(order[: round(fraction * len(scores))])


def test_regen_reuses_clip_scores_without_the_model(ray_local, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    lines = []
    for k in range(12):
        (tmp_path / "img" / f"{k}.jpg").write_bytes(media.jpeg(160 + 8 * k, 120, seed=k))
        lines.append(json.dumps({"image": f"img/{k}.jpg", "caption": f"photo number {k} of a gradient"}))
    lines.append(json.dumps({"image": "img/missing.jpg", "caption": "gone"}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    arch, ckpt = build_tiny_clip(tmp_path / "clip.pt")
    raw = {"input": {"path": str(tmp_path / "d.jsonl"), "partition_rows": 5},
           "stages": {"image_check": {}, "clip_score": {"arch": arch, "checkpoint": str(ckpt),
                                                         "keep_top_fraction": 0.5}}}
    first = tmp_path / "first"
    run_job(parse_recipe(raw), str(first), log=lambda m: None)
    scores = scored(first)
    assert len(scores) == 12
    assert {r["id"] for r in pq.read_table(first / "manifest.parquet").to_pylist()} == top(scores, 0.5)

    ckpt.rename(tmp_path / "elsewhere.pt")  # the model cannot be loaded any more
    second = tmp_path / "second"
    assert main(["regen-sft", str(first), "-o", str(second), "--set", "stages.clip_score.keep_top_fraction=0.25"]) == 0
    assert "reusing scores" in capsys.readouterr().out
    assert scored(second) == scores
    kept = {r["id"] for r in pq.read_table(second / "manifest.parquet").to_pylist()}
    assert kept == top(scores, 0.25) and len(kept) == 3
    stats = json.loads((second / "stats.json").read_text())
    assert stats["stages"]["clip_score"]["scores_reused"] == 12
    assert stats["records_in"] == 13

    # a scoring parameter changed: the scores cannot be reused and the model is needed again
    assert main(["regen-sft", str(first), "-o", str(tmp_path / "third"), "--set",
                 "stages.clip_score.arch=ViT-B-32-quickgelu"]) == 2
    assert "stages.clip_score.checkpoint: file not found" in capsys.readouterr().err


def test_regen_of_a_formatted_job_reuses_scores_by_record(ray_local, tmp_path, capsys):
    """A format section replaces records by samples with new ids after the model stage: the scores are read
    from the step that computed them, so regen-sft still loads no model."""
    (tmp_path / "img").mkdir()
    lines = []
    for k in range(6):
        (tmp_path / "img" / f"{k}.jpg").write_bytes(media.jpeg(160 + 8 * k, 120, seed=k))
        lines.append(json.dumps({"image": f"img/{k}.jpg", "caption": f"a gradient picture number {k}"}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    arch, ckpt = build_tiny_clip(tmp_path / "clip.pt")
    raw = {"input": {"path": str(tmp_path / "d.jsonl"), "partition_rows": 3},
           "stages": {"clip_score": {"arch": arch, "checkpoint": str(ckpt), "keep_top_fraction": 0.5}},
           "format": {"builder": "caption_sft"}}
    first = tmp_path / "first"
    run_job(parse_recipe(raw), str(first), log=lambda m: None)
    assert pq.read_table(first / "manifest.parquet").num_rows == 3
    ckpt.rename(tmp_path / "elsewhere.pt")
    second = tmp_path / "second"
    assert main(["regen-sft", str(first), "-o", str(second), "--set",
                 "stages.clip_score.keep_top_fraction=0.34"]) == 0
    assert "reusing scores" in capsys.readouterr().out
    stats = json.loads((second / "stats.json").read_text())
    assert stats["stages"]["clip_score"]["scores_reused"] == 6
    assert pq.read_table(second / "manifest.parquet").num_rows == 2
