"""Dialects read back (formatters/regions.py) and drawn (formatters/draw.py): random geometry written in every
dialect parses back within one quantum; the dev COCO image shows its boxes where the annotation puts them."""

from __future__ import annotations

import io
from itertools import groupby
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from formatters.builders import BuildConfig, build, render_template
from formatters.draw import COLORS, draw_shapes, render_sample, thumbnail
from formatters.qwen import (
    DIALECTS,
    convert_box,
    convert_point,
    convert_quad,
    format_box_text,
    format_json_boxes,
    format_quad_text,
    smart_resize,
)
from formatters.regions import Geometry, find_regions, sample_regions, to_pixels

COCO = Path(__file__).resolve().parents[1] / "data" / "grounding_coco"
LIMITS = (3136, 1003520)


def quantum(dialect: str, orig: tuple[int, int], stored: tuple[int, int], lo: int, hi: int) -> tuple[float, float]:
    """One step of the dialect's coordinates, in stored pixels (x, y)."""
    if dialect == "qwen2.5-vl":
        rh, rw = smart_resize(orig[1], orig[0], 28, lo, hi)
        return stored[0] / rw, stored[1] / rh
    return stored[0] / 1000, stored[1] / 1000


@st.composite
def geometry(draw):
    w, h = draw(st.integers(30, 3000)), draw(st.integers(30, 3000))
    if max(w, h) / min(w, h) > 150:
        h = w
    pre_resized = draw(st.booleans())
    rh, rw = smart_resize(h, w, 28, *LIMITS)
    stored = (rw, rh) if pre_resized else (w, h)
    return w, h, stored


def coords_in(draw, w: int, h: int, n: int) -> list[float]:
    return [draw(st.floats(0, w if i % 2 == 0 else h, allow_nan=False)) for i in range(n)]


def check(parsed: list[float], original: list[float], w: int, h: int, stored, q) -> None:
    for i, (got, want) in enumerate(zip(parsed, original, strict=True)):
        scale = stored[0] / w if i % 2 == 0 else stored[1] / h
        assert abs(got - want * scale) <= q[i % 2] + 1e-6, (i, got, want * scale, q)


@given(geometry(), st.sampled_from(DIALECTS), st.data())
def test_boxes_round_trip_within_one_quantum(geo, dialect, data) -> None:
    w, h, stored = geo
    raw = coords_in(data.draw, w, h, 4)
    box = [min(raw[0], raw[2]), min(raw[1], raw[3]), max(raw[0], raw[2]), max(raw[1], raw[3])]
    coords = convert_box(box, w, h, dialect, *LIMITS)
    # the answer form (ref + box, or JSON bbox_2d) and the prompt form (no ref; a bare list for qwen2.5-vl)
    texts = [format_box_text("a red car", coords, dialect), render_template("<bbox>", [], [coords], dialect)]
    g = Geometry(stored, (w, h), *LIMITS)
    q = quantum(dialect, (w, h), stored, *LIMITS)
    for k, text in enumerate(texts):
        regions = find_regions(f"Here: {text} done.", dialect)
        assert len(regions) == 1, text
        assert regions[0].kind == "box"
        assert regions[0].phrase == ("a red car" if k == 0 else "")
        check(to_pixels(regions[0], g), box, w, h, stored, q)


@given(geometry(), st.sampled_from(["qwen-vl", "qwen2-vl"]), st.data())
def test_quads_round_trip_within_one_quantum(geo, dialect, data) -> None:
    w, h, stored = geo
    quad = coords_in(data.draw, w, h, 8)
    text = format_quad_text("EXIT", convert_quad(quad, w, h, dialect, *LIMITS), dialect)
    (region,) = find_regions(text, dialect)
    assert (region.kind, region.phrase) == ("quad", "EXIT")
    check(to_pixels(region, Geometry(stored, (w, h), *LIMITS)), quad, w, h, stored,
          quantum(dialect, (w, h), stored, *LIMITS))


@given(geometry(), st.data())
def test_json_points_and_boxes_round_trip(geo, data) -> None:
    w, h, stored = geo
    point = coords_in(data.draw, w, h, 2)
    box = sorted(coords_in(data.draw, w, w, 2)) + sorted(coords_in(data.draw, h, h, 2))
    box = [box[0], box[2], box[1], box[3]]
    items = [("dog", convert_point(point, w, h, "qwen2.5-vl", *LIMITS)),
             ('a "quoted" sign', convert_box(box, w, h, "qwen2.5-vl", *LIMITS))]
    regions = find_regions(format_json_boxes(items, label_key="text_content"), None)
    assert [(r.kind, r.phrase) for r in regions] == [("point", "dog"), ("box", 'a "quoted" sign')]
    g = Geometry(stored, (w, h), *LIMITS)
    q = quantum("qwen2.5-vl", (w, h), stored, *LIMITS)
    check(to_pixels(regions[0], g), point, w, h, stored, q)
    check(to_pixels(regions[1], g), box, w, h, stored, q)


