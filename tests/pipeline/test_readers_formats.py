"""Readers for the common VLM data sets (issue 9 item 5) on their real samples in tests/data/formats (copied from
../shared/data/dev/formats with their SOURCE / NOTES / license files): Flickr30k, COCO captions, SNLI-VE, NLVR2,
WildReceipt (OCR and key information), Visual Genome QA, GQA over a folder or glob. Readers without Ray first;
then one real job per format on local Ray (marked slow), each on the sample plus broken records.

There is no COCO captions sample in the shared data: the captions JSON is built here in the real layout
(`images` + `annotations` with `image_id`, `id`, `caption`) around the real COCO image 000000039769 of
tests/data/grounding_coco; its captions are written for this test, not COCO's own."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from formatters.builders import BuildConfig, build, field_name, message_text
from formatters.qwen import box_to_pixels, quad_to_pixels, smart_resize
from model.tiny import build_tiny_tokenizer
from pipeline.readers import READERS, iter_rows
from pipeline.readers.captions import strip_entities
from pipeline.recipe import InputSpec, RecipeError, load_recipe
from pipeline.runner import run_job
from pipeline.schema import make_id
from tests.pipeline.test_format_jobs import shard_samples, written_shapes

REPO = Path(__file__).resolve().parents[2]
FORMATS = REPO / "tests" / "data" / "formats"
COCO_IMAGE = REPO / "tests" / "data" / "grounding_coco" / "000000039769.png"
TRUNCATED = '{"Flickr30K_ID": "402978771", "sentence2": "A wom'


def rows(path, fmt, **kw) -> list[dict]:
    return list(iter_rows(InputSpec(path=str(path), format=fmt, **kw)))


def reasons(rs) -> list:
    return [r["drop_reason"] for r in rs]


# ------------------------------------------------------------------------------------------- broken copies


def coco_captions(folder: Path) -> Path:
    """A captions_*.json in COCO's layout: image 39769 with three captions (one annotation without a caption),
    an image whose file is missing, an image without captions."""
    shutil.copy(COCO_IMAGE, folder / COCO_IMAGE.name)
    doc = {"info": {"description": "built by tests"}, "licenses": [],
           "images": [{"id": 39769, "file_name": COCO_IMAGE.name, "width": 640, "height": 480},
                      {"id": 7, "file_name": "000000000007.jpg", "width": 640, "height": 480},
                      {"id": 8, "file_name": COCO_IMAGE.name, "width": 640, "height": 480}],
           "annotations": [{"image_id": 39769, "id": 12, "caption": "Two remotes lie on a pink blanket. "},
                           {"image_id": 39769, "id": 3, "caption": "Two cats sleeping on a pink couch."},
                           {"image_id": 39769, "id": 5},
                           {"image_id": 39769, "id": 9, "caption": "A pair of tabby cats asleep next to remotes."},
                           {"image_id": 7, "id": 20, "caption": "An image that is not there."}]}
    path = folder / "captions_val2017.json"
    path.write_text(json.dumps(doc))
    return path


def broken_copy(fmt: str, folder: Path) -> Path:
    """The real sample of `fmt` copied into `folder` with broken records added; the input path to read."""
    if fmt == "coco_captions":
        return coco_captions(folder)
    src = {"flickr30k": "flickr30k", "snli_ve": "snli_ve", "nlvr2": "nlvr2", "wildreceipt": "wildreceipt",
           "wildreceipt_ocr": "wildreceipt", "visual_genome_qa": "visual_genome_qa", "gqa": "gqa"}[fmt]
    root = folder / src
    shutil.copytree(FORMATS / src, root)
    if fmt == "flickr30k":
        (root / "sentences" / "1000.txt").write_text("[/EN#1/people A man] rides [/EN#2/other a horse] .\n")
        (root / "sentences" / "1001.txt").write_text("[/EN#1/people A man rides a horse .\n\n")
        return root
    if fmt == "snli_ve":
        good = (root / "sample_pairs.jsonl").read_text().splitlines()[0]
        rec = json.loads(good)
        lines = [good, TRUNCATED,
                 json.dumps({k: v for k, v in rec.items() if k != "sentence2"} | {"pairID": "a"}),
                 json.dumps(rec | {"Flickr30K_ID": "123", "pairID": "b"}),
                 json.dumps(rec | {"gold_label": "-", "pairID": "c"})]
        (root / "sample_pairs.jsonl").write_text("\n".join(lines) + "\n")
        return root / "sample_pairs.jsonl"
    if fmt == "nlvr2":
        good = (root / "tiny-dev.json").read_text().splitlines()
        rec = json.loads(good[0])
        lines = [*good, good[1][:60],
                 json.dumps({k: v for k, v in rec.items() if k != "identifier"}),
                 json.dumps(rec | {"identifier": "dev-851-3-0"})]
        (root / "tiny-dev.json").write_text("\n".join(lines) + "\n")
        return root / "tiny-dev.json"
    if fmt.startswith("wildreceipt"):
        good = (root / "data.txt").read_text().splitlines()[0]
        rec = json.loads(good)
        lines = [good, good[:300],
                 json.dumps({k: v for k, v in rec.items() if k != "annotations"} | {"file_name": "copy/2.jpeg"}),
                 json.dumps(rec | {"file_name": "image_files/Image_9/9/receipt_9.jpeg"})]
        (root / "data.txt").write_text("\n".join(lines) + "\n")
        return root / "data.txt"
    if fmt == "visual_genome_qa":
        doc = json.loads((root / "question_answers.json").read_text())
        doc.append({"id": 4, "qas": [{"qa_id": 1, "image_id": 4, "answer": "Yes."}]})  # no question
        doc.append({"id": 999, "qas": [{"qa_id": 2, "image_id": 999, "question": "Why?", "answer": "No."}]})
        (root / "question_answers.json").write_text(json.dumps(doc))
        return root / "question_answers.json"
    # gqa: a second questions file truncated, a third with a question missing its keys; read by a glob
    text = (root / "questions1.json").read_text()
    (root / "questions2.json").write_text(text[: len(text) // 2])
    (root / "questions3.json").write_text(json.dumps({"9": {"imageId": "n166008", "question": "What?"}}))
    (root / "other.txt").write_text("not a questions file")
    return root / "questions*.json"


EXPECTED = {  # format: (kept records, sorted drop reasons of the broken copy)
    "flickr30k": (1, ["missing_file", "no_caption"]),
    "coco_captions": (1, ["missing_file", "no_caption"]),
    "snli_ve": (1, ["invalid_json", "missing_field", "missing_file", "no_label"]),
    "nlvr2": (2, ["invalid_json", "missing_field", "missing_file"]),
    "wildreceipt": (1, ["invalid_json", "missing_field", "missing_file"]),
    "visual_genome_qa": (5, ["missing_field", "missing_file"]),
    "gqa": (1, ["invalid_json", "missing_field"]),
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_broken_copies_give_reasons_not_a_crash(tmp_path, fmt):
    rs = rows(broken_copy(fmt, tmp_path), fmt)
    kept, dropped = EXPECTED[fmt]
    assert sum(r["drop_reason"] is None for r in rs) == kept
    assert sorted(r["drop_reason"] for r in rs if r["drop_reason"]) == dropped
    assert all(r["drop_stage"] == "read" for r in rs if r["drop_reason"])
    assert len({r["id"] for r in rs}) == len(rs)


def test_formats_registered():
    for fmt in ("flickr30k", "coco_captions", "snli_ve", "nlvr2", "wildreceipt", "visual_genome_qa", "gqa"):
        assert hasattr(READERS[fmt], "plan") and hasattr(READERS[fmt], "read")


# ------------------------------------------------------------------------------------------- captions


def test_entities_markup_is_stripped():
    text, phrases = strip_entities("[/EN#221796/people A girl] with [/EN#221804/bodyparts brown hair] sits on "
                                   "[/EN#221799/scene the edge of a cement area] [/EN#221798/scene overlooking water] .")
    assert text == "A girl with brown hair sits on the edge of a cement area overlooking water."
    assert [p["phrase"] for p in phrases] == ["A girl", "brown hair", "the edge of a cement area",
                                              "overlooking water"]
    assert phrases[0] == {"phrase": "A girl", "entity_id": "221796", "types": ["people"]}
    assert strip_entities("[/EN#5/other/people Two men] , smiling .")[0] == "Two men, smiling."
    assert strip_entities("[/EN#1/people A man rides .") is None


def test_flickr30k_sample_one_row_five_captions():
    (row,) = rows(FORMATS / "flickr30k", "flickr30k")
    assert row["drop_reason"] is None
    assert row["images"] == [(FORMATS / "flickr30k" / "4945942737.jpg").read_bytes()]
    assert row["captions"] == [
        "A girl with brown hair sits on the edge of a cement area overlooking water.",
        "A woman in black, seen from behind, sits next to a body of water.",
        "A girl sitting outside on concrete near water in a black dress.",
        "A small girl sits on a ledge by the water contemplating life.",
        "A dark-haired girl is sitting on the waters edge."]
    assert row["text"] == row["captions"][0]
    assert all("[" not in c and "/EN#" not in c for c in row["captions"])
    assert row["id"] == make_id("sentences/4945942737.txt", "4945942737")
    assert row["meta"] == {"image_id": "4945942737", "file_name": "4945942737.jpg", "bad_lines": 0}
    assert len(row["annotations"]["phrases"]) == 5


def test_coco_captions_in_annotation_id_order(tmp_path):
    rs = rows(coco_captions(tmp_path), "coco_captions")
    assert [r["meta"]["image_id"] for r in rs] == [7, 8, 39769]
    row = rs[2]
    assert row["drop_reason"] is None and row["images"] == [COCO_IMAGE.read_bytes()]
    assert row["captions"] == ["Two cats sleeping on a pink couch.", "A pair of tabby cats asleep next to remotes.",
                               "Two remotes lie on a pink blanket."]
    assert row["text"] == "Two cats sleeping on a pink couch." and row["meta"]["bad_annotations"] == 1
    assert row["id"] == make_id("captions_val2017.json", 39769)
    (tmp_path / "captions_val2017.json").write_text('{"images": [{"id": 1, "file_na')
    with pytest.raises(RecipeError, match=r"^input: .*captions_val2017.json is not valid JSON"):
        rows(tmp_path / "captions_val2017.json", "coco_captions")


# ------------------------------------------------------------------------------------------- SNLI-VE, NLVR2


def test_snli_ve_image_hypothesis_label():
    (row,) = rows(FORMATS / "snli_ve" / "sample_pairs.jsonl", "snli_ve")
    assert row["images"] == [(FORMATS / "snli_ve" / "402978771.jpg").read_bytes()]
    assert (row["text"], row["answer"]) == ("The woman is sitting outside.", "entailment")
    assert row["annotations"]["premise"].startswith("A woman sits on a bench next to a pay phone")
    assert row["id"] == make_id("sample_pairs.jsonl", "402978771.jpg#1r1e")


def test_nlvr2_two_images_per_statement():
    rs = rows(FORMATS / "nlvr2" / "tiny-dev.json", "nlvr2")
    left, right = ((FORMATS / "nlvr2" / f"dev-850-0-img{i}.png").read_bytes() for i in (0, 1))
    assert [r["images"] for r in rs] == [[left, right], [left, right]]
    assert [r["answer"] for r in rs] == ["false", "false"]
    assert rs[0]["text"].startswith("The right image shows a curving walkway")
    assert rs[1]["meta"]["identifier"] == "dev-850-0-1"


# ------------------------------------------------------------------------------------------- VG QA, GQA


def test_visual_genome_qa_one_row_per_question(tmp_path):
    rs = rows(FORMATS / "visual_genome_qa" / "question_answers.json", "visual_genome_qa", partition_rows=2)
    assert [(r["text"], r["answer"]) for r in rs] == [
        ("What is on the curtains?", "Sailboats"), ("Where was the photo taken?", "In a room"),
        ("What color is the couch?", "Purple"), ("What is the table made out of?", "Glass"),
        ("What is on the couch?", "A teddy bear")]
    assert rs[0]["annotations"] == {"qa_id": 987278, "raw_answer": "Sailboats."}
    assert all(r["images"] == [(FORMATS / "visual_genome_qa" / "4.jpg").read_bytes()] for r in rs)
    (tmp_path / "vg_images" / "VG_100K").mkdir(parents=True)
    shutil.copy(FORMATS / "visual_genome_qa" / "4.jpg", tmp_path / "vg_images" / "VG_100K" / "4.jpg")
    moved = rows(FORMATS / "visual_genome_qa" / "question_answers.json", "visual_genome_qa",
                 options={"image_dir": str(tmp_path / "vg_images")})
    assert reasons(moved) == [None] * 5 and moved[0]["meta"]["file_name"] == "VG_100K/4.jpg"
    truncated = tmp_path / "question_answers.json"
    truncated.write_text((FORMATS / "visual_genome_qa" / "question_answers.json").read_text()[:200])
    with pytest.raises(RecipeError, match=r"^input: .*question_answers.json is not valid JSON"):
        rows(truncated, "visual_genome_qa")


def test_gqa_file_folder_and_glob(tmp_path):
    (one,) = rows(FORMATS / "gqa" / "questions1.json", "gqa")
    assert (one["text"], one["answer"]) == ("Does the table below the water look wooden and round?", "yes")
    assert one["images"] == [(FORMATS / "gqa" / "n166008.jpg").read_bytes()]  # no images/ folder: beside it
    assert one["id"] == make_id("questions1.json", "20240871")
    root = tmp_path / "gqa"
    (root / "train_all_questions").mkdir(parents=True)
    (root / "images").mkdir()
    shutil.copy(FORMATS / "gqa" / "n166008.jpg", root / "images")
    doc = json.loads((FORMATS / "gqa" / "questions1.json").read_text())
    for i in range(3):
        part = {f"{k}{i}": v for k, v in doc.items()}
        (root / "train_all_questions" / f"train_all_questions_{i}.json").write_text(json.dumps(part))
    (root / "train_all_questions" / "notes.json").write_text("{}")
    globbed = rows(root / "train_all_questions" / "train_all_questions_*.json", "gqa",
                   options={"image_dir": str(root / "images")})
    assert [r["source"] for r in globbed] == [f"train_all_questions_{i}.json#20240871{i}" for i in range(3)]
    assert reasons(globbed) == [None] * 3
    folder = rows(root / "train_all_questions", "gqa", options={"image_dir": str(root / "images")})
    assert len(folder) == 3 and folder[0]["id"] == make_id("train_all_questions_0.json", "202408710")
    with pytest.raises(RecipeError, match="^input.path: no files match"):
        rows(root / "nothing_*.json", "gqa")


# ------------------------------------------------------------------------------------------- WildReceipt


def wildreceipt_row() -> dict:
    (row,) = rows(FORMATS / "wildreceipt" / "data.txt", "wildreceipt")
    return row


def test_wildreceipt_quads_texts_and_classes():
    row = wildreceipt_row()
    rec = json.loads((FORMATS / "wildreceipt" / "data.txt").read_text().splitlines()[0])
    assert row["drop_reason"] is None and row["images"] == [(FORMATS / "wildreceipt" / "2.jpeg").read_bytes()]
    ann = row["annotations"]
    assert (ann["width"], ann["height"]) == (348, 348) == Image.open(FORMATS / "wildreceipt" / "2.jpeg").size
    assert [t["quad"] for t in ann["texts"]] == [a["box"] for a in rec["annotations"]]
    assert [t["text"] for t in ann["texts"]] == [a["text"] for a in rec["annotations"]]
    assert ann["texts"][0] == {"quad": [114, 19, 230, 19, 230, 1, 114, 1], "text": "CHOEUN", "ignore": False,
                               "label": 1, "category": "Store_name_value"}
    assert [t["ignore"] for t in ann["texts"]].count(True) == 2  # the two empty texts
    assert field_name("Store_name_value") == "store name" and field_name("Prod_item_value") == "prod item"


DIALECTS = ("qwen-vl", "qwen2-vl", "qwen2.5-vl")


def assert_shapes_on_source(samples: list[dict], source_quads: list[list[float]], image: Path) -> int:
    """Every written shape converts back (formatters.qwen) to its source quad (its box for Qwen2.5-VL) within
    half a quantum, and covers ink: dark pixels inside, while the paper outside every quad has almost none."""
    gray = np.asarray(Image.open(image).convert("L")).astype(int)
    dark = gray < 110
    outside = np.ones_like(dark)
    for q in source_quads:
        outside[int(min(q[1::2])):int(max(q[1::2])) + 1, int(min(q[0::2])):int(max(q[0::2])) + 1] = False
    outside[:, :10] = outside[:, 330:] = False  # the table around the receipt
    assert dark[outside].mean() < 0.02
    checked = 0
    for s in samples:
        meta, g = s["meta"], s["annotations"]["grounding"]
        (w, h), = meta["original_sizes"]
        dialect, lo, hi = meta["dialect"], meta["min_pixels"], meta["max_pixels"]
        rh, rw = smart_resize(h, w, 28, lo, hi)
        written = [c for m in s["messages"] for c in written_shapes(message_text(m), dialect)]
        assert len(written) == len(g["bbox"]) > 0
        for coords, orig in zip(written, g["bbox"], strict=True):
            back = (box_to_pixels if len(coords) == 4 else quad_to_pixels)(coords, w, h, dialect, lo, hi)
            source = next(q for q in source_quads
                          if orig == (q if len(coords) == 8 else
                                      [min(q[0::2]), min(q[1::2]), max(q[0::2]), max(q[1::2])]))
            for i, (b, o) in enumerate(zip(back, orig, strict=True)):
                quantum = (w / rw if i % 2 == 0 else h / rh) if dialect == "qwen2.5-vl" else (w if i % 2 == 0 else h) / 1000
                assert abs(b - o) <= quantum / 2 + 1e-6, (coords, back, source)
            xs, ys = back[0::2], back[1::2]
            inside = dark[round(min(ys)):round(max(ys)), round(min(xs)):round(max(xs))]
            assert inside.mean() > 0.1, (coords, back)
            checked += 1
    return checked


@pytest.mark.parametrize("dialect", DIALECTS)
def test_kie_and_ocr_samples_land_on_the_source_quads(dialect):
    row = wildreceipt_row()
    quads = [t["quad"] for t in row["annotations"]["texts"] if not t["ignore"]]
    cfg = BuildConfig(dialect=dialect, min_pixels=3136, max_pixels=1003520)
    kie = build("kie", row, cfg)
    fields = [s["annotations"]["field"] for s in kie]
    assert fields[:3] == ["Store_name_value", "Store_addr_value", "Tel_value"]
    assert all(f.endswith("_value") for f in fields)
    items = next(s for s in kie if s["annotations"]["field"] == "Prod_item_value")
    assert "Find the prod item in the image" in message_text(items["messages"][0])
    answer = message_text(items["messages"][1])
    assert [t["text"] for t in items["annotations"]["texts"]] == ["BIBIM.OCTOPUT1", "S-FOODP.CAKT1",
                                                                 "PORKDUMPLINT1", "LABEEFRIBT1"]
    assert all(t in answer for t in ("BIBIM.OCTOPUT1", "LABEEFRIBT1"))
    ocr = build("ocr", row, BuildConfig(dialect=dialect, min_pixels=3136, max_pixels=1003520,
                                        options={"tasks": ["read", "locate", "spot"]}))
    assert ocr[0]["meta"]["task"] == "read"
    assert message_text(ocr[0]["messages"][1]).splitlines()[0] == "CHOEUN"
    image = FORMATS / "wildreceipt" / "2.jpeg"
    assert assert_shapes_on_source(kie, quads, image) == 17
    assert assert_shapes_on_source([s for s in ocr if s["meta"]["task"] != "read"], quads, image) >= 40
    assert build("kie", {**row, "annotations": {**row["annotations"], "texts": []}}, cfg) == "no_key_fields"


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


JOBS = {  # format: (recipe, extra --set, builder samples expected, images per sample)
    "flickr30k": ("flickr30k", [], 1, 1),
    "coco_captions": ("flickr30k", ["input.format=coco_captions"], 1, 1),
    "snli_ve": ("snli_ve", [], 1, 1),
    "nlvr2": ("nlvr2", [], 2, 2),
    "wildreceipt": ("wildreceipt", [], 10, 1),
    "wildreceipt_ocr": ("wildreceipt", ["format.builder=ocr", "format.options={}"], None, 1),
    "visual_genome_qa": ("visual_genome_qa", [], 5, 1),
    "gqa": ("gqa", [], 1, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(JOBS))
def test_job_end_to_end(ray_local, tokenizer_dir, tmp_path, fmt):
    recipe_name, sets, n_samples, n_images = JOBS[fmt]
    path = broken_copy(fmt, tmp_path)
    recipe = load_recipe(str(REPO / "jobs" / "recipes" / f"{recipe_name}.yaml"),
                         [f"format.tokenizer={tokenizer_dir}", f"input.path={path}", *sets])
    out = tmp_path / "job"
    run_job(recipe, str(out), log=lambda m: None)
    stats = json.loads((out / "stats.json").read_text())
    kept, dropped = EXPECTED[fmt.removesuffix("_ocr")]
    assert stats["records_in"] == kept + len(dropped)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(r["drop_reason"] for r in rejects if r["drop_stage"] == "read") == dropped
    samples = shard_samples(out)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) == len(samples) and samples
    if n_samples is not None:
        assert len(samples) == n_samples
    for doc, images in samples.values():
        assert len(images) == n_images == len(doc["meta"]["image_sizes"])
        assert [list(Image.open(io.BytesIO(b)).size) for b in images] == doc["meta"]["image_sizes"]
        assert doc["messages"][1]["role"] == "assistant" and message_text(doc["messages"][1]).strip()
    docs = [d for d, _ in samples.values()]
    if fmt in ("flickr30k", "coco_captions"):
        (doc,) = docs
        assert message_text(doc["messages"][1]) in (
            "A girl with brown hair sits on the edge of a cement area overlooking water.",
            "Two cats sleeping on a pink couch.")
    if fmt in ("snli_ve", "nlvr2", "visual_genome_qa", "gqa"):
        answers = sorted(message_text(d["messages"][1]) for d in docs)
        assert answers == {"snli_ve": ["entailment"], "nlvr2": ["false", "false"], "gqa": ["yes"],
                           "visual_genome_qa": ["A teddy bear", "Glass", "In a room", "Purple", "Sailboats"]}[fmt]
    if fmt.startswith("wildreceipt"):
        quads = [a["box"] for a in json.loads((FORMATS / "wildreceipt" / "data.txt").read_text())["annotations"]
                 if a["text"].strip()]
        grounded = [{"messages": d["messages"], "meta": d["meta"], "annotations": d["annotations"]}
                    for d in docs if (d.get("annotations") or {}).get("grounding")]
        assert assert_shapes_on_source(grounded, quads, FORMATS / "wildreceipt" / "2.jpeg") >= 17


@pytest.mark.parametrize(("fmt", "path"), [
    ("gqa", FORMATS / "gqa" / "questions1.json"),
    ("visual_genome_qa", FORMATS / "visual_genome_qa" / "question_answers.json"),
    ("vqav2", REPO / "tests" / "data" / "qa" / "vqav2" / "questions.json")])
def test_question_text_is_capped_like_captions(fmt, path):
    """input.max_caption_bytes caps a question as it caps a caption: caption_too_long, the text dropped."""
    full = [r for r in rows(path, fmt) if not r["drop_reason"]]
    cap = min(len(r["text"].encode()) for r in full)  # the shortest question passes, every longer one is cut
    capped = {r["id"]: r for r in rows(path, fmt, max_caption_bytes=cap)}
    for r in full:
        over = len(r["text"].encode()) > cap
        assert capped[r["id"]]["drop_reason"] == ("caption_too_long" if over else None), r["text"]
        assert (capped[r["id"]]["text"] is None) == over
