"""A video job end to end: the shard holds qwen-vl-utils' frames for the file, the plan and the token count."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from formatters.tokens import tokenize_chat
from model.tiny import build_tiny_tokenizer
from pipeline.recipe import load_recipe
from pipeline.runner import run_job
from tests.media import qwen_vl_utils_video

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SINTEL = REPO / "tests/data/video/sintel_5s.mp4"


def qwen_vl_utils_frames(monkeypatch):
    import torch

    frames, meta, sample_fps = qwen_vl_utils_video(SINTEL, monkeypatch)
    return frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(), meta, sample_fps


def test_video_job_matches_qwen_vl_utils(ray_local, tmp_path, monkeypatch):
    pytest.importorskip("decord")
    tok = build_tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "out"
    sets = [f"input.path={SINTEL.parent / 'captions.jsonl'}", f"format.tokenizer={tok}"]
    recipe = load_recipe(str(REPO / "jobs/recipes/video.yaml"), sets)
    run_job(recipe, str(out), log=lambda m: None)
    [row] = pq.read_table(out / "manifest.parquet").to_pylist()
    files = {}
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            files.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    sample = json.loads(files[f"{row['key']}.json"])
    frames = [np.asarray(Image.open(io.BytesIO(files[f"{row['key']}.{k}.png"]))) for k in range(10)]
    assert f"{row['key']}.10.png" not in files

    expected, meta, sample_fps = qwen_vl_utils_frames(monkeypatch)
    assert len(frames) == len(expected) == 10
    for got, exp in zip(frames, expected, strict=True):
        assert got.shape == exp.shape
        assert int(np.abs(got.astype(np.int16) - exp.astype(np.int16)).max()) <= 1
    video = sample["meta"]["video"]
    assert video["frame_indices"] == meta["frames_indices"]
    assert video["sample_fps"] == pytest.approx(sample_fps)
    n, h, w = len(expected), expected.shape[1], expected.shape[2]
    assert video["grid_thw"] == [n // 2, h // 14, w // 14]
    assert video["second_per_grid_t"] == pytest.approx(2 / sample_fps)
    assert sample["meta"]["video_grid_thw"] == [video["grid_thw"]]
    video_tokens = (n // 2) * (h // 28) * (w // 28)
    from transformers import AutoTokenizer

    ids, _ = tokenize_chat(sample["messages"], AutoTokenizer.from_pretrained(tok), [], [video_tokens])
    assert row["n_tokens"] == len(ids)
    assert int((ids == 151656).sum()) == video_tokens == 2550
