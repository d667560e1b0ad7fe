"""Task readers (grounding, OCR, QA, video) on the real dev samples in tests/data, without Ray."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from formatters.builders import BuildConfig, build, message_text
from pipeline.readers import READERS, iter_rows
from pipeline.readers.grounding import _load_refs
from pipeline.readers.qa import last_boxed, most_common, normalize_number
from pipeline.recipe import InputSpec, RecipeError
from pipeline.schema import make_id, rows_to_table, table_to_rows
from tests.media import qwen_vl_utils_video

DATA = Path(__file__).resolve().parents[1] / "data"
COCO = DATA / "grounding_coco"
ICDAR = DATA / "ocr_icdar2015"
QA = DATA / "qa"
CODE = DATA / "code"
SINTEL = DATA / "video" / "sintel_5s.mp4"


def rows(path, fmt, **kw) -> list[dict]:
    return list(iter_rows(InputSpec(path=str(path), format=fmt, **kw)))


def reasons(rs) -> list:
    return [r["drop_reason"] for r in rs]


def test_formats_registered():
    for fmt in ("coco", "refcoco", "icdar2015", "vqav2", "gsm8k", "math", "humaneval", "qa_jsonl", "video"):
        assert hasattr(READERS[fmt], "plan") and hasattr(READERS[fmt], "read")


# ------------------------------------------------------------------------------------------------ COCO


def test_coco_39769_six_objects_as_corners():
    (row,) = rows(COCO / "instances.json", "coco")
    doc = json.loads((COCO / "instances.json").read_text())
    assert row["drop_reason"] is None
    assert row["id"] == make_id("instances.json", 39769) and row["source"] == "instances.json#39769"
    assert row["images"] == [(COCO / "000000039769.png").read_bytes()]
    assert row["meta"] == {"image_id": 39769, "file_name": "000000039769.png", "dropped_objects": 0}
    ann = row["annotations"]
    assert (ann["width"], ann["height"]) == (640, 480)
    objs = ann["objects"]
    assert len(objs) == 6
    assert [o["ann_id"] for o in objs] == sorted(a["id"] for a in doc["annotations"])
    names = {c["id"]: c["name"] for c in doc["categories"]}
    by_id = {a["id"]: a for a in doc["annotations"]}
    for o in objs:
        a = by_id[o["ann_id"]]
        x, y, w, h = a["bbox"]
        assert o["bbox"] == pytest.approx([x, y, x + w, y + h], abs=1e-9)  # [x, y, w, h] -> corners
        assert o["category"] == names[a["category_id"]] and o["category_id"] == a["category_id"]
        assert o["iscrowd"] == 0
        assert set(o) == {"bbox", "category", "category_id", "ann_id", "iscrowd"}
    # the first remote: [332.89, 79.57, 38.65, 106.31] -> [332.89, 79.57, 371.54, 185.88], float noise removed
    assert objs[0] == {"bbox": [332.89, 79.57, 371.54, 185.88], "category": "remote", "category_id": 75,
                       "ann_id": 1108446, "iscrowd": 0}
    assert sorted(o["category"] for o in objs) == ["bed", "cat", "cat", "couch", "remote", "remote"]
    # the runner serialises annotations/meta as JSON and reads them back unchanged
    assert table_to_rows(rows_to_table([row]))[0]["annotations"] == ann


def _coco_fixture(tmp_path: Path) -> Path:
    doc = json.loads((COCO / "instances.json").read_text())
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    shutil.copy(COCO / "000000039769.png", img_dir / "a.png")
    shutil.copy(COCO / "000000039769.png", img_dir / "b.png")
    doc["images"] = [
        {"id": 3, "file_name": "missing.png", "width": 640, "height": 480},
        {"id": 1, "file_name": "a.png", "width": 640, "height": 480},
        {"id": 2, "file_name": "b.png"},  # no size: read from the image header
    ]
    anns = [
        {"id": 10, "image_id": 1, "bbox": [10, 10, 0, 5], "category_id": 17, "iscrowd": 0},  # w <= 0
        {"id": 11, "image_id": 1, "bbox": [600, 10, 45, 5], "category_id": 17, "iscrowd": 0},  # 5 px outside
        {"id": 12, "image_id": 1, "bbox": [-0.5, 0, 640.9, 480.5], "category_id": 65, "iscrowd": 1},  # within 1 px
        {"id": 13, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 999, "iscrowd": 0},  # unknown category
        {"id": 14, "image_id": 1, "bbox": "broken", "category_id": 17, "iscrowd": 0},
        {"id": 9, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 17, "iscrowd": 0},
        {"id": 20, "image_id": 2, "bbox": [1, 2, -3, 4], "category_id": 17, "iscrowd": 0},
    ]
    doc["annotations"] = anns
    path = tmp_path / "ann" / "inst.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    return path


def test_coco_broken_objects_missing_file_and_partitions(tmp_path):
    path = _coco_fixture(tmp_path)
    rs = rows(path, "coco", partition_rows=2, options={"image_dir": str(tmp_path / "images")})
    assert [r["meta"]["image_id"] for r in rs] == [1, 2, 3]  # sorted by image id
    assert reasons(rs) == [None, None, "missing_file"]
    assert all(r["drop_stage"] in (None, "read") for r in rs) and rs[2]["drop_stage"] == "read"
    one = rs[0]
    assert [o["ann_id"] for o in one["annotations"]["objects"]] == [9, 12]
    assert one["annotations"]["objects"][0]["bbox"] == [1.0, 2.0, 4.0, 6.0]
    assert one["annotations"]["objects"][1]["iscrowd"] == 1
    assert one["meta"]["dropped_objects"] == 4
    two = rs[1]  # no usable object: still a row, the builder decides
    assert two["annotations"] == {"width": 640, "height": 480, "objects": []}
    assert two["meta"]["dropped_objects"] == 1
    # image_dir defaults to the JSON's folder
    assert reasons(rows(path, "coco")) == ["missing_file"] * 3
    with pytest.raises(RecipeError, match="input.options.imgdir"):
        rows(path, "coco", options={"imgdir": "x"})


# ------------------------------------------------------------------------------------------------ RefCOCO


def _refcoco_fixture(tmp_path: Path) -> Path:
    """A refs(unc).p in the structure RefCOCO distributes, over the dev COCO instances (ids as in the file)."""
    folder = tmp_path / "refcoco"
    folder.mkdir()
    shutil.copy(COCO / "instances.json", folder / "instances.json")
    anns = sorted(json.loads((COCO / "instances.json").read_text())["annotations"], key=lambda a: a["id"])
    cats = {a["id"]: a["category_id"] for a in anns}
    said = {1108446: ["remote on the right", "the right remote"],  # ann ids of the dev file
            1110067: ["left remote"]}
    cat_ids = [a["id"] for a in anns if a["category_id"] == 17]
    said[cat_ids[0]] = ["cat on the left"]
    refs, sent_id = [], 0
    for ref_id, (ann_id, sents) in enumerate(sorted(said.items(), key=lambda kv: -kv[0])):
        sentences = []
        for s in sents:
            sentences.append({"tokens": s.split(), "raw": s.upper(), "sent_id": sent_id, "sent": s})
            sent_id += 1
        refs.append({"sent_ids": [x["sent_id"] for x in sentences],
                     "file_name": f"COCO_train2014_000000039769_{ann_id}.jpg", "ann_id": ann_id,
                     "ref_id": ref_id, "image_id": 39769, "split": "val", "sentences": sentences,
                     "category_id": cats[ann_id]})
    # a ref to an annotation that does not exist, and one of another split on an image not in instances
    refs.append({"sent_ids": [99], "file_name": "x.jpg", "ann_id": 1, "ref_id": 50, "image_id": 39769,
                 "split": "val", "sentences": [{"tokens": ["x"], "raw": "x", "sent_id": 99, "sent": "x"}],
                 "category_id": 17})
    refs.append({"sent_ids": [100], "file_name": "y.jpg", "ann_id": 2, "ref_id": 51, "image_id": 5,
                 "split": "train", "sentences": [{"tokens": ["y"], "raw": "y", "sent_id": 100, "sent": "y"}],
                 "category_id": 17})
    path = folder / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path


def test_refcoco_from_generated_pickle(tmp_path):
    path = _refcoco_fixture(tmp_path)
    (row,) = rows(path, "refcoco", options={"split": "val", "image_dir": str(COCO)})
    assert row["drop_reason"] is None
    assert row["id"] == make_id("refs(unc).p", 39769)
    assert row["images"] == [(COCO / "000000039769.png").read_bytes()]
    objs = row["annotations"]["objects"]
    assert [o["ann_id"] for o in objs] == sorted(o["ann_id"] for o in objs)
    assert len(objs) == 3  # only referred objects; the ref to a missing annotation is dropped
    assert row["meta"]["dropped_objects"] == 1 and row["meta"]["split"] == "val"
    first = next(o for o in objs if o["ann_id"] == 1108446)
    assert first["phrases"] == ["remote on the right", "the right remote"]
    assert first["bbox"] == [332.89, 79.57, 371.54, 185.88] and first["category"] == "remote"
    assert set(first) == {"bbox", "category", "category_id", "ann_id", "iscrowd", "phrases", "ref_id"}
    assert {o["ref_id"] for o in objs} == {0, 1, 2}
    # all splits: the train ref's image is not in instances.json -> a reject, not an exception
    rs = rows(path, "refcoco", options={"image_dir": str(COCO)})
    assert reasons(rs) == ["missing_image_entry", None]  # images sorted by id: 5, 39769
    # images default to the instances file's folder (no image there)
    assert reasons(rows(path, "refcoco", options={"split": "val"})) == ["missing_file"]


def test_refcoco_python2_pickle_and_no_code():
    # what Python 2's cPickle wrote: byte strings (SHORT_BINSTRING), decoded as UTF-8
    py2 = b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x05caf\xc3\xa9q\x03ua."
    assert _load_refs(py2, "x") == [{"sent": "café"}]
    evil = b"cos\nsystem\n(S'echo hi'\ntR."
    with pytest.raises(RecipeError, match="not a RefCOCO refs pickle"):
        _load_refs(evil, "evil.p")


# ------------------------------------------------------------------------------------------------ ICDAR 2015


def test_icdar2015_dev_files():
    rs = rows(ICDAR, "icdar2015")
    assert [r["source"] for r in rs] == [f"imgs/img_{i}.jpg" for i in range(1, 6)]
    assert all(r["drop_reason"] is None for r in rs)
    assert rs[0]["id"] == make_id("imgs/img_1.jpg", "img_1")
    first = rs[0]
    assert (ICDAR / "gt" / "gt_img_1.txt").read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM is there
    texts = first["annotations"]["texts"]
    assert texts[0] == {"quad": [377, 117, 463, 117, 465, 130, 378, 130], "text": "Genaxis Theatre", "ignore": False}
    assert [t["text"] for t in texts] == ["Genaxis Theatre", "[06]", "###", "62-03", "Carpark", "###", "###"]
    assert [t["ignore"] for t in texts] == [False, False, True, False, False, True, True]
    assert (first["annotations"]["width"], first["annotations"]["height"]) == (1280, 720)
    assert first["images"] == [(ICDAR / "imgs" / "img_1.jpg").read_bytes()]
    assert first["meta"] == {"file_name": "img_1.jpg", "gt_file": "gt_img_1.txt", "bad_lines": 0}
    assert [len(r["annotations"]["texts"]) for r in rs] == [7, 2, 13, 3, 2]


def test_icdar2015_commas_crlf_bad_lines_and_rejects(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gt").mkdir()
    for i in (1, 2, 3, 4):
        shutil.copy(ICDAR / "imgs" / "img_1.jpg", tmp_path / "imgs" / f"img_{i}.jpg")
    (tmp_path / "imgs" / "img_5.jpg").write_bytes(b"not a jpeg")
    gt = ("\ufeff10,20,30,20,30,40,10,40,Hello, world, again\r\n"
          "1,2,3\r\n"
          "a,2,3,4,5,6,7,8,text\r\n"
          "\r\n"
          "5,6,7,8,9,10,11,12,###\r\n")
    (tmp_path / "gt" / "gt_img_1.txt").write_bytes(gt.encode("utf-8"))
    (tmp_path / "gt" / "gt_img_2.txt").write_bytes(b"")
    (tmp_path / "gt" / "gt_img_3.txt").write_bytes(b"1,2,3,4,5,6,7,8,\xff\n")
    # img_4 has no gt file; img_5 is not an image
    (tmp_path / "gt" / "gt_img_5.txt").write_text("1,2,3,4,5,6,7,8,x\n")
    rs = rows(tmp_path, "icdar2015", partition_rows=2)
    assert reasons(rs) == [None, None, "invalid_utf8", "missing_file", "decode_error"]
    texts = rs[0]["annotations"]["texts"]
    assert texts == [{"quad": [10, 20, 30, 20, 30, 40, 10, 40], "text": "Hello, world, again", "ignore": False},
                     {"quad": [5, 6, 7, 8, 9, 10, 11, 12], "text": "###", "ignore": True}]
    assert rs[0]["meta"]["bad_lines"] == 2
    assert rs[1]["annotations"]["texts"] == [] and rs[1]["meta"]["bad_lines"] == 0
    # gt_dir / image_dir overrides
    other = tmp_path / "labels"
    shutil.copytree(tmp_path / "gt", other)
    rs2 = rows(tmp_path, "icdar2015", options={"gt_dir": str(other), "image_dir": str(tmp_path / "imgs")})
    assert [r["annotations"] for r in rs2] == [r["annotations"] for r in rs]


# ------------------------------------------------------------------------------------------------ VQA v2


def test_vqav2_most_common_answer():
    rs = rows(QA / "vqav2" / "questions.json", "vqav2")
    assert [r["answer"] for r in rs] == ["net", "pitcher", "orange"]
    assert [r["text"] for r in rs][0] == "What is this photo taken looking through?"
    first = rs[0]
    assert first["id"] == make_id("questions.json", 458752000)
    assert first["images"] == [(QA / "vqav2" / "COCO_train2014_000000458752.jpg").read_bytes()]
    assert first["annotations"]["answers"] == ["net", "net", "net", "netting", "net", "net", "mesh", "net",
                                               "pitcher", "orange"]
    assert first["annotations"]["question_id"] == 458752000
    assert set(first["annotations"]) == {"answers", "question_id", "answer_type", "question_type"}
    assert first["meta"] == {"image_id": 458752, "file_name": "COCO_train2014_000000458752.jpg",
                             "split": "train2014"}
    assert most_common(["b", "a", "a", "b", "c"]) == "b"  # tie -> the first in answer order


def test_vqav2_ties_missing_answers_missing_image(tmp_path):
    q = json.loads((QA / "vqav2" / "questions.json").read_text())
    a = json.loads((QA / "vqav2" / "annotations.json").read_text())
    q["questions"].append({"image_id": 458752, "question": "Tie?", "question_id": 7})
    q["questions"].append({"image_id": 458752, "question": "Unanswered?", "question_id": 8})
    q["questions"].append({"image_id": 1, "question": "No image?", "question_id": 9})
    tie = ["yes", "no", "no", "yes", "maybe"] + [f"x{i}" for i in range(5)]
    a["annotations"].append({"question_id": 7, "answers": [{"answer": s, "answer_id": i + 1} for i, s in enumerate(tie)],
                             "answer_type": "yes/no", "question_type": "is", "multiple_choice_answer": "yes"})
    a["annotations"].append({"question_id": 9, "answers": [{"answer": "z"}] * 10})
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "ann.json").write_text(json.dumps(a))
    spec = {"options": {"annotations": str(tmp_path / "ann.json"), "image_dir": str(QA / "vqav2")}}
    rs = rows(tmp_path / "q.json", "vqav2", partition_rows=2, **spec)
    assert reasons(rs) == [None, None, None, None, "no_answers", "missing_file"]
    assert rs[3]["answer"] == "yes"
    assert rs[3]["annotations"]["answer_type"] == "yes/no" and rs[3]["annotations"]["question_type"] == "is"
    assert rs[3]["meta"]["multiple_choice_answer"] == "yes"
    # questions only (test-dev): no answers, no drop
    rs = rows(tmp_path / "q.json", "vqav2", options={"annotations": None, "image_dir": str(QA / "vqav2")})
    assert [r["answer"] for r in rs[:3]] == [None] * 3 and reasons(rs)[:5] == [None] * 5
    with pytest.raises(RecipeError, match="input.options.annotations"):
        rows(tmp_path / "q.json", "vqav2")  # no annotations file beside q.json


# ------------------------------------------------------------------------------------------------ GSM8K / MATH


def test_gsm8k_final_answer():
    rs = rows(QA / "gsm8k_test_first10.jsonl", "gsm8k")
    assert len(rs) == 10 and all(r["drop_reason"] is None for r in rs)
    src = [json.loads(line) for line in (QA / "gsm8k_test_first10.jsonl").read_text().splitlines()]
    for r, s in zip(rs, src, strict=True):
        assert r["answer"] == s["answer"].split("####")[-1].strip().replace(",", "")
        assert r["text"] == s["question"] and r["images"] == []
        # the rationale without its calculator annotations
        assert r["meta"]["solution"] == re.sub(r"<<[^>]*>>", "", s["answer"].split("####")[0]).strip()
        assert "<<" in s["answer"] and "<<" not in r["meta"]["solution"]
    assert rs[0]["answer"] == "18" and rs[1]["answer"] == "3"
    assert rs[0]["meta"]["solution"] == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                                         "She makes 9 * 2 = $18 every day at the farmer’s market.")
    assert rs[0]["id"] == make_id("gsm8k_test_first10.jsonl", 1)


def test_gsm8k_normalisation_and_rejects(tmp_path):
    lines = [json.dumps({"question": "q1", "answer": "a\n#### 1,600"}),
             json.dumps({"question": "q2", "answer": "no marker"}),
             "{broken",
             json.dumps({"question": "q3"}),
             json.dumps({"question": "q4", "answer": "x #### $12.00"})]
    (tmp_path / "g.jsonl").write_text("\n".join(lines) + "\n")
    rs = rows(tmp_path / "g.jsonl", "gsm8k", partition_rows=2)
    assert reasons(rs) == [None, "no_final_answer", "invalid_json", "missing_field", None]
    assert rs[0]["answer"] == "1600" and rs[4]["answer"] == "12"
    assert normalize_number(" -3.50 ") == "-3.50" and normalize_number("007") == "7"


def test_math500_answer_field_and_boxed():
    rs = rows(QA / "math500_first10.jsonl", "math")
    src = [json.loads(line) for line in (QA / "math500_first10.jsonl").read_text().splitlines()]
    assert all(r["drop_reason"] is None for r in rs)
    assert [r["answer"] for r in rs] == [s["answer"] for s in src]
    assert rs[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rs[0]["meta"]["subject"] == "Precalculus" and rs[0]["meta"]["level"] == 2
    assert rs[0]["id"] == make_id("math500_first10.jsonl", "test/precalculus/807.json")
    # the boxed content of the solution, nested braces kept whole
    assert last_boxed(src[0]["solution"]) == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert last_boxed(src[2]["solution"]) == "\\frac{14}{3}"


def test_math_boxed_extraction(tmp_path):
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{a^{2}}{b_{1}}}.") == "\\frac{a^{2}}{b_{1}}"
    assert last_boxed("so \\boxed{\\{1, 2\\}} ok") == "\\{1, 2\\}"
    assert last_boxed("so $\\boxed 5$") == "5"
    assert last_boxed("\\fbox{x}") == "x"
    assert last_boxed("\\boxed{unbalanced") is None
    assert last_boxed("nothing") is None
    src = [json.loads(line) for line in (QA / "math500_first10.jsonl").read_text().splitlines()]
    lines = []
    for s in src[:3]:  # as Hendrycks MATH ships it: no answer field, "Level N", "type"
        lines.append(json.dumps({"problem": s["problem"], "solution": s["solution"], "level": f"Level {s['level']}",
                                 "type": s["subject"]}))
    lines.append(json.dumps({"problem": "p", "solution": "no box here"}))
    lines.append(json.dumps({"problem": "p", "solution": "\\boxed{1"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))  # no final newline
    rs = rows(tmp_path / "m.jsonl", "math")
    assert reasons(rs) == [None, None, None, "no_final_answer", "no_final_answer"]
    assert [r["answer"] for r in rs[:3]] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "p - q", "\\frac{14}{3}"]
    assert rs[1]["meta"]["level"] == 5 and rs[1]["meta"]["subject"] == "Intermediate Algebra"


def qa_targets(rs: list[dict], **options) -> list[str]:
    """The assistant text of the qa builder's one sample per row."""
    out = []
    for r in rs:
        samples = build("qa", r, BuildConfig(options=options))
        assert not isinstance(samples, str), samples
        out.append(message_text(samples[0]["messages"][1]))
    return out


