"""Interleaved image–text documents (OBELICS layout) as an input kind: the reader's rows and drop reasons,
per-image checks, the `interleaved` builder's tokens against the Hugging Face processor, and packing (in a mix
and in a job) with M-RoPE position ids checked against the SPEC's token-by-token reference.
Data: tests/data/interleaved (see its SOURCE.txt)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from filters.image import ImageCheck, ImageCheckParams
from formatters.chatml import ENDOFTEXT, IMAGE_BLOCK
from pipeline.format_stage import Format
from pipeline.mix import parse_mix, run_mix
from pipeline.readers import iter_rows
from pipeline.recipe import FormatSpec, InputSpec
from tests.formatters.test_rope import _reference
from tests.pipeline.test_mix import pack_members, write_job, write_jsonl

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data" / "interleaved"
DOCS = [json.loads(line) for line in (DATA / "docs.jsonl").read_text().splitlines()]
VISION = (151652, 151653, 151655)  # <|vision_start|>, <|vision_end|>, <|image_pad|>


def read(path: Path = DATA / "docs.jsonl", **options) -> list[dict]:
    return list(iter_rows(InputSpec(path=str(path), format="interleaved", options=options)))


def checked(rows: list[dict]) -> list[dict]:
    """The rows through the image check stage (every image of a document), rejects marked."""
    stage = ImageCheck(ImageCheckParams())
    batch = stage.score({"images": [r["images"] for r in rows], "meta": [r["meta"] for r in rows]})
    for row, reason, images, meta in zip(rows, stage.decide(batch), batch["images"], batch["meta"], strict=True):
        row["images"], row["meta"] = images, meta
        if reason and not row["drop_reason"]:
            row["drop_stage"], row["drop_reason"] = "image_check", reason
    return rows


def test_reader_keeps_reading_order_and_rejects_with_reasons(tmp_path):
    rows = checked(read())
    assert [r["drop_reason"] for r in rows] == [None, None, None, "truncated", "interleaved_misaligned",
                                                "missing_file", "interleaved_misaligned"]
    assert rows[3]["meta"]["image_error"].startswith("image 1: ")  # the document's second image is the cut one
    assert "2 texts but 3 images" in rows[4]["meta"]["error"] and "position 0: both" in rows[6]["meta"]["error"]
    assert "images[1]: 'images/missing.jpg'" in rows[5]["meta"]["error"]
    for row, doc in zip(rows[:3], DOCS[:3], strict=True):
        assert row["annotations"] == {"texts": doc["texts"]}
        paths = [p for p in doc["images"] if p]
        assert row["meta"]["image_paths"] == paths and row["meta"]["url"] == doc["url"]
        assert row["images"] == [(DATA / p).read_bytes() for p in paths]  # in reading order
        assert row["text"] == "\n\n".join(t for t in doc["texts"] if t)
    # images as bytes, other column names, and a path leaving the input root
    horse = (DATA / "images" / "horse.png").read_bytes()
    own = write_jsonl(tmp_path / "own.jsonl", [
        {"parts": ["Intro.", None], "pics": [None, {"bytes": list(horse)}]},
        {"parts": ["Escape.", None], "pics": [None, str(ROOT / "tests/data/mc/horse.png")]},
        {"parts": [None, None], "pics": [None, None]}])
    rows = read(own, texts_column="parts", images_column="pics")
    assert rows[0]["drop_reason"] is None and rows[0]["images"] == [horse]
    assert [r["drop_reason"] for r in rows[1:]] == ["path_outside_root", "interleaved_misaligned"]


def built(max_pixels: int = 1003520) -> tuple[Format, list[dict]]:
    fmt = Format(FormatSpec(builder="interleaved", max_pixels=max_pixels))
    fmt.check()
    rows = [r for r in checked(read()) if not r["drop_reason"]]
    return fmt, [child for r in rows for child in fmt.expand(r)]


def processor_text(texts: list) -> str:
    """The document as the processor is given it, written from docs.jsonl directly: texts as they are (a blank
    line between adjacent texts), one vision block per image, <|endoftext|>."""
    out, prev_text = "", False
    for t in texts:
        out += IMAGE_BLOCK if t is None else ("\n\n" if prev_text else "") + t
        prev_text = t is not None
    return out + ENDOFTEXT


@pytest.mark.parametrize("max_pixels", [1003520, 28 * 28 * 20])
def test_tokens_equal_the_processors(max_pixels):
    """Each document's input_ids (so n_tokens) equal a Qwen2_5_VLProcessor's on the built-in tokenizer for the
    same text and stored images; labels are every text token and <|endoftext|>, vision tokens -100."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from model.tokenizer import qwen_tokenizer

    tok = qwen_tokenizer()
    _, children = built(max_pixels)
    assert len(children) == 3 and [len(c["images"]) for c in children] == [2, 1, 3]
    for child, doc in zip(children, DOCS[:3], strict=True):
        assert not child.get("drop_reason")
        meta = child["meta"]
        assert meta["layout"] == "interleaved" and len(meta["image_grid_thw"]) == len(child["images"])
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(min_pixels=meta["min_pixels"], max_pixels=meta["max_pixels"]),
            tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
        images = [Image.open(io.BytesIO(b)) for b in child["images"]]
        got = processor(text=[processor_text(doc["texts"])], images=images, return_tensors="np")
        ids = got["input_ids"][0].tolist()
        assert child["input_ids"] == ids and child["n_tokens"] == len(ids)
        assert got["image_grid_thw"].tolist() == meta["image_grid_thw"]
        labels = np.array(child["labels"])
        vision = np.isin(ids, VISION)
        assert (labels[vision] == -100).all() and (labels[~vision] == np.array(ids)[~vision]).all()
        assert ids.count(151652) == len(images) and ids[-1] == tok.convert_tokens_to_ids(ENDOFTEXT)
    # the images sit where the document puts them: the first document starts with text, the second with an image
    assert children[0]["input_ids"][0] != 151652 and children[1]["input_ids"][0] == 151652


