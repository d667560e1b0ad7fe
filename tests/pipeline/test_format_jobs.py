"""The format stage (pipeline/format_stage.py) without Ray, and grounding / OCR jobs end to end (marked slow):
every written box and quad read back from the shards converts back to original pixels within half a quantum."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from formatters.builders import message_text
from formatters.qwen import box_to_pixels, image_tokens, quad_to_pixels, smart_resize
from formatters.tokens import IGNORE_INDEX, tokenize_chat
from model.tiny import build_tiny_tokenizer
from pipeline.format_stage import Format, load_tokenizer
from pipeline.recipe import FormatSpec, RecipeError, load_recipe, parse_recipe
from tests import media

REPO = Path(__file__).resolve().parents[2]
IMAGE_PAD, VIDEO_PAD, ENDOFTEXT = 151655, 151656, 151643


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def stage(tokenizer_dir: str, **kw) -> Format:
    s = Format(FormatSpec(tokenizer=tokenizer_dir, **kw))
    s.check()
    s.setup()
    return s


def png(w: int, h: int, seed: int = 0) -> bytes:
    return media.encode(media.photo(w, h, seed), "PNG")


def coco_row(rid: str = "r1") -> dict:
    objects = [{"bbox": [146, 137, 615, 415], "category": "cat", "category_id": 17, "ann_id": 1, "iscrowd": 0},
               {"bbox": [10, 10, 100, 90], "category": "cup", "category_id": 47, "ann_id": 2, "iscrowd": 0}]
    return {"id": rid, "source": "x.json#1", "images": [png(640, 428)], "text": None, "answer": None,
            "annotations": {"width": 640, "height": 428, "objects": objects}, "meta": {"image_id": 1},
            "width": 640, "height": 428}


# ----------------------------------------------------------------------------------------------------------
# The stage, no Ray


def test_check_names_the_tokenizer(tmp_path) -> None:
    with pytest.raises(ValueError, match=f"^tokenizer: not found: {tmp_path / 'nope'}$"):
        Format(FormatSpec(builder="qa", tokenizer=str(tmp_path / "nope"))).check()
    Format(FormatSpec(builder="qa")).check()  # null: the built-in Qwen2.5-VL tokenizer (model.tokenizer)
    Format(FormatSpec(builder="qa", tokenizer="qwen2.5-vl")).check()


def test_recipe_hook_appends_the_format_stage_last(tokenizer_dir) -> None:
    raw = {"input": {"path": "x.jsonl"}, "stages": {"caption_check": {}},
           "format": {"builder": "caption_sft", "tokenizer": tokenizer_dir}}
    recipe = parse_recipe(raw)
    assert [s.key for s in recipe.stages] == ["caption_check", "format"]
    fmt = recipe.stages[-1]
    assert fmt.cls is Format and fmt.cls.kind == "expand" and fmt.params.builder == "caption_sft"
    assert isinstance(fmt.build(), Format)
    with pytest.raises(RecipeError, match=r"^format.builder: unknown builder 'x' \(known: caption_pretrain, "):
        parse_recipe({**raw, "format": {"builder": "x"}})
    with pytest.raises(RecipeError, match=r"^format.options.bogus: unknown option for builder caption_sft"):
        parse_recipe({**raw, "format": {"builder": "caption_sft", "options": {"bogus": 1}}})
    with pytest.raises(RecipeError, match="^stages.format: the name 'format' is reserved"):
        parse_recipe({**raw, "stages": {"format": {"use": "caption_check"}}})
    for name in ("grounding", "ocr", "vqa"):
        rec = load_recipe(str(REPO / "jobs" / "recipes" / f"{name}.yaml"), [f"format.tokenizer={tokenizer_dir}"])
        last = [s for s in rec.stages if s.key != "pack"][-1]  # format is last, before packing when it packs
        assert last.key == "format" and last.params.builder == name


def test_children_columns_token_counts_and_labels(tokenizer_dir) -> None:
    s = stage(tokenizer_dir, builder="grounding", max_pixels=28 * 28 * 1280)
    children = s.expand(coco_row())
    assert isinstance(children, list) and len(children) >= 4
    tok = load_tokenizer(tokenizer_dir)
    for c in children:
        assert {"messages", "images", "meta", "annotations", "input_ids", "labels", "n_tokens"} <= set(c)
        assert c["n_tokens"] == len(c["input_ids"]) == len(c["labels"])
        assert all(isinstance(v, int) for v in c["input_ids"][:5])
        w, h = Image.open(io.BytesIO(c["images"][0])).size
        assert [w, h] == c["meta"]["image_sizes"][0] == [c["width"], c["height"]]
        want = image_tokens(h, w, c["meta"]["min_pixels"], c["meta"]["max_pixels"])
        ids = np.array(c["input_ids"])
        assert int((ids == IMAGE_PAD).sum()) == want
        rh, rw = smart_resize(h, w, 28, c["meta"]["min_pixels"], c["meta"]["max_pixels"])
        assert (rw, rh) == (w, h)  # pre-resized: the trainer's resize leaves it unchanged
        assert c["meta"]["image_grid_thw"] == [[1, h // 14, w // 14]]
        assert c["meta"]["video_grid_thw"] == [] and c["meta"]["second_per_grid_ts"] == []
        labels = np.array(c["labels"])
        assert np.all(labels[ids == IMAGE_PAD] == IGNORE_INDEX)
        trained = tok.decode(ids[labels != IGNORE_INDEX].tolist())
        assert trained == message_text(c["messages"][1]) + "<|im_end|>\n"


def test_pretrain_layout_uses_the_caption_tokenization(tokenizer_dir) -> None:
    s = stage(tokenizer_dir, builder="caption_pretrain")
    (c,) = s.expand({"id": "p", "images": [png(224, 224)], "text": "A cat.", "meta": {}})
    ids = np.array(c["input_ids"])
    assert ids[-1] == ENDOFTEXT and int((ids == IMAGE_PAD).sum()) == 64 and c["n_tokens"] == len(ids)
    assert 151644 not in ids  # no <|im_start|>: no chat turns
    tok = load_tokenizer(tokenizer_dir)
    assert tok.decode(ids[np.array(c["labels"]) != IGNORE_INDEX].tolist()) == "A cat.<|endoftext|>"


def test_video_sample_tokens_come_from_the_plan(tokenizer_dir) -> None:
    s = stage(tokenizer_dir, builder="video")
    plan = {"path": "v.mp4", "grid_thw": [2, 26, 46], "resized_width": 644, "resized_height": 364,
            "sample_fps": 2.0, "second_per_grid_t": 1.0, "n_tokens": 598}
    frames = [png(644, 364, i) for i in range(4)]
    (c,) = s.expand({"id": "v", "images": frames, "text": "A walk.", "meta": {"video": plan}})
    ids = np.array(c["input_ids"])
    assert int((ids == VIDEO_PAD).sum()) == 2 * 13 * 23 == 598 and int((ids == IMAGE_PAD).sum()) == 0
    assert c["meta"]["video_grid_thw"] == [[2, 26, 46]] and c["meta"]["second_per_grid_ts"] == [1.0]
    assert c["meta"]["image_grid_thw"] == []


def test_failed_samples_are_rejected_children(tokenizer_dir) -> None:
    s = stage(tokenizer_dir, builder="qa")
    bad = {"id": "q", "images": [], "text": "hi <|im_start|> there", "answer": "x", "meta": {}}
    assert s.expand(bad) == "tokenize_error"
    assert s.expand({"id": "q", "text": "", "answer": "x"}) == "no_question"
    short = stage(tokenizer_dir, builder="grounding", max_tokens=310, max_pixels=28 * 28 * 256)
    children = short.expand(coco_row())
    reasons = {c.get("drop_reason") for c in children}
    assert reasons == {None, "too_many_tokens"}  # JSON answers exceed 310 tokens, region answers do not
    for c in children:
        if c.get("drop_reason"):
            assert c["drop_stage"] == "format" and c["images"] == [] and "error" in c["meta"]
        else:
            assert c["n_tokens"] <= 310 and c["meta"]["task"] == "region"
    assert stage(tokenizer_dir, builder="grounding", max_tokens=10).expand(coco_row()) == "too_many_tokens"


# ----------------------------------------------------------------------------------------------------------
# End to end on the dev data (local Ray)


def shard_samples(out: Path) -> dict[str, tuple[dict, list[bytes]]]:
    samples: dict[str, tuple[dict, list[bytes]]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, _, suffix = m.name.partition(".")
                doc, images = samples.setdefault(key, ({}, []))
                data = tf.extractfile(m).read()
                if suffix == "json":
                    doc.update(json.loads(data))
                elif suffix.endswith(".npy"):
                    doc[suffix.removesuffix(".npy")] = np.load(io.BytesIO(data)).tolist()
                else:
                    images.append((int(suffix.split(".")[0]), data))
    return {k: (d, [b for _, b in sorted(imgs)]) for k, (d, imgs) in samples.items()}


SHAPE = re.compile(r"<box>(.*?)</box>|<quad>(.*?)</quad>|<\|box_start\|>(.*?)<\|box_end\|>"
                   r"|<\|quad_start\|>(.*?)<\|quad_end\|>")


def written_shapes(text: str, dialect: str) -> list[list[int]]:
    """Every box / quad written in a text, in order, as the dialect writes it (SPEC §2)."""
    if dialect == "qwen2.5-vl":
        return [[int(v) for v in m.split(", ")] for m in re.findall(r"\[(\d+, \d+, \d+, \d+)\]", text)]
    return [[int(v) for v in re.findall(r"-?\d+", next(g for g in m.groups() if g is not None))]
            for m in SHAPE.finditer(text)]


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def jobs(ray_local, tokenizer_dir, tmp_path_factory):
    from pipeline.runner import run_job

    out = {}
    for recipe in ("grounding", "ocr"):
        for dialect in ("qwen-vl", "qwen2-vl", "qwen2.5-vl"):
            sets = [f"format.tokenizer={tokenizer_dir}", f"format.dialect={dialect}",
                    f"input.path={REPO / load_recipe(str(REPO / 'jobs/recipes' / f'{recipe}.yaml')).input.path}",
                    "format.options.max_per_task=null"]
            if recipe == "ocr":
                sets.append("format.options.tasks=[read, locate, recognize, spot]")
            rec = load_recipe(str(REPO / "jobs" / "recipes" / f"{recipe}.yaml"), sets)
            path = tmp_path_factory.mktemp(f"{recipe}-{dialect}") / "job"
            run_job(rec, str(path), log=lambda m: None)
            out[recipe, dialect] = path
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["qwen-vl", "qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("recipe", ["grounding", "ocr"])
def test_written_coordinates_round_trip(jobs, recipe: str, dialect: str) -> None:
    out = jobs[recipe, dialect]
    samples = shard_samples(out)
    assert samples
    checked = ious = 0
    for key, (doc, images) in samples.items():
        meta, g = doc["meta"], (doc.get("annotations") or {}).get("grounding")
        assert meta["dialect"] == dialect and meta["min_pixels"] == 3136 and meta["max_pixels"] == 1003520
        assert [list(Image.open(io.BytesIO(b)).size) for b in images] == meta["image_sizes"]
        if g is None:
            assert meta["task"] == "read"
            continue
        (w, h), = meta["original_sizes"]
        rh, rw = smart_resize(h, w, 28, meta["min_pixels"], meta["max_pixels"])
        written = [s for m in doc["messages"] for s in written_shapes(message_text(m), dialect)]
        assert len(written) == len(g["bbox"]), (key, doc["messages"])
        for coords, orig in zip(written, g["bbox"], strict=True):
            to_pixels = box_to_pixels if len(coords) == 4 else quad_to_pixels
            back = to_pixels(coords, w, h, dialect, meta["min_pixels"], meta["max_pixels"])
            for i, (c, b, o) in enumerate(zip(coords, back, orig, strict=True)):
                side, resized = (w, rw) if i % 2 == 0 else (h, rh)
                q = side / resized if dialect == "qwen2.5-vl" else side / 1000
                clamped = dialect == "qwen2.5-vl" and c == resized - 1
                assert abs(b - o) <= (q if clamped else q / 2) + 1e-6, (key, coords, orig, back)
                checked += 1
            if len(coords) == 4 and min(orig[2] - orig[0], orig[3] - orig[1]) >= 40:
                assert iou(back, orig) >= 0.95, (key, coords, orig, back)
                ious += 1
    assert checked > 50
    if recipe == "grounding":
        assert ious > 5


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["grounding", "ocr"])
def test_manifest_tokens_match_input_ids_and_stored_images(jobs, tokenizer_dir, recipe: str) -> None:
    out = jobs[recipe, "qwen2.5-vl"]
    manifest = {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    samples = shard_samples(out)
    work = {key: doc for key, (doc, _) in samples.items()}  # the tokens the shard carries
    tok = load_tokenizer(tokenizer_dir)
    assert set(manifest) == set(samples) and manifest
    for key, row in manifest.items():
        doc, images = samples[key]
        assert row["n_tokens"] == len(work[key]["input_ids"])
        sizes = [Image.open(io.BytesIO(b)).size for b in images]
        pads = [image_tokens(h, w, doc["meta"]["min_pixels"], doc["meta"]["max_pixels"]) for w, h in sizes]
        assert int((np.array(work[key]["input_ids"]) == IMAGE_PAD).sum()) == sum(pads)
        ids, _ = tokenize_chat(doc["messages"], tok, pads, [])
        assert ids.tolist() == work[key]["input_ids"]  # the shard alone reproduces the tokens
    stats = json.loads((out / "stats.json").read_text())
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert stats["records_in"] == stats["stages"]["format"]["in"]
    assert stats["stages"]["format"]["kept"] + sum(stats["stages"]["format"]["dropped"].values()) == \
        stats["records_in"]
    if recipe == "ocr":  # two dev images hold only ### regions
        assert sorted(r["drop_reason"] for r in rejects) == ["no_text_regions", "no_text_regions"]