def test_gsm8k_solution_targets_end_in_the_boxed_answer():
    rs = rows(QA / "gsm8k_test_first10.jsonl", "gsm8k")
    assert qa_targets(rs)[:2] == ["18", "3"]  # default answer_style: final, as before
    targets = qa_targets(rs, answer_style="solution")
    assert targets[0] == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                          "She makes 9 * 2 = $18 every day at the farmer’s market.\n\\boxed{18}")
    for r, t in zip(rs, targets, strict=True):
        *body, last = t.split("\n")
        assert last == f"\\boxed{{{r['answer']}}}" and last_boxed(t) == r["answer"]
        assert "\n".join(body) == r["meta"]["solution"] and "<<" not in t and len(body) >= 2


def test_math_solution_targets_are_the_solutions_with_the_answer_checked(tmp_path):
    src = [json.loads(line) for line in (QA / "math500_first10.jsonl").read_text().splitlines()]
    rs = rows(QA / "math500_first10.jsonl", "math")
    assert qa_targets(rs) == [s["answer"] for s in src]
    targets = qa_targets(rs, answer_style="solution")
    assert targets == [s["solution"] for s in src]  # as is: each one's last \boxed{} is its answer field
    assert [last_boxed(t) for t in targets] == [s["answer"] for s in src]
    # Hendrycks MATH (no answer field) likewise; a MATH-500 answer field that disagrees with the solution's box
    # is a reject, and a solution without a box gets the answer field boxed as its last line
    lines = [{"problem": src[0]["problem"], "solution": src[0]["solution"], "level": "Level 2", "type": "Algebra"},
             {**src[1], "answer": "q - p"},
             {**src[2], "solution": "Add them up: 2 + 5/3 + 1 = 14/3."}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rs = rows(tmp_path / "m.jsonl", "math")
    cfg = BuildConfig(options={"answer_style": "solution"})
    assert message_text(build("qa", rs[0], cfg)[0]["messages"][1]) == src[0]["solution"]
    assert build("qa", rs[1], cfg) == "solution_answer_mismatch"
    assert message_text(build("qa", rs[2], cfg)[0]["messages"][1]) == ("Add them up: 2 + 5/3 + 1 = 14/3.\n"
                                                                       "\\boxed{\\frac{14}{3}}")


# ------------------------------------------------------------------------------------------------ HumanEval, qa_jsonl


def humaneval_program(prompt: str, completion: str, rec: dict) -> str:
    return f"{prompt}{completion}\n\n{rec['test']}\n\ncheck({rec['entry_point']})\n"


def run_python(program: str) -> int:
    return subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60).returncode