def coco_row() -> dict:
    """The dev COCO image 39769 with its six instances (corner boxes, COCO names)."""
    import json

    doc = json.loads((COCO / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    objects = [{"bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                "category": names[a["category_id"]], "ann_id": a["id"], "iscrowd": a["iscrowd"]}
               for a in doc["annotations"]]
    return {"id": "coco39769", "images": [(COCO / "000000039769.png").read_bytes()], "text": None,
            "annotations": {"width": 640, "height": 480, "objects": objects}, "meta": {}}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_builder_samples_parse_back_to_their_annotated_shapes(dialect) -> None:
    """Every shape of every built COCO sample (ref, region, detect) is found, with its phrase, in the order
    of annotations.grounding, within one quantum of the annotated box."""
    samples = build("grounding", coco_row(), BuildConfig(dialect=dialect, min_pixels=LIMITS[0],
                                                         max_pixels=LIMITS[1]))
    assert len(samples) >= 10
    for s in samples:
        found = sample_regions(s["messages"], dialect)
        want = s["annotations"]["grounding"]
        assert len(found) == len(want["bbox"])
        stored = tuple(s["meta"]["image_sizes"][0])
        g = Geometry.of(s["meta"], 0, stored)
        q = quantum(dialect, (640, 480), stored, *LIMITS)
        for (_, region), box in zip(found, want["bbox"], strict=True):
            check(to_pixels(region, g), box, 640, 480, stored, q)
        if s["meta"]["task"] == "region":  # the box in the prompt is labelled with the answer's phrase
            assert found[0][1].phrase == s["messages"][1]["content"][0]["text"]
        else:
            # qwen-vl / qwen2-vl write one ref before all of its boxes; JSON repeats the label per box
            phrases = [k for k, _ in groupby(r.phrase for _, r in found)]
            assert phrases == [k for k, _ in groupby(r.replace('\\"', '"') for r in want["ref"])]


@pytest.mark.parametrize("dialect", ["qwen2-vl", "qwen2.5-vl"])
def test_coco_render_draws_the_outline_where_the_annotation_puts_it(dialect) -> None:
    """The 'every cat' sample, rendered: on each cat's annotated box edge the pixels are the drawn colour;
    8 px outside the box they are the photo's own (pre-resized image: stored pixels, not original ones)."""
    samples = build("grounding", coco_row(), BuildConfig(dialect=dialect, min_pixels=LIMITS[0],
                                                         max_pixels=200_000))
    (cats,) = [s for s in samples if s["meta"]["task"] == "detect"
               and "every cat " in s["messages"][0]["content"][-1]["text"]]
    stored_bytes = cats["images"][0]
    photo = Image.open(io.BytesIO(stored_bytes)).convert("RGB")
    assert photo.size != (640, 480)  # pre-resized: the drawing must scale the boxes
    g = Geometry.of(cats["meta"], 0, photo.size)
    shapes = [(r.kind, to_pixels(r, g), r.phrase) for _, r in sample_regions(cats["messages"], dialect)]
    drawn = draw_shapes(photo, shapes)
    sx, sy = photo.width / 640, photo.height / 480
    assert len(cats["annotations"]["objects"]) == 2
    for k, obj in enumerate(cats["annotations"]["objects"]):
        x1, y1, x2, y2 = obj["bbox"][0] * sx, obj["bbox"][1] * sy, obj["bbox"][2] * sx, obj["bbox"][3] * sy
        ym = round((y1 + y2) / 2)
        for x in (x1, x2):  # left and right edges at mid height: the 2-px outline lies within a quantum (1 px) of them
            probes = {min(max(round(x) + dx, 0), photo.width - 1) for dx in (-2, -1, 0, 1)}
            hits = [drawn.getpixel((px, ym)) == COLORS[k] for px in probes]
            assert any(hits), (k, x, ym)
            outside = (round(x - 8) if x == x1 else round(x + 8), ym)
            if 0 <= outside[0] < photo.width:
                assert drawn.getpixel(outside) == photo.getpixel(outside)
    # the whole picture (image + conversation) is drawn too
    picture = render_sample(cats, [stored_bytes])
    assert picture.width >= photo.width and picture.height > photo.height


def test_thumbnail_is_small_and_decodes() -> None:
    data = (COCO / "000000039769.png").read_bytes()
    thumb = thumbnail(data, 128)
    im = Image.open(io.BytesIO(thumb))
    assert im.format == "JPEG" and max(im.size) == 128 and im.size == (128, 96)
    assert thumbnail(b"not an image") is None


def test_video_sample_renders_as_a_strip_of_its_frames() -> None:
    from tests import media

    frames = [media.encode(media.photo(112, 84, s), "JPEG") for s in range(4)]
    doc = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a thing"}]}],
           "meta": {"video": {"frame_indices": [0, 12, 24, 36], "video_fps": 24.0}}}
    im = render_sample(doc, frames)
    assert im.width == 4 * 160 + 3 * 6  # four frames scaled to 120 px high, side by side
    one = render_sample({**doc, "meta": {}}, frames[:1])
    assert one.width < im.width


def test_span_bar_puts_each_member_at_its_tokens():
    from formatters.draw import BACKGROUND, UNFILLED, pack_sheet, span_bar

    bar = span_bar([(0, 100), (100, 250), (250, 400)], 500, 500)
    row = [bar.getpixel((x, 10)) for x in range(500)]
    assert row[50] == COLORS[0] and row[99] == COLORS[0]
    assert row[100] == BACKGROUND and row[101] == COLORS[1] and row[249] == COLORS[1]
    assert row[251] == COLORS[2] and row[399] == COLORS[2] and row[400] == UNFILLED and row[499] == UNFILLED
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo, "PNG")
    sheet = pack_sheet([(photo.getvalue(), "a", 0, 100), (None, "b", 100, 250)], 500, "pack x")
    colors = {c for _, c in sheet.getcolors(1 << 24)}
    assert {COLORS[0], COLORS[1], (10, 200, 30), UNFILLED} <= colors
