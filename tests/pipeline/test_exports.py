"""Exports to LLaMA-Factory, ms-swift and the official Qwen fine-tuning format (pipeline/exports.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from formatters.builders import message_text
from model.tiny import build_tiny_tokenizer
from pipeline.exports import (
    TRAINERS,
    export,
    export_all,
    iter_shard_samples,
    to_llamafactory,
    to_qwen,
    to_swift,
)
from pipeline.format_stage import Format
from pipeline.recipe import FormatSpec, load_recipe
from pipeline.schema import make_id
from pipeline.storage import Store
from pipeline.writers import shard_tar
from tests import media

REPO = Path(__file__).resolve().parents[2]


def png(w: int, h: int, seed: int = 0) -> bytes:
    return media.encode(media.photo(w, h, seed), "PNG")


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    return media.encode(media.photo(w, h, seed), "JPEG", quality=90)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


ROWS = {
    "grounding": {"id": "g", "images": [png(640, 428)], "annotations": {"width": 640, "height": 428, "objects": [
        {"bbox": [146, 137, 615, 415], "category": "cat", "category_id": 17, "ann_id": 1, "iscrowd": 0},
        {"bbox": [10, 10, 100, 90], "category": "cup", "category_id": 47, "ann_id": 2, "iscrowd": 0},
        {"bbox": [200, 10, 300, 90], "category": "cup", "category_id": 47, "ann_id": 3, "iscrowd": 0}]},
        "meta": {}},
    "ocr": {"id": "o", "images": [jpeg(1280, 720)], "annotations": {"width": 1280, "height": 720, "texts": [
        {"quad": [377, 117, 463, 117, 465, 130, 378, 130], "text": "Genaxis Theatre", "ignore": False},
        {"quad": [374, 155, 409, 155, 409, 170, 374, 170], "text": "###", "ignore": True}]}, "meta": {}},
    "vqa": {"id": "v", "images": [jpeg(320, 240, 1), png(200, 300, 2)], "text": "Which is taller?",
            "answer": "the second", "meta": {}},
    "caption_pretrain": {"id": "p", "images": [png(224, 224)], "text": "A photo.", "meta": {}},
    "qa": {"id": "q", "images": [], "text": "1+1?", "answer": "2", "meta": {}},
    "video": {"id": "w", "images": [png(644, 364, i) for i in range(4)], "text": "A walk.", "meta": {"video": {
        "path": "v.mp4", "grid_thw": [2, 26, 46], "resized_width": 644, "resized_height": 364,
        "sample_fps": 2.0, "second_per_grid_t": 1.0}}},
}


def make_job(out: Path, tokenizer_dir: str, dialect: str = "qwen2.5-vl") -> list[dict]:
    """A job folder as the writers leave it (shards + manifest), built through the format stage."""
    rows = []
    for builder, row in ROWS.items():
        stage = Format(FormatSpec(builder=builder, tokenizer=tokenizer_dir, dialect=dialect,
                                  max_pixels=28 * 28 * 1280))
        children = stage.expand({**row, "source": builder})
        assert isinstance(children, list), (builder, children)
        for j, child in enumerate(children):
            rows.append({**row, **child, "parent_id": row["id"], "id": make_id(row["id"], builder, j)})
    rows.sort(key=lambda r: r["id"])
    store = Store(str(out))
    half = len(rows) // 2
    store.write_bytes(shard_tar(rows[:half], ["n_tokens"]), "shards", "shard-00000.tar")
    store.write_bytes(shard_tar(rows[half:], ["n_tokens"]), "shards", "shard-00001.tar")
    store.write_parquet(pa.table({"id": [r["id"] for r in rows], "n_tokens": [r["n_tokens"] for r in rows]}),
                        "manifest.parquet")
    return rows


@pytest.fixture(scope="module")
def job(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("exports") / "job"
    rows = make_job(out, tokenizer_dir)
    summaries = export_all(str(out), list(TRAINERS))
    return out, rows, summaries


def lines(out: Path, trainer: str) -> list[dict]:
    text = (out / "exports" / trainer / "data.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def media_paths(trainer: str, record: dict) -> list[str]:
    if trainer == "qwen":
        image = record.get("image", [])
        return [image] if isinstance(image, str) else list(image)
    return list(record.get("images", [])) + [p for v in record.get("videos", []) for p in v]


def test_shards_read_back_in_order(job) -> None:
    out, rows, _ = job
    got = list(iter_shard_samples(Store(str(out))))
    assert [k for k, _, _ in got] == [r["id"] for r in rows]
    for (key, doc, images), row in zip(got, rows, strict=True):
        assert doc["id"] == key and [d for _, d in images] == row["images"]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_each_export_parses_references_files_and_counts_match(job, trainer: str) -> None:
    out, rows, summaries = job
    manifest = pq.read_table(out / "manifest.parquet")
    records = lines(out, trainer)
    summary = json.loads((out / "exports" / trainer / "export.json").read_text())
    assert summary == summaries[trainer]
    skipped = sum(summary["skipped"].values())
    assert len(records) + skipped == manifest.num_rows == len(rows) and summary["samples"] == len(records)
    assert skipped == (1 if trainer == "qwen" else 0)  # the official loader takes a video as one file only
    folder = out / "exports" / trainer
    for record in records:
        for p in media_paths(trainer, record):
            path = Path(p) if Path(p).is_absolute() else folder / p
            assert path.is_file(), p
            Image.open(path).verify()
            assert Path(p).is_absolute() == (trainer == "swift")
        if trainer == "qwen":
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"]
            n_tags = sum(t["value"].count("<image>") for t in turns)
        else:
            assert all(set(m) == {"role", "content"} for m in record["messages"])
            n_tags = sum(m["content"].count("<image>") for m in record["messages"])
            n_videos = sum(m["content"].count("<video>") for m in record["messages"])
            assert n_videos == len(record.get("videos", []))
        want = len(media_paths(trainer, record)) if trainer == "qwen" else len(record.get("images", []))
        assert n_tags == want
    assert summary["media_files"] == len(list((folder / "images").iterdir()))


def test_llamafactory_format(job) -> None:
    out, _, _ = job
    info = json.loads((out / "exports" / "llamafactory" / "dataset_info.json").read_text())
    assert info["vlcurate"]["formatting"] == "sharegpt" and info["vlcurate"]["file_name"] == "data.jsonl"
    assert info["vlcurate"]["columns"] == {"messages": "messages", "images": "images", "videos": "videos"}
    records = lines(out, "llamafactory")
    for r in records:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    video = next(r for r in records if "videos" in r)
    assert video["messages"][0]["content"] == "<video>Describe this video." and len(video["videos"][0]) == 4
    multi = next(r for r in records if len(r.get("images", [])) == 2)
    assert multi["messages"][0]["content"].startswith("<image><image>Which is taller?")
    pre = next(r for r in records if r["messages"][1]["content"] == "A photo.")
    assert pre["messages"][0]["content"] == "<image>"


def test_swift_grounding_objects_in_pixels_of_the_exported_image(job) -> None:
    out, rows, _ = job
    records = lines(out, "swift")
    grounded = [r for r in records if "objects" in r]
    by_task = {}
    for row in rows:
        if row["meta"]["builder"] == "grounding":
            by_task.setdefault(row["meta"]["task"], []).append(row)
    assert len(grounded) == len(by_task["ref"]) + len(by_task["region"]) + len(by_task["detect"]) + 2  # + OCR
    for r in grounded:
        text = "".join(m["content"] for m in r["messages"])
        assert text.count("<ref-object>") == len(r["objects"]["ref"])
        assert text.count("<bbox>") == len(r["objects"]["bbox"])
        (path,) = r["images"]
        w, h = Image.open(path).size
        for box in r["objects"]["bbox"]:
            assert len(box) == 4 and 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    cat = next(r for r in grounded if r["objects"]["ref"] == ["cat"])
    assert cat["objects"]["bbox"] == [[round(146 * 644 / 640, 2), round(137 * 420 / 428, 2),
                                       round(615 * 644 / 640, 2), round(415 * 420 / 428, 2)]]
    assert cat["messages"][1]["content"] == '```json\n[\n\t{"bbox_2d": <bbox>, "label": "<ref-object>"}\n]\n```'
    pre = next(r for r in records if r["messages"][-1]["content"].endswith("A photo."))
    assert pre["messages"] == [{"role": "assistant", "content": "<image>A photo."}]  # ms-swift pretraining form


def test_swift_keeps_quads_as_text_and_qwen_format(tmp_path, tokenizer_dir) -> None:
    out = tmp_path / "job"
    make_job(out, tokenizer_dir, dialect="qwen2-vl")
    export(str(out), "swift")
    records = lines(out, "swift")
    quads = [r for r in records if "<|quad_start|>" in "".join(m["content"] for m in r["messages"])]
    assert quads and all("objects" not in r for r in quads)
    boxes = [r for r in records if "objects" in r]
    assert boxes and all("<|box_start|>" not in json.dumps(r) for r in boxes)
    export(str(out), "qwen")
    q = lines(out, "qwen")
    single = next(r for r in q if isinstance(r.get("image"), str) and "Locate the cat" in
                  r["conversations"][0]["value"])
    assert single["conversations"][0]["value"] == "<image>\nLocate the cat in the image."
    assert single["conversations"][1]["value"].startswith("<|object_ref_start|>cat<|object_ref_end|><|box_start|>")
    assert any(isinstance(r.get("image"), list) and len(r["image"]) == 2 for r in q)
    text_only = next(r for r in q if "image" not in r)
    assert text_only["conversations"] == [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2"}]


def test_converters_are_pure() -> None:
    doc = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}], "meta": {}}
    assert to_llamafactory(doc, ["a.png"]) == {"messages": [{"role": "user", "content": "<image>Hi?"},
                                                            {"role": "assistant", "content": "Yes."}],
                                               "images": ["a.png"]}
    assert to_swift(doc, ["/x/a.png"])["images"] == ["/x/a.png"]
    assert to_qwen(doc, ["a.png"]) == {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Yes."}]}
    with pytest.raises(ValueError, match="unknown trainer"):
        export("/nonexistent", "axolotl")
    assert message_text(doc["messages"][0]) == "Hi?"


@pytest.mark.slow
def test_grounding_job_exports_match_the_manifest(ray_local, tokenizer_dir, tmp_path) -> None:
    from pipeline.runner import run_job

    recipe = load_recipe(str(REPO / "jobs" / "recipes" / "grounding.yaml"), [
        f"format.tokenizer={tokenizer_dir}", f"input.path={REPO / 'tests/data/grounding_coco/instances.json'}",
        "output.exports=[llamafactory, swift, qwen]"])
    out = tmp_path / "job"
    run_job(recipe, str(out), log=lambda m: None)
    n = pq.read_table(out / "manifest.parquet").num_rows
    assert n > 0
    for trainer in TRAINERS:
        records = lines(out, trainer)
        assert len(records) == n
        for record in records:
            for p in media_paths(trainer, record):
                assert (Path(p) if Path(p).is_absolute() else out / "exports" / trainer / p).is_file()
        # one image behind every sample of the record: stored once
        assert len(list((out / "exports" / trainer / "images").iterdir())) == 1
        first = io.BytesIO((out / "exports" / trainer / "images").iterdir().__next__().read_bytes())
        assert Image.open(first).size == (644, 476)
