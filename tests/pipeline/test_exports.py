"""Exports to LLaMA-Factory, ms-swift and the official Qwen fine-tuning format (pipeline/exports.py)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from transformers import AutoTokenizer

from formatters.builders import message_text
from model.tiny import build_tiny_tokenizer
from pipeline.exports import (
    TRAINERS,
    export,
    export_all,
    export_jobs,
    iter_shard_samples,
    to_llamafactory,
    to_qwen,
    to_swift,
)
from pipeline.format_stage import Format
from pipeline.pack_dataset import iter_packs
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
        {"bbox": [200, 10, 300, 90], "category": "cup", "category_id": 47, "ann_id": 3, "iscrowd": 0},
        {"bbox": [500, 300, 640, 428], "category": "dog", "category_id": 18, "ann_id": 4, "iscrowd": 0}]},
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


def lines(out: Path, trainer: str, name: str = "data.jsonl") -> list[dict]:
    text = (out / "exports" / trainer / name).read_text(encoding="utf-8")
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


SKIPS = {"llamafactory": {"llamafactory_pt_stage_has_no_images": 1},
         "swift": {"swift_video_frames_resized_to_56px_multiples": 1},  # 644x364 frames
         "qwen": {"video_frames_unsupported": 1}}  # the official loader takes a video as one file only


def all_records(out: Path, trainer: str) -> list[dict]:
    folder = out / "exports" / trainer
    return [r for name in json.loads((folder / "export.json").read_text())["data"] for r in lines(out, trainer, name)]


@pytest.mark.parametrize("trainer", ["llamafactory", "swift", "qwen"])
def test_each_export_parses_references_files_and_counts_match(job, trainer: str) -> None:
    out, rows, summaries = job
    manifest = pq.read_table(out / "manifest.parquet")
    records = all_records(out, trainer)
    summary = json.loads((out / "exports" / trainer / "export.json").read_text())
    assert summary == summaries[trainer]
    skipped = sum(summary["skipped"].values())
    assert len(records) + skipped == manifest.num_rows == len(rows) and summary["samples"] == len(records)
    assert summary["skipped"] == SKIPS[trainer]
    folder = out / "exports" / trainer
    for record in records:
        for p in media_paths(trainer, record):
            assert not Path(p).is_absolute() and (folder / p).is_file(), p
            Image.open(folder / p).verify()
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
    out, rows, _ = job
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
    assert not any("A photo." in json.dumps(r) for r in records)  # pt stage: text only, skipped
    settings = yaml.safe_load((out / "exports" / "llamafactory" / "llamafactory.yaml").read_text())
    assert settings == json.loads((out / "exports" / "llamafactory" / "export.json").read_text())["settings"]
    longest = max(r["n_tokens"] for r in rows if "A photo." not in json.dumps(r["messages"]))
    assert settings["template"] == "qwen2_vl" and settings["cutoff_len"] == longest and settings["packing"] is False
    assert settings["image_max_pixels"] >= max(w * h for r in rows if r["meta"]["builder"] != "video"
                                               for w, h in r["meta"]["image_sizes"])
    assert settings["video_max_pixels"] == 644 * 364 and settings["video_fps"] == 2.0


def one_builder_job(out: Path, tokenizer_dir: str, builders: list[str]) -> None:
    rows = [r for r in make_job(out, tokenizer_dir) if r["meta"]["builder"] in builders]
    store = Store(str(out))
    store.delete_dir("shards")
    store.write_bytes(shard_tar(rows, ["n_tokens"]), "shards", "shard-00000.tar")


@pytest.mark.parametrize(("builders", "columns"), [
    (["grounding", "vqa"], {"messages": "messages", "images": "images"}),
    (["video"], {"messages": "messages", "videos": "videos"}),
    (["qa"], {"messages": "messages"})])
def test_llamafactory_declares_only_the_columns_it_has(tmp_path, tokenizer_dir, builders, columns) -> None:
    out = tmp_path / "job"
    one_builder_job(out, tokenizer_dir, builders)
    export(str(out), "llamafactory")
    info = json.loads((out / "exports" / "llamafactory" / "dataset_info.json").read_text())
    assert info["vlcurate"]["columns"] == columns
    for record in lines(out, "llamafactory"):
        assert set(record) <= set(columns.values())  # LLaMA-Factory reads each declared column of each record


def test_llamafactory_skips_videos_at_another_fps(tmp_path, tokenizer_dir) -> None:
    out = tmp_path / "job"
    one_builder_job(out, tokenizer_dir, ["video"])
    store = Store(str(out))
    samples = list(iter_shard_samples(store))
    (key, doc, media), = samples
    other = {**doc, "id": key + "b", "meta": {**doc["meta"], "video": {**doc["meta"]["video"], "sample_fps": 1.5}}}
    rows = [{**d, "images": [b for _, b in m]} for d, m in ((doc, media), (other, media))]
    store.write_bytes(shard_tar(rows, []), "shards", "shard-00000.tar")
    summary = export(str(out), "llamafactory")
    assert summary["samples"] == 1 and summary["skipped"] == {"llamafactory_video_fps_differs": 1}
    summary = export(str(out), "swift")
    assert summary["skipped"] == {"swift_video_frames_resized_to_56px_multiples": 2}


def test_exports_survive_moving_the_job_folder(job, tmp_path) -> None:
    out, _, _ = job
    moved = tmp_path / "elsewhere"
    shutil.copytree(out / "exports", moved)
    for trainer in ("llamafactory", "swift", "qwen"):
        for name in json.loads((moved / trainer / "export.json").read_text())["data"]:
            text = (moved / trainer / name).read_text()
            assert str(out) not in text
            for record in map(json.loads, text.splitlines()):
                for p in media_paths(trainer, record):
                    assert (moved / trainer / p).is_file()


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
        w, h = Image.open(out / "exports" / "swift" / path).size
        for box in r["objects"]["bbox"]:
            assert len(box) == 4 and 0 <= box[0] < box[2] < w and 0 <= box[1] < box[3] < h
    cat = next(r for r in grounded if r["objects"]["ref"] == ["cat"])
    assert cat["objects"]["bbox"] == [[147, 134, 619, 407]]  # SPEC §2: the shard's integers, pixels of 644x420
    assert cat["messages"][1]["content"] == '```json\n[\n\t{"bbox_2d": <bbox>, "label": "<ref-object>"}\n]\n```'
    dog = next(r for r in grounded if r["objects"]["ref"] == ["dog"])
    assert dog["objects"]["bbox"] == [[503, 294, 643, 419]]  # right/bottom edge: W'-1, H'-1 as in the shard
    script = (out / "exports" / "swift" / "swift.sh").read_text()
    assert "QWENVL_BBOX_FORMAT=new" in script and "--norm_bbox none" in script
    assert "swift sft --dataset data.jsonl" in script
    assert "swift pt --dataset data_pt.jsonl" in script and script.rstrip().endswith('--use_chat_template false "$@"')


def swift_render(record: dict, images_dir: Path, norm1000: bool) -> list[str]:
    """What ms-swift 4.6's Qwen2-VL templates make of a grounding record (Template.normalize_bbox, then
    replace_ref / replace_bbox: legacy special tokens for qwen2-vl, QWENVL_BBOX_FORMAT=new for qwen2.5-vl);
    the exported image is already W'xH', so qwen-vl-utils' resize keeps it."""
    (path,) = record["images"]
    w, h = Image.open(images_dir / path).size
    nw, nh = (1000, 1000) if norm1000 else (w, h)
    boxes = [[int(round(v / (w if i % 2 == 0 else h) * (nw if i % 2 == 0 else nh))) for i, v in enumerate(b)]
             for b in record["objects"]["bbox"]]
    refs, coords = iter(record["objects"]["ref"]), iter(boxes)

    def fill(m: re.Match) -> str:
        if m.group(0) == "<ref-object>":
            ref = next(refs)
            return f"<|object_ref_start|>{ref}<|object_ref_end|>" if norm1000 else ref
        box = next(coords)
        return "<|box_start|>({},{}),({},{})<|box_end|>".format(*box) if norm1000 else str(box)

    return [re.sub("<ref-object>|<bbox>", fill, m["content"]).removeprefix("<image>") for m in record["messages"]]


