"""Sample builders (formatters/builders.py): exact dialect texts, targets, reading order, determinism, resize."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from formatters.builders import (
    BUILDERS,
    DESCRIBE_PROMPTS,
    VQA_SUFFIX,
    BuildConfig,
    build,
    message_text,
    options_for,
    reading_order,
    render_template,
)
from formatters.qwen import box_to_pixels, convert_box, convert_quad, smart_resize
from tests import media

HF_DEFAULT_MAX = 28 * 28 * 1280


def png(w: int, h: int, seed: int = 0) -> bytes:
    return media.encode(media.photo(w, h, seed), "PNG")


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    return media.encode(media.photo(w, h, seed), "JPEG", quality=90)


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def texts(sample: dict) -> list[str]:
    return [message_text(m) for m in sample["messages"]]


def coco_row(objects: list[dict], w: int = 640, h: int = 428, data: bytes | None = None, rid: str = "a1") -> dict:
    return {"id": rid, "images": [data or png(w, h)], "text": None, "answer": None,
            "annotations": {"width": w, "height": h, "objects": objects},
            "meta": {"image_id": 7, "file_name": "x.png"}}


def obj(bbox, category="cat", ann_id=1, **kw) -> dict:
    return {"bbox": list(bbox), "category": category, "category_id": 17, "ann_id": ann_id, "iscrowd": 0, **kw}


def by_task(samples: list[dict], task: str) -> list[dict]:
    return [s for s in samples if s["meta"]["task"] == task]


# ----------------------------------------------------------------------------------------------------------
# grounding


WORKED = [146, 137, 615, 415]  # SPEC §2: 640x428 -> qwen2-vl [228, 320, 961, 970]; qwen2.5-vl [147, 134, 619, 407]


def test_grounding_texts_exactly_as_each_dialect() -> None:
    row = coco_row([obj(WORKED)])
    got = {}
    for dialect in ("qwen-vl", "qwen2-vl", "qwen2.5-vl"):
        samples = build("grounding", row, BuildConfig(dialect=dialect))
        got[dialect] = {s["meta"]["task"]: texts(s) for s in samples}
    assert got["qwen2.5-vl"]["ref"] == [
        "Locate the cat in the image. Output its bbox coordinates in JSON format.",
        '```json\n[\n\t{"bbox_2d": [147, 134, 619, 407], "label": "cat"}\n]\n```',
    ]
    assert got["qwen2-vl"]["ref"] == [
        "Locate the cat in the image.",
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(228,320),(961,970)<|box_end|>",
    ]
    assert got["qwen-vl"]["ref"] == ["Locate the cat in the image.", "<ref>cat</ref><box>(228,320),(960,969)</box>"]
    assert got["qwen2.5-vl"]["region"] == ["Describe the region [147, 134, 619, 407] with a short phrase.", "cat"]
    assert got["qwen2-vl"]["region"] == [
        "Describe the region <|box_start|>(228,320),(961,970)<|box_end|> with a short phrase.", "cat"]
    assert got["qwen-vl"]["region"] == ["Describe the region <box>(228,320),(960,969)</box> with a short phrase.",
                                        "cat"]
    assert got["qwen2.5-vl"]["detect"] == [
        "Locate every cat in the image. Output the bbox coordinates in JSON format.",
        '```json\n[\n\t{"bbox_2d": [147, 134, 619, 407], "label": "cat"}\n]\n```',
    ]
    assert got["qwen2-vl"]["detect"][1] == got["qwen2-vl"]["ref"][1]


def test_grounding_sample_layout_and_resize_limits_recorded() -> None:
    row = coco_row([obj(WORKED)])
    for lo, hi in [(3136, 16384 * 784), (3136, HF_DEFAULT_MAX), (3136, 100_000)]:
        cfg = BuildConfig(dialect="qwen2.5-vl", min_pixels=lo, max_pixels=hi)
        samples = build("grounding", row, cfg)
        rh, rw = smart_resize(428, 640, 28, lo, hi)
        for s in samples:
            assert set(s) == {"messages", "images", "meta", "annotations"}
            m = s["meta"]
            assert (m["min_pixels"], m["max_pixels"], m["dialect"], m["builder"]) == (lo, hi, "qwen2.5-vl", "grounding")
            assert m["image_id"] == 7 and m["file_name"] == "x.png"  # parent meta kept
            assert m["image_sizes"] == [[rw, rh]] and m["original_sizes"] == [[640, 428]] and m["pre_resized"]
            assert size_of(s["images"][0]) == (rw, rh)
            assert s["messages"][0]["content"][0] == {"type": "image"}
            assert s["annotations"]["width"] == 640 and s["annotations"]["objects"][0]["bbox"] == WORKED
        ref = by_task(samples, "ref")[0]
        coords = convert_box(WORKED, 640, 428, "qwen2.5-vl", lo, hi)
        assert f'"bbox_2d": {coords}' in texts(ref)[1]


def test_pre_resize_keeps_the_format_family_and_can_be_turned_off() -> None:
    src = jpeg(640, 428)
    row = coco_row([obj(WORKED)], data=src)
    stored = build("grounding", row, BuildConfig())[0]["images"][0]
    assert stored[:3] == b"\xff\xd8\xff" and size_of(stored) == (644, 420)
    stored = build("grounding", coco_row([obj(WORKED)]), BuildConfig())[0]["images"][0]
    assert stored[:8] == b"\x89PNG\r\n\x1a\n" and size_of(stored) == (644, 420)
    off = build("grounding", row, BuildConfig(pre_resize=False))[0]
    assert off["images"][0] == src and off["meta"]["image_sizes"] == [[640, 428]] and not off["meta"]["pre_resized"]
    # qwen-vl has its own geometry: never pre-resized
    assert build("grounding", row, BuildConfig(dialect="qwen-vl"))[0]["images"][0] == src
    # an image already at W'xH' is kept byte for byte
    exact = png(644, 420)
    s = build("grounding", coco_row([obj(WORKED)], 644, 420, exact), BuildConfig())[0]
    assert s["images"][0] == exact and not s["meta"]["pre_resized"]


def test_grounding_targets_crowd_degenerate_and_ambiguous() -> None:
    objects = [
        obj([10, 10, 100, 100], "dog", 1),
        obj([200, 10, 300, 100], "dog", 2),
        obj([10, 200, 100, 300], "person", 3),
        obj([150, 200, 400, 400], "person", 4, iscrowd=1),  # crowd: never a target
        obj([50, 50, 50, 90], "cup", 5),  # degenerate: never a target
        obj([400, 300, 500, 400], "cup", 6),
        obj([500, 10, 600, 100], "kite", 7),
    ]
    samples = build("grounding", coco_row(objects), BuildConfig(dialect="qwen2-vl"))
    refs = [texts(s)[0] for s in by_task(samples, "ref")]
    assert refs == ["Locate the kite in the image."]  # dogs: two; person/cup: incomplete (crowd / broken box)
    detect = [texts(s)[0] for s in by_task(samples, "detect")]
    assert detect == ["Locate every dog in the image.", "Locate every kite in the image."]
    regions = by_task(samples, "region")
    assert sorted(o["ann_id"] for s in regions for o in s["annotations"]["objects"]) == [1, 2, 3, 6, 7]
    dogs = by_task(samples, "detect")[0]
    assert [o["ann_id"] for o in dogs["annotations"]["objects"]] == [1, 2]  # top-to-bottom, left-to-right
    assert texts(dogs)[1].count("<|box_start|>") == 2


def test_refcoco_phrases_and_options() -> None:
    objects = [
        obj([10, 10, 200, 200], "cat", 1, ref_id=11, phrases=["left cat", "cat on the left", "left cat"]),
        obj([300, 10, 600, 400], "cat", 2, ref_id=12, phrases=["right cat", "cat"]),
        obj([10, 250, 200, 420], "dog", 3, ref_id=13, phrases=["cat"]),  # "cat" names two objects: skipped
    ]
    row = coco_row(objects)
    samples = build("grounding", row, BuildConfig(dialect="qwen2.5-vl", options={"tasks": ["ref"]}))
    phrases = [s["annotations"]["grounding"]["ref"][0] for s in samples]
    assert phrases == ["left cat", "cat on the left", "right cat"]
    one = build("grounding", row, BuildConfig(options={"tasks": ["ref"], "phrases_per_object": 1}))
    assert [s["annotations"]["grounding"]["ref"][0] for s in one] == ["left cat", "right cat"]
    capped = build("grounding", row, BuildConfig(options={"tasks": ["region"], "max_per_task": 2}))
    assert len(capped) == 2 and capped == build("grounding", row, BuildConfig(options={"tasks": ["region"],
                                                                                       "max_per_task": 2}))
    region = build("grounding", row, BuildConfig(options={"tasks": ["region"]}))
    answers = {s["annotations"]["objects"][0]["ann_id"]: texts(s)[1] for s in region}
    assert answers[1] in ("left cat", "cat on the left") and answers[3] == "cat"


def test_grounding_drop_reasons() -> None:
    assert build("grounding", coco_row([]), BuildConfig()) == "no_objects"
    assert build("grounding", coco_row([obj([5, 5, 5, 50])]), BuildConfig()) == "no_objects"
    assert build("grounding", coco_row([obj([1, 1, 9, 9], iscrowd=1)]), BuildConfig()) == "no_objects"
    row = coco_row([obj(WORKED)])
    assert build("grounding", {**row, "images": []}, BuildConfig()) == "no_image"
    assert build("grounding", {**row, "images": [b"not an image"]}, BuildConfig()) == "decode_error"
    assert build("grounding", {**row, "images": [png(100, 100), png(100, 100)]}, BuildConfig()) == \
        "expected_one_image"
    bad = {**row, "annotations": {**row["annotations"], "width": 320}}
    assert build("grounding", bad, BuildConfig()) == "annotation_size_mismatch"


# ----------------------------------------------------------------------------------------------------------
# OCR


def quad(x1, y1, x2, y2) -> list[int]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def ocr_row(regions: list[tuple], w: int = 1280, h: int = 720) -> dict:
    texts_ = [{"quad": q, "text": t, "ignore": t == "###"} for q, t in regions]
    return {"id": "o1", "images": [jpeg(w, h)], "annotations": {"width": w, "height": h, "texts": texts_},
            "meta": {"file_name": "img_1.jpg"}}


def test_reading_order_groups_lines_with_tolerance() -> None:
    quads = [
        quad(500, 102, 600, 122),  # line 1, right (slightly lower)
        quad(100, 100, 200, 120),  # line 1, left
        quad(100, 200, 180, 220),  # line 3
        quad(300, 96, 400, 118),   # line 1, middle (slightly higher)
        quad(50, 150, 150, 170),   # line 2
    ]
    assert reading_order(quads) == [[1, 3, 0], [4], [2]]
    assert reading_order(quads, line_tolerance=0.05) == [[3], [1], [0], [4], [2]]
    assert reading_order([]) == []


def test_ocr_texts_and_ignore_regions_never_targets() -> None:
    regions = [
        (quad(377, 117, 465, 130), "Genaxis Theatre"),
        (quad(493, 115, 519, 131), "[06]"),
        (quad(374, 155, 409, 170), "###"),
        (quad(492, 151, 551, 170), "62-03"),
        (quad(376, 198, 422, 212), "Carpark"),
        (quad(494, 190, 539, 206), "###"),
        (quad(600, 300, 640, 320), "EXIT"),
        (quad(700, 300, 740, 320), "EXIT"),  # twice: not unique, so no "locate" sample for it
    ]
    row = ocr_row(regions)
    row["annotations"]["texts"][1]["ignore"] = True  # an ignore flag without ### is honoured as well
    cfg = BuildConfig(dialect="qwen2-vl", options={"tasks": ["read", "locate", "recognize", "spot"]})
    samples = build("ocr", row, cfg)
    read = by_task(samples, "read")[0]
    assert texts(read) == ["Read all the text in the image.", "Genaxis Theatre\n62-03\nCarpark\nEXIT EXIT"]
    for s in samples:
        assert "###" not in json.dumps(s["messages"]) and "[06]" not in json.dumps(s["messages"])
        assert all(not t["ignore"] and t["text"] != "###" for t in s["annotations"]["texts"])
    locate = by_task(samples, "locate")
    assert [s["annotations"]["texts"][0]["text"] for s in locate] == ["Genaxis Theatre", "62-03", "Carpark"]
    q = convert_quad(quad(377, 117, 465, 130), 1280, 720, "qwen2-vl")
    assert texts(locate[0]) == [
        'Locate the text "Genaxis Theatre" in the image.',
        "<|object_ref_start|>Genaxis Theatre<|object_ref_end|><|quad_start|>"
        + ",".join(f"({q[i]},{q[i + 1]})" for i in range(0, 8, 2)) + "<|quad_end|>",
    ]
    recognize = by_task(samples, "recognize")
    assert len(recognize) == 5 and texts(recognize[0])[1] == "Genaxis Theatre"
    assert texts(recognize[0])[0].startswith("What does the text in the region <|quad_start|>(")
    spot = by_task(samples, "spot")[0]
    assert texts(spot)[1].count("<|quad_start|>") == 5 and texts(spot)[1].count("\n") == 4


def test_ocr_qwen25_json_boxes_of_quads() -> None:
    row = ocr_row([(quad(377, 117, 465, 130), "Genaxis"), (quad(492, 151, 551, 170), "62-03")])
    samples = build("ocr", row, BuildConfig(options={"tasks": ["locate", "recognize", "spot"]}))
    box = convert_box([377, 117, 465, 130], 1280, 720, "qwen2.5-vl")
    locate = by_task(samples, "locate")[0]
    assert texts(locate) == [
        'Locate the text "Genaxis" in the image. Output its bbox coordinates in JSON format.',
        f'```json\n[\n\t{{"bbox_2d": {box}, "text_content": "Genaxis"}}\n]\n```',
    ]
    assert texts(by_task(samples, "recognize")[0])[0] == f"What does the text in the region {box} say?"
    spot = texts(by_task(samples, "spot")[0])[1]
    assert json.loads(spot.removeprefix("```json\n").removesuffix("\n```"))[1]["text_content"] == "62-03"
    assert size_of(locate["images"][0]) == (1288, 728)


def test_ocr_drop_reasons_and_default_tasks() -> None:
    assert build("ocr", ocr_row([(quad(1, 1, 9, 9), "###")]), BuildConfig()) == "no_text_regions"
    assert build("ocr", ocr_row([]), BuildConfig()) == "no_text_regions"
    samples = build("ocr", ocr_row([(quad(10, 10, 90, 30), "A")]), BuildConfig())
    assert [s["meta"]["task"] for s in samples] == ["read", "locate", "recognize"]


@pytest.mark.parametrize("dialect", ["qwen-vl", "qwen2-vl", "qwen2.5-vl"])
def test_templates_render_back_to_the_messages(dialect: str) -> None:
    """The ms-swift style template (placeholders + refs + original-pixel boxes) reproduces each text."""
    row = coco_row([obj(WORKED, ann_id=1, phrases=['the "big" cat']), obj([10, 10, 60, 80], "cup", 2),
                    obj([100, 10, 160, 80], "cup", 3)])
    orow = ocr_row([(quad(377, 117, 465, 130), "Genaxis"), (quad(492, 151, 551, 170), "62-03")])
    cfg = BuildConfig(dialect=dialect, max_pixels=HF_DEFAULT_MAX,
                      options={"tasks": ["read", "locate", "recognize", "spot"]})
    samples = build("grounding", row, BuildConfig(dialect=dialect, max_pixels=HF_DEFAULT_MAX))
    samples += build("ocr", orow, cfg)
    n = 0
    for s in samples:
        g = s["annotations"].get("grounding")
        if g is None:
            continue
        (w, h), = s["meta"]["original_sizes"]
        conv = [convert_box(b, w, h, dialect, cfg.min_pixels, cfg.max_pixels) if len(b) == 4
                else convert_quad(b, w, h, dialect, cfg.min_pixels, cfg.max_pixels) for b in g["bbox"]]
        joined = render_template("\x00".join(g["template"]), g["ref"], conv, dialect).split("\x00")
        assert joined == texts(s), (dialect, s["meta"]["task"])
        n += 1
    assert n >= 8


# ----------------------------------------------------------------------------------------------------------
# captions, VQA, QA, video


def test_caption_sft_prompt_is_deterministic_by_row_id() -> None:
    def prompt(rid: str) -> str:
        row = {"id": rid, "images": [png(64, 48)], "text": "  A cat on a mat. ", "meta": {}}
        s = build("caption_sft", row, BuildConfig())[0]
        assert texts(s)[1] == "A cat on a mat."
        return texts(s)[0]

    assert prompt("r1") == prompt("r1")
    seen = {prompt(f"r{i}") for i in range(60)}
    assert seen <= set(DESCRIBE_PROMPTS) and len(seen) >= 4
    custom = build("caption_sft", {"id": "x", "images": [png(64, 48)], "text": "c"},
                   BuildConfig(options={"prompts": ["Caption it."]}))[0]
    assert texts(custom)[0] == "Caption it." and custom["meta"]["prompt"] == "Caption it."
    assert build("caption_sft", {"id": "x", "images": [png(64, 48)], "text": " "}, BuildConfig()) == "no_caption"


def test_caption_pretrain_layout() -> None:
    s = build("caption_pretrain", {"id": "p", "images": [png(300, 200)], "text": "A cat."}, BuildConfig())[0]
    assert s["meta"]["layout"] == "pretrain"
    assert s["messages"] == [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "A cat."}]}]
    assert s["meta"]["image_sizes"] == [[308, 196]] and s["meta"]["original_sizes"] == [[300, 200]]


def test_multi_image_samples_put_every_image_in_one_user_turn() -> None:
    row = {"id": "m", "images": [png(300, 200, 1), jpeg(200, 300, 2), png(224, 224, 3)],
           "text": "Which image is brightest?", "answer": "the first", "meta": {"k": 1}}
    s = build("vqa", row, BuildConfig())[0]
    user = s["messages"][0]
    assert user["role"] == "user" and [p["type"] for p in user["content"]] == ["image", "image", "image", "text"]
    assert texts(s) == ["Which image is brightest?" + VQA_SUFFIX, "the first"]
    assert s["meta"]["image_sizes"] == [[308, 196], [196, 308], [224, 224]]
    assert [size_of(b) for b in s["images"]] == [(308, 196), (196, 308), (224, 224)]
    assert s["images"][2] == row["images"][2]  # already 224x224: kept as is
    assert len(s["meta"]["original_sizes"]) == 3 and s["meta"]["k"] == 1
    cap = build("caption_sft", {**row, "text": "three photos"}, BuildConfig())[0]
    assert [p["type"] for p in cap["messages"][0]["content"]].count("image") == 3
    assert texts(cap)[0] in BUILDERS["caption_sft"].options["multi_image_prompts"]


def test_vqa_and_qa() -> None:
    row = {"id": "v", "images": [jpeg(320, 240)], "text": "What color?", "answer": "red",
           "annotations": {"answers": ["red"] * 10, "question_id": 5}, "meta": {}}
    s = build("vqa", row, BuildConfig(options={"prompt_suffix": ""}))[0]
    assert texts(s) == ["What color?", "red"] and s["annotations"]["question_id"] == 5
    assert build("vqa", {**row, "answer": None}, BuildConfig()) == "no_answer"
    assert build("vqa", {**row, "images": []}, BuildConfig()) == "no_image"
    q = build("qa", {"id": "g", "images": [], "text": "1+1?", "answer": "2", "meta": {"solution": "..."}},
              BuildConfig())[0]
    assert q["messages"] == [{"role": "user", "content": [{"type": "text", "text": "1+1?"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]
    assert q["images"] == [] and q["meta"]["image_sizes"] == [] and q["meta"]["solution"] == "..."
    assert build("qa", {"id": "g", "text": "prompt", "answer": None}, BuildConfig()) == "no_answer"


def test_qa_keeps_code_and_markdown_exactly() -> None:
    prompt, body = 'def f(x):\n    """Double x."""\n', "    y = 2 * x\n    return y\n"
    s = build("qa", {"id": "c", "text": prompt, "answer": body}, BuildConfig())[0]
    assert texts(s) == [prompt, body]
    namespace: dict = {}
    exec(compile("".join(texts(s)), "f", "exec"), namespace)
    assert namespace["f"](21) == 42
    md = "    indented code block\n\n- item\n  - nested\n"
    assert texts(build("qa", {"id": "m", "text": "  Explain:\n", "answer": md}, BuildConfig())[0]) == ["  Explain:\n", md]
    assert build("qa", {"id": "b", "text": " \n\t", "answer": "x"}, BuildConfig()) == "no_question"


def test_qa_answer_style_solution() -> None:
    cfg = BuildConfig(options={"answer_style": "solution"})

    def target(solution, answer: str = "5") -> str | list:
        out = build("qa", {"id": "s", "text": "2+3?", "answer": answer, "meta": {"solution": solution}}, cfg)
        return out if isinstance(out, str) else texts(out[0])[1]

    assert target("2 + 3 = 5.\n") == "2 + 3 = 5.\n\\boxed{5}"  # no box: the answer boxed on a last line
    assert target("So it is $\\boxed{5}$.") == "So it is $\\boxed{5}$."  # its box holds the answer: as is
    assert target("$\\boxed{\\frac{1}{2}}$", "\\frac{1} {2}") == "$\\boxed{\\frac{1}{2}}$"  # spaces aside
    assert target("first \\boxed{5}, then \\boxed{6}") == "solution_answer_mismatch"
    assert target("\\boxed{5") == "unbalanced_boxed"
    assert target(None) == target("  ") == "no_solution"
    assert options_for("qa", None)["answer_style"] == "final"
    with pytest.raises(ValueError, match=r"^answer_style: expected one of final, solution \(got 'cot'\)$"):
        options_for("qa", {"answer_style": "cot"})


def test_video_builder() -> None:
    frames = [png(644, 364, i) for i in range(4)]
    plan = {"path": "a.mp4", "grid_thw": [2, 26, 46], "resized_width": 644, "resized_height": 364,
            "sample_fps": 2.0, "second_per_grid_t": 1.0, "n_tokens": 598}
    row = {"id": "vid", "images": frames, "text": "A person walks.", "answer": None, "meta": {"video": plan}}
    s = build("video", row, BuildConfig())[0]
    assert s["meta"]["task"] == "video_caption" and s["images"] == frames
    assert [p["type"] for p in s["messages"][0]["content"]] == ["video", "text"]
    assert texts(s) == ["Describe this video.", "A person walks."] and s["meta"]["video"] == plan
    qa = build("video", {**row, "text": "What happens?", "answer": "walking"}, BuildConfig())[0]
    assert qa["meta"]["task"] == "video_qa" and texts(qa) == ["What happens?", "walking"]
    assert build("video", {**row, "images": frames[:3]}, BuildConfig()) == "video_frames_mismatch"
    assert build("video", {**row, "meta": {}}, BuildConfig()) == "no_video_plan"


def test_options_are_validated() -> None:
    assert options_for("grounding", {})["tasks"] == ["ref", "region", "detect"]
    with pytest.raises(ValueError, match=r"^foo: unknown option for builder grounding \(allowed: "):
        options_for("grounding", {"foo": 1})
    with pytest.raises(ValueError, match="^tasks: "):
        options_for("ocr", {"tasks": ["detect"]})
    with pytest.raises(ValueError, match="^max_per_task: "):
        options_for("ocr", {"max_per_task": 0})
    with pytest.raises(ValueError, match="unknown builder"):
        build("nope", {}, BuildConfig())
    with pytest.raises(ValueError, match="dialect"):
        BuildConfig(dialect="qwen3-vl")


def test_box_round_trip_through_a_built_sample() -> None:
    """The box written in a sample converts back to the original box within half a quantum."""
    for dialect in ("qwen-vl", "qwen2-vl", "qwen2.5-vl"):
        s = by_task(build("grounding", coco_row([obj(WORKED)]), BuildConfig(dialect=dialect)), "ref")[0]
        nums = [int(v) for v in re.findall(r"\d+", texts(s)[1])]
        back = box_to_pixels(nums[-4:], 640, 428, dialect)
        sw, sh = (1000, 1000) if dialect != "qwen2.5-vl" else s["meta"]["image_sizes"][0]
        for i, (a, b) in enumerate(zip(back, WORKED, strict=True)):
            assert abs(a - b) <= (640 / sw if i % 2 == 0 else 428 / sh) / 2 + 1e-9


def test_thin_images_whose_target_is_unstable_are_stored_as_they_came():
    """SPEC §3: a 1900x25 line under max 50176 resizes to 1932x28 (over max_pixels by the factor floor), which
    smart_resize would shrink again; a 5890x33 strip resizes past aspect ratio 200. Both keep their original."""
    from formatters.builders import BuildConfig, prepare_images
    from formatters.qwen import smart_resize
    from tests.media import encode, photo

    for (w, h), (lo, hi) in [((1900, 25), (784, 50176)), ((5890, 33), (3136, 12845056))]:
        data = encode(photo(w, h, 1), "PNG")
        cfg = BuildConfig(dialect="qwen2.5-vl", min_pixels=lo, max_pixels=hi, pre_resize=True, options={})
        stored, sizes, originals = prepare_images([data], cfg)
        assert stored == [data] and sizes == originals == [[w, h]]
        th, tw = smart_resize(h, w, 28, lo, hi)
        try:
            assert smart_resize(th, tw, 28, lo, hi) != (th, tw)
        except ValueError:
            pass  # past aspect ratio 200 once resized
    normal = encode(photo(333, 222, 2), "PNG")
    cfg = BuildConfig(dialect="qwen2.5-vl", min_pixels=3136, max_pixels=1003520, pre_resize=True, options={})
    assert prepare_images([normal], cfg)[1] == [[336, 224]]