def check_positions(packed: dict) -> int:
    """Every packed member's 4 position rows: row 0 the text positions, rows 1-3 M-RoPE as the SPEC's
    reference computes them from the member's own tokens and image grids. Returns the image blocks seen."""
    blocks = 0
    for ids, pos, grids in packed.values():
        assert np.array_equal(pos[0], np.arange(len(ids)))
        assert pos[1:].tolist() == _reference(ids.tolist(), [tuple(g) for g in grids], [], [], "qwen2.5-vl")
        blocks += len(grids)
    return blocks


def test_documents_pack_in_a_mix_with_correct_position_ids(tmp_path):
    """A job folder of formatted documents mixed with a text source and packed: each document keeps its tokens,
    and its packed position ids are M-RoPE over its images in reading order."""
    _, children = built()
    rows = [{**c, "id": f"{k:032x}", "parent_id": None, "source": f"docs.jsonl:{k + 1}", "text": None,
             "answer": None} for k, c in enumerate(children)]
    job = write_job(tmp_path / "interleaved", rows, input_name="obelics_sample")
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"Plain document {i}."} for i in range(8)])
    mix = parse_mix({"by": "samples", "pack": {"max_len": 256}, "sources": {
        "interleaved": {"path": str(job), "weight": 0.5},
        "text": {"path": str(docs), "kind": "text", "weight": 0.5, "max_repeat": 1}}})
    stats = run_mix(mix, str(tmp_path / "o"), log=lambda m: None)
    assert stats["sources"]["interleaved"]["samples"] == 3 and stats["pack"]["packs"] >= 2
    packed = pack_members(tmp_path / "o" / "packs")
    assert all(n <= 256 for n in packed.pop("_lengths"))
    by_key = {f"obelics_sample-{r['id']}": r for r in rows}
    assert by_key.keys() <= packed.keys()
    for key, row in by_key.items():
        ids, _, grids = packed[key]
        assert ids.tolist() == row["input_ids"] and grids == row["meta"]["image_grid_thw"]
    assert check_positions(packed) == 6  # 2 + 1 + 3 images


@pytest.mark.slow
def test_interleaved_recipe_job(ray_local, tmp_path):
    """jobs/recipes/interleaved.yaml end to end: 3 documents kept with 6 images, the 4 others rejected with
    their reasons, packs with correct position ids."""
    from pipeline.recipe import load_recipe
    from pipeline.runner import run_job

    out = tmp_path / "job"
    run_job(load_recipe(str(ROOT / "jobs/recipes/interleaved.yaml"),
                        [f"input.path={DATA / 'docs.jsonl'}", "output.report=false"]), str(out), log=lambda m: None)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(r["drop_reason"] for r in rejects) == ["interleaved_misaligned", "interleaved_misaligned",
                                                         "missing_file", "truncated"]
    assert pq.read_table(out / "manifest.parquet").num_rows == 3
    packed = pack_members(out / "packs")
    packed.pop("_lengths")
    assert len(packed) == 3 and check_positions(packed) == 6