@pytest.mark.parametrize("dialect", ["qwen2.5-vl", "qwen2-vl"])
def test_swift_turns_every_grounding_record_into_the_shards_text(tmp_path, tokenizer_dir, dialect) -> None:
    out = tmp_path / "job"
    make_job(out, tokenizer_dir, dialect=dialect)
    export(str(out), "swift")
    docs = [d for _, d, _ in iter_shard_samples(Store(str(out)))
            if d["meta"]["builder"] not in ("video", "caption_pretrain")]  # the order of data.jsonl
    grounded = [(r, d) for r, d in zip(lines(out, "swift"), docs, strict=True) if "objects" in r]
    assert len(grounded) >= 5 and any(len(r["objects"]["bbox"]) > 1 for r, _ in grounded)
    for record, doc in grounded:
        assert swift_render(record, out / "exports" / "swift", dialect == "qwen2-vl") == [
            message_text(m) for m in doc["messages"]]


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
    assert to_swift(doc, ["images/a.png"])["images"] == ["images/a.png"]
    assert to_qwen(doc, ["a.png"]) == {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Yes."}]}
    pre = {"messages": [{"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}],
           "meta": {"layout": "pretrain"}}
    assert to_swift(pre, []) == {"messages": [{"role": "assistant", "content": "Hello.<|endoftext|>"}]}
    pre["messages"][0]["content"].insert(0, {"type": "image"})
    assert to_swift(pre, ["a.png"]) == {"messages": [{"role": "assistant", "content": "<image>Hello.<|endoftext|>"}],
                                        "images": ["a.png"]}
    big = {**doc, "meta": {"image_sizes": [[1920, 1080]], "min_pixels": 3136, "max_pixels": 1003520}}
    assert to_llamafactory(big, ["a.png"]) == "llamafactory_image_resize_limits_differ"  # 1316x728 in the shard
    big["meta"]["image_sizes"] = [[1316, 728]]  # pre-resized: LLaMA-Factory's processor keeps it
    assert to_llamafactory(big, ["a.png"])["images"] == ["a.png"]
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
    for trainer in ("llamafactory", "swift", "qwen"):
        records = all_records(out, trainer)
        assert len(records) == n
        for record in records:
            for p in media_paths(trainer, record):
                assert (Path(p) if Path(p).is_absolute() else out / "exports" / trainer / p).is_file()
        # one image behind every sample of the record: stored once
        assert len(list((out / "exports" / trainer / "images").iterdir())) == 1
        first = io.BytesIO((out / "exports" / trainer / "images").iterdir().__next__().read_bytes())
        assert Image.open(first).size == (644, 476)


def test_hf_export_loads_with_datasets_and_decodes_to_the_shards_pixels(job, tmp_path) -> None:
    out, rows, summaries = job
    assert summaries["hf"]["samples"] == len(rows) and summaries["hf"]["skipped"] == {}
    ds = datasets.load_dataset("parquet", data_files=str(out / "exports" / "hf" / "data-*.parquet"),
                               split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features["images"].feature, datasets.Image)
    by_id = {r["id"]: r for r in rows}
    assert sorted(ds["id"]) == sorted(by_id)
    shard_media = {key: [data for _, data in media] for key, _, media in iter_shard_samples(Store(str(out)))}
    for sample in ds:
        row = by_id[sample["id"]]
        assert len(sample["images"]) == len(shard_media[sample["id"]]) == len(row["images"])
        for got, data in zip(sample["images"], shard_media[sample["id"]], strict=True):  # as read from the tars
            assert np.array_equal(np.asarray(got), np.asarray(Image.open(io.BytesIO(data))))
        assert sample["input_ids"] == list(row["input_ids"]) and sample["labels"] == list(row["labels"])
        assert ["".join(p["text"] for p in m["content"] if p["type"] == "text") for m in sample["messages"]] == [
            message_text(m) for m in row["messages"]]
    video = next(s for s in ds if json.loads(s["meta"]).get("video"))
    assert len(video["images"]) == 4 and video["messages"][0]["content"][0]["type"] == "video"


def test_ids_name_the_shard_sample_of_each_line(job) -> None:
    out, rows, _ = job
    by_id = {r["id"]: r for r in rows}
    records = lines(out, "swift")
    ids = (out / "exports" / "swift" / "data.ids").read_text().split()
    assert len(ids) == len(records) == len(set(ids))
    for key, record in zip(ids, records, strict=True):
        assert len(record.get("images", [])) == len(by_id[key]["images"])
        assert record["messages"][-1]["role"] == by_id[key]["messages"][-1]["role"]


def named_job(out: Path, tokenizer_dir: str, name: str | None) -> list[dict]:
    rows = make_job(out, tokenizer_dir)
    Store(str(out)).write_bytes(json.dumps({"recipe": {"input": {"path": "x", "name": name}}}).encode(), "job.json")
    return rows


def test_jobs_exported_together_never_repeat_a_key(tmp_path, tokenizer_dir) -> None:
    """Two copies of one dataset (same relative layout, so the same ids) exported into one place: every key is
    qualified by its job's input.name."""
    a, b = tmp_path / "a", tmp_path / "b"
    rows = named_job(a, tokenizer_dir, "copy_one")
    named_job(b, tokenizer_dir, "copy_two")
    assert [k for k, _, _ in iter_shard_samples(Store(str(a)))] == [k for k, _, _ in iter_shard_samples(Store(str(b)))]
    dest = tmp_path / "together"
    summaries = export_jobs([str(a), str(b)], str(dest), ["llamafactory", "swift", "qwen", "hf"])
    for trainer in ("llamafactory", "swift", "qwen"):
        keys = [k for name in summaries[trainer]["data"]
                for k in (dest / trainer / name.replace(".jsonl", ".ids")).read_text().split()]
        assert len(keys) == len(set(keys)) == summaries[trainer]["samples"] == 2 * (
            len(rows) - sum(SKIPS[trainer].values()))
        assert {k.partition("-")[0] for k in keys} == {"copy_one", "copy_two"}
        assert sum(1 for name in summaries[trainer]["data"] for _ in (dest / trainer / name).open()) == len(keys)
    ids = pq.read_table(dest / "hf" / "data-00000.parquet")["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 2 * len(rows)
    assert sorted(ids) == sorted(f"{n}-{r['id']}" for n in ("copy_one", "copy_two") for r in rows)


def test_jobs_exported_together_need_distinct_input_names(tmp_path, tokenizer_dir) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    named_job(a, tokenizer_dir, "same")
    named_job(b, tokenizer_dir, "same")
    named_job(c, tokenizer_dir, None)
    with pytest.raises(ValueError, match="input.name same names several of the jobs"):
        export_jobs([str(a), str(b)], str(tmp_path / "d"), ["hf"])
    with pytest.raises(ValueError, match="set input.name in its recipe"):
        export_jobs([str(a), str(c)], str(tmp_path / "d"), ["hf"])
    with pytest.raises(ValueError, match="not a finished vlcurate job"):
        export_jobs([str(tmp_path / "nothing")], str(tmp_path / "d"), ["hf"])
    assert not (tmp_path / "d").exists()


HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.slow
def test_real_jobs_ids_are_32_hex_and_two_copies_export_together(ray_local, tmp_path) -> None:
    """Two OCR jobs (packed) on two copies of one dataset folder: ids are 128 bits in the shards, the manifest
    and the packs; the two jobs share their ids, and exported together under their input names no key repeats."""
    from pipeline.runner import run_job

    jobs = []
    for name in ("icdar_a", "icdar_b"):
        data = tmp_path / name / "icdar2015"
        shutil.copytree(REPO / "tests/data/ocr_icdar2015", data)
        out = tmp_path / name / "job"
        run_job(load_recipe(str(REPO / "jobs/recipes/ocr.yaml"), [
            f"input.path={data}", f"input.name={name}", "format.max_pixels=3136",
            "output.exports=[hf]"]), str(out), log=lambda m: None)
        jobs.append(out)
    manifest = pq.read_table(jobs[0] / "manifest.parquet")["id"].to_pylist()
    assert len(manifest) > 10 and all(HEX32.match(i) for i in manifest)
    assert sorted(manifest) == sorted(pq.read_table(jobs[1] / "manifest.parquet")["id"].to_pylist())
    shard_keys = [k for k, _, _ in iter_shard_samples(Store(str(jobs[0])))]
    assert sorted(shard_keys) == sorted(manifest)
    packs = pq.read_table(jobs[0] / "packs.parquet").to_pylist()
    assert sorted(m for p in packs for m in p["members"]) == sorted(manifest)
    members = [m for shard in sorted((jobs[0] / "packs").glob("*.tar")) for pk in iter_packs(str(shard))
               for m in pk["json"]["members"]]  # each pack names its members' ids
    assert sorted(members) == sorted(manifest)
    assert all(HEX32.match(i) for i in pq.read_table(jobs[0] / "exports/hf/data-00000.parquet")["id"].to_pylist())

    summary = export_jobs([str(j) for j in jobs], str(tmp_path / "together"), ["hf", "swift"])["swift"]
    keys = (tmp_path / "together" / "swift" / "data.ids").read_text().split()
    assert len(keys) == len(set(keys)) == 2 * len(manifest) == summary["samples"]


def test_swift_pt_record_tokenizes_to_the_shards_pretraining_sample(job, tokenizer_dir) -> None:
    """`swift pt` (no chat template) reads the one assistant message as it is: with each ``<image>`` expanded to
    the vision block, its tokens are the shard's, ``<|endoftext|>`` last (ms-swift appends no eos after a stop
    word). Labels too are checked through ms-swift itself by ``make conformance``."""
    out, rows, _ = job
    (record,) = lines(out, "swift", "data_pt.jsonl")
    (key,) = (out / "exports" / "swift" / "data_pt.ids").read_text().split()
    row = next(r for r in rows if r["id"] == key)
    assert row["meta"]["layout"] == "pretrain" and len(record["images"]) == len(row["images"]) == 1
    (message,) = record["messages"]
    assert message["role"] == "assistant" and message["content"] == "<image>A photo.<|endoftext|>"
    pads = list(row["input_ids"]).count(151655)  # <|image_pad|>
    text = message["content"].replace("<image>", "<|vision_start|>" + "<|image_pad|>" * pads + "<|vision_end|>")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tok(text, add_special_tokens=False)["input_ids"] == list(row["input_ids"])
    assert tok.convert_ids_to_tokens(int(row["input_ids"][-1])) == "<|endoftext|>"


def test_interleaved_documents_are_skipped_with_a_reason_but_in_the_hf_export(tmp_path, tokenizer_dir) -> None:
    """No trainer export form has been checked to keep a document's texts and images in reading order, so those
    exports skip it with the reason counted; the hf export (messages + images) keeps it."""
    row = {"id": "d", "images": [png(224, 224), jpeg(320, 240, 3)], "text": None, "meta": {},
           "annotations": {"texts": ["First part.", None, "Between.", None, "End."]}}
    stage = Format(FormatSpec(builder="interleaved", tokenizer=tokenizer_dir, max_pixels=28 * 28 * 1280))
    (doc,) = stage.expand({**row, "source": "interleaved"})
    out = tmp_path / "job"
    Store(str(out)).write_bytes(shard_tar([{**row, **doc, "id": make_id("d", 0)}], ["n_tokens"]), "shards",
                                "shard-00000.tar")
    for trainer in ("llamafactory", "swift", "qwen"):
        summary = export(str(out), trainer)
        assert summary["samples"] == 0 and summary["skipped"] == {"interleaved_document_not_supported": 1}
    assert export(str(out), "hf")["samples"] == 1