def test_humaneval_samples_are_the_programs_all_164():
    """The qa builder keeps prompt and answer exactly: user + assistant text is the program (it lost its first
    indentation before: 0 of 164 compiled); a few canonical solutions pass their own tests, a wrong one fails."""
    src = [json.loads(line) for line in gzip.open(CODE / "HumanEval.jsonl.gz", "rt")]
    rs = rows(CODE / "HumanEval.jsonl.gz", "humaneval")
    assert len(rs) == len(src) == 164 and all(r["drop_reason"] is None for r in rs)
    compiled = []
    for r, s in zip(rs, src, strict=True):
        user, answer = (message_text(m) for m in build("qa", r, BuildConfig())[0]["messages"])
        assert (user, answer) == (s["prompt"], s["canonical_solution"])
        compiled.append(compile(user + answer, s["task_id"], "exec") is not None)
    assert sum(compiled) == 164
    for i in (0, 2, 53, 163):
        user, answer = (message_text(m) for m in build("qa", rs[i], BuildConfig())[0]["messages"])
        assert run_python(humaneval_program(user, answer, src[i])) == 0, src[i]["task_id"]
    assert run_python(humaneval_program(src[2]["prompt"], "    return number\n", src[2])) != 0


def test_humaneval_fields(tmp_path):
    rs = rows(CODE / "HumanEval_first5.jsonl", "humaneval")
    src = [json.loads(line) for line in (CODE / "HumanEval_first5.jsonl").read_text().splitlines()]
    assert len(rs) == 5 and all(r["drop_reason"] is None for r in rs)
    for r, s in zip(rs, src, strict=True):
        assert r["text"] == s["prompt"] and r["answer"] == s["canonical_solution"] and r["images"] == []
        assert r["annotations"] == {"test": s["test"], "entry_point": s["entry_point"], "task_id": s["task_id"]}
        assert r["id"] == make_id("HumanEval_first5.jsonl", s["task_id"])
    assert rs[0]["annotations"]["entry_point"] == "has_close_elements"
    # gzip as distributed (HumanEval.jsonl.gz); a record without its test is a reject
    bad = {k: v for k, v in src[0].items() if k != "test"}
    data = (CODE / "HumanEval_first5.jsonl").read_bytes() + (json.dumps(bad) + "\n").encode()
    (tmp_path / "HumanEval.jsonl.gz").write_bytes(gzip.compress(data))
    rs = rows(tmp_path / "HumanEval.jsonl.gz", "humaneval", partition_rows=4)
    assert reasons(rs) == [None] * 5 + ["missing_field"]
    assert rs[4]["annotations"]["task_id"] == "HumanEval/4"


def test_qa_jsonl_image_optional(tmp_path):
    shutil.copy(QA / "vqav2" / "COCO_train2014_000000458752.jpg", tmp_path / "p.jpg")
    lines = [{"image": "p.jpg", "question": "What sport?", "answer": "baseball", "src": "x"},
             {"question": "2+2?", "answer": 4},
             {"image": "gone.jpg", "question": "?", "answer": "?"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rs = rows(tmp_path / "qa.jsonl", "qa_jsonl")
    assert reasons(rs) == [None, None, "missing_file"]
    assert rs[0]["images"] == [(tmp_path / "p.jpg").read_bytes()]
    assert (rs[0]["text"], rs[0]["answer"], rs[0]["meta"]["src"]) == ("What sport?", "baseball", "x")
    assert rs[1]["images"] == [] and (rs[1]["text"], rs[1]["answer"]) == ("2+2?", "4")
    # explicit columns win over the defaults
    rs = rows(tmp_path / "qa.jsonl", "qa_jsonl", text_column="answer", answer_column="question")
    assert (rs[0]["text"], rs[0]["answer"]) == ("baseball", "What sport?")


# ------------------------------------------------------------------------------------------------ video


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def test_video_matches_qwen_vl_utils(monkeypatch):
    pytest.importorskip("decord")
    ref, meta, sample_fps = qwen_vl_utils_video(SINTEL, monkeypatch)
    assert meta["video_backend"] == "decord"

    (row,) = rows(SINTEL, "video")
    assert row["drop_reason"] is None
    assert row["id"] == make_id("sintel_5s.mp4", "sintel_5s") and row["source"] == "sintel_5s.mp4"
    v = row["meta"]["video"]
    n, _, h, w = ref.shape
    assert v["path"] == "sintel_5s.mp4" and v["total_frames"] == 120 and v["video_fps"] == 24.0
    assert v["frame_indices"] == meta["frames_indices"] == [0, 13, 26, 40, 53, 66, 79, 93, 106, 119]
    assert v["sample_fps"] == pytest.approx(sample_fps) == 2.0
    assert (v["resized_height"], v["resized_width"]) == (h, w) == (476, 840)
    assert v["grid_thw"] == [n // 2, h // 14, w // 14] == [5, 34, 60]
    assert v["n_tokens"] == (n // 2) * (h // 28) * (w // 28) == 2550
    assert v["second_per_grid_t"] == pytest.approx(2 / sample_fps)
    assert row["meta"]["width"] == 854 and row["meta"]["height"] == 480
    assert len(row["images"]) == n == 10
    torch = pytest.importorskip("torch")
    expected = ref.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # fetch_video's frames as uint8
    for png, exp in zip(row["images"], expected, strict=True):
        got = _decode_png(png)
        assert got.shape == (476, 840, 3)
        assert int(np.abs(got.astype(np.int16) - exp.astype(np.int16)).max()) <= 1


def test_video_chunked_decode_is_identical():
    pytest.importorskip("decord")
    from pipeline.readers.video import decode_video

    full, info = decode_video(str(SINTEL), {"nframes": 6, "min_pixels": 32 * 28 * 28, "max_pixels": 64 * 28 * 28})
    chunked, info2 = decode_video(str(SINTEL), {"nframes": 6, "min_pixels": 32 * 28 * 28, "max_pixels": 64 * 28 * 28}, chunk=4)
    assert full == chunked and info == info2
    assert info["video"]["frame_indices"] == [0, 24, 48, 71, 95, 119]
    assert info["video"]["resized_height"] * info["video"]["resized_width"] <= 64 * 28 * 28


def test_video_jsonl_folder_and_rejects(tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "clips").mkdir()
    shutil.copy(SINTEL, tmp_path / "clips" / "a.mp4")
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    lines = [{"video": "clips/a.mp4", "caption": "snowy mountains", "license": "CC BY 3.0"},
             {"video": "clips/a.mp4", "question": "What is it?", "answer": "mountains", "nframes": 4},
             {"video": "clips/gone.mp4", "caption": "x"},
             {"video": "clips/broken.mp4", "caption": "y"},
             {"caption": "no video"}]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    opts = {"min_pixels": 32 * 28 * 28, "max_pixels": 100 * 28 * 28, "videos_per_partition": 2}
    rs = rows(tmp_path / "v.jsonl", "video", options=opts)
    assert reasons(rs) == [None, None, "missing_file", "decode_error", "no_video"]
    assert [r["id"] for r in rs] == [make_id("v.jsonl", i) for i in range(1, 6)]
    assert (rs[0]["text"], rs[0]["answer"], rs[0]["meta"]["license"]) == ("snowy mountains", None, "CC BY 3.0")
    assert (rs[1]["text"], rs[1]["answer"]) == ("What is it?", "mountains")
    assert len(rs[0]["images"]) == 10 and len(rs[1]["images"]) == 4  # a record may override the plan
    assert rs[0]["meta"]["video"]["path"] == "clips/a.mp4"
    assert rs[0]["meta"]["video_limits"]["max_pixels"] == 100 * 28 * 28
    v = rs[0]["meta"]["video"]
    assert v["resized_height"] * v["resized_width"] <= 100 * 28 * 28
    assert _decode_png(rs[0]["images"][0]).shape == (v["resized_height"], v["resized_width"], 3)
    # a folder: every video, sorted, broken ones rejected
    rs = rows(tmp_path / "clips", "video", options={"nframes": 2, "min_pixels": 32 * 28 * 28,
                                                      "max_pixels": 64 * 28 * 28})
    assert [r["source"] for r in rs] == ["a.mp4", "broken.mp4"]
    assert reasons(rs) == [None, "decode_error"] and rs[1]["drop_stage"] == "read"
    with pytest.raises(RecipeError, match="input.options.fpss"):
        rows(tmp_path / "clips", "video", options={"fpss": 1})
    with pytest.raises(RecipeError, match="input.options.max_pixels"):
        rows(tmp_path / "clips", "video", options={"max_pixels": 64 * 28 * 28})


def test_gqa_questions(tmp_path):
    (tmp_path / "images").mkdir()
    src = DATA / "qa" / "vqav2" / "COCO_train2014_000000458752.jpg"
    (tmp_path / "images" / "2354786.jpg").write_bytes(src.read_bytes())
    questions = {
        "02930152": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes",
                     "fullAnswer": "Yes, the sky is dark.", "types": {"structural": "verify"}},
        "07333408": {"imageId": "2354786", "question": "What is on the table?", "answer": "plate"},
        "07333409": {"imageId": "999", "question": "What color is it?", "answer": "red"},
        "07333410": {"imageId": "2354786", "question": "No answer here"},
    }
    (tmp_path / "val_balanced_questions.json").write_text(json.dumps(questions))
    rs = rows(tmp_path / "val_balanced_questions.json", "gqa", partition_rows=3)
    assert [(r["text"], r["answer"]) for r in rs[:2]] == [("Is the sky dark?", "yes"), ("What is on the table?", "plate")]
    assert rs[0]["images"] == [src.read_bytes()]
    assert rs[0]["annotations"]["full_answer"] == "Yes, the sky is dark."
    assert rs[0]["id"] == make_id("val_balanced_questions.json", "02930152")
    assert [r["drop_reason"] for r in rs[2:]] == ["missing_file", "missing_field"]
