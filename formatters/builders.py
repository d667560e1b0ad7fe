"""Sample builders: one source record -> Qwen2-VL / Qwen2.5-VL training samples (DESIGN.md, formatters/).

Pure functions, no storage access: ``build(row, cfg) -> list[sample] | reason``, one per builder name, all
listed in ``BUILDERS``. A row is the pipeline's row with its JSON columns parsed (``images`` encoded bytes,
``text``, ``answer``, ``annotations`` / ``meta`` dicts). A sample is

    {"messages": [...],        # Hugging Face chat form: user content = image/video parts then one text part
     "images": [bytes, ...],   # the stored images (pre-resized to W'xH' when cfg.pre_resize)
     "meta": {...parent meta..., "builder", "task", "dialect", "min_pixels", "max_pixels", "pre_resized",
              "image_sizes": [[w, h] stored], "original_sizes": [[w, h]]},
     "annotations": {...the source objects used, in ORIGINAL pixels...}}

Coordinate-bearing samples (grounding, ocr) also carry ``annotations["grounding"]`` = {"template", "ref",
"bbox"}: the messages' texts with every ref / box written as ms-swift's ``<ref-object>`` / ``<bbox>``
placeholders, the refs and the shapes the texts encode (original pixels clipped to the image, 4 numbers; OCR
quads 8) in order of appearance.
``render_template`` fills a template back in a dialect; it reproduces the messages exactly (tested), so
exports and round-trip checks can rely on it.

Caption pretraining samples set ``meta["layout"] = "pretrain"``: they are tokenized with
``tokens.tokenize_caption`` (vision block + caption + ``<|endoftext|>``) instead of the chat template.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from formatters.qwen import (
    DIALECTS,
    FACTOR,
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    convert_box,
    convert_quad,
    format_box_text,
    format_json_boxes,
    format_quad_text,
    smart_resize,
)

Sample = dict[str, Any]
Result = list[Sample] | str

REF_PLACEHOLDER = "<ref-object>"
BBOX_PLACEHOLDER = "<bbox>"
JPEG_QUALITY = 95

DESCRIBE_PROMPTS = (
    "Describe this image.",
    "What is in this image?",
    "Write a short caption for this image.",
    "Describe the image briefly.",
    "Give a one-sentence description of this picture.",
    "What does this picture show?",
)
DESCRIBE_MULTI_PROMPTS = (
    "Describe these images.",
    "What do these images show?",
    "Write a short caption for these images.",
)
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."


@dataclass(frozen=True)
class BuildConfig:
    """How samples are built: the grounding dialect, the image resize limits, pre-resize, builder options.

    ``options`` are the recipe's ``format.options``; each builder fills in its defaults (``BUILDERS``).
    """

    dialect: str = "qwen2.5-vl"
    min_pixels: int = IMAGE_MIN_PIXELS
    max_pixels: int = IMAGE_MAX_PIXELS
    pre_resize: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {self.dialect!r}; expected one of {', '.join(DIALECTS)}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})")


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def pick(pool: Sequence[str], *key: object) -> str:
    """A deterministic choice from ``pool`` by a hash of ``key`` (the row id...): same row, same prompt."""
    if not pool:
        raise ValueError("empty prompt pool")
    digest = hashlib.sha1("\x1f".join(str(k) for k in key).encode("utf-8")).hexdigest()
    return pool[int(digest[:15], 16) % len(pool)]


def _rank(*key: object) -> str:
    return hashlib.sha1("\x1f".join(str(k) for k in key).encode("utf-8")).hexdigest()


def _dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    """A one-line text (caption, short answer, label) with its surrounding whitespace removed."""
    return value.strip() if isinstance(value, str) else ""


def _content(value: Any) -> str:
    """A text kept exactly as it is (code, markdown: leading whitespace matters); "" when blank or not a string."""
    return value if isinstance(value, str) and value.strip() else ""


def _user(text: str, n_images: int = 0, n_videos: int = 0) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "video"}] * n_videos + [{"type": "image"}] * n_images
    return {"role": "user", "content": [*(dict(p) for p in parts), {"type": "text", "text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one message (its text parts joined; a string content as is)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content or [] if isinstance(p, Mapping) and "text" in p)


# ----------------------------------------------------------------------------------------------------------
# Images: sizes and the pre-resize (bytes -> bytes, in memory)


class Reject(Exception):
    """A record that yields no sample: ``reason`` is the snake_case drop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open(data: Any) -> Any:
    from PIL import Image

    if not isinstance(data, bytes | bytearray) or not data:
        raise Reject("no_image")
    try:
        im = Image.open(io.BytesIO(bytes(data)))
        im.size  # noqa: B018 - header parsed
    except Exception:
        raise Reject("decode_error") from None
    return im


def _rgb(im: Any) -> Any:
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def resize_image(data: bytes, width: int, height: int) -> bytes:
    """Resize encoded image bytes to exactly width x height (Pillow BICUBIC, upright RGB) and re-encode
    in the source's format family: JPEG quality 95 for a JPEG, PNG otherwise."""
    from PIL import Image

    im = _open(data)
    fmt = im.format
    try:
        im.load()
        out = _rgb(im).resize((width, height), Image.Resampling.BICUBIC)
    except Reject:
        raise
    except Exception:
        raise Reject("decode_error") from None
    buf = io.BytesIO()
    if fmt == "JPEG":
        out.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        out.save(buf, "PNG")
    return buf.getvalue()


def resize_target(width: int, height: int, cfg: BuildConfig) -> tuple[int, int]:
    """(W', H') the model sees for a width x height image under the config's limits (SPEC §3)."""
    try:
        h, w = smart_resize(height, width, FACTOR, cfg.min_pixels, cfg.max_pixels)
    except ValueError:
        raise Reject("aspect_ratio") from None
    return w, h


def _stable(width: int, height: int, cfg: BuildConfig) -> bool:
    """Whether a W'xH' image stays W'xH' under smart_resize. Very thin images can miss this (the factor floor
    of SPEC §3 step 3 leaves them over max_pixels, or over aspect ratio 200 after rounding): those are stored
    as they came, and the trainer's own resize of the original gives the W'xH' we counted."""
    try:
        return smart_resize(height, width, FACTOR, cfg.min_pixels, cfg.max_pixels) == (height, width)
    except ValueError:
        return False


def prepare_images(images: Sequence[Any], cfg: BuildConfig) -> tuple[list[bytes], list[list[int]], list[list[int]]]:
    """(stored bytes, stored [w, h], original [w, h]) of the record's images.

    With ``pre_resize`` (dialects qwen2-vl and qwen2.5-vl, which share the smart_resize geometry) each image
    is resized to exactly its W'xH' unless it already has that size, so the trainer decodes what we counted
    and Qwen2.5-VL coordinates are pixels of the stored image; unless W'xH' is not a fixed point of
    smart_resize (`_stable`), then the original is stored.
    """
    stored, sizes, originals = [], [], []
    for data in images:
        im = _open(data)
        w, h = im.size
        if w <= 0 or h <= 0:
            raise Reject("decode_error")
        originals.append([w, h])
        tw, th = resize_target(w, h, cfg)
        if cfg.pre_resize and cfg.dialect != "qwen-vl" and (tw, th) != (w, h) and _stable(tw, th, cfg):
            stored.append(resize_image(bytes(data), tw, th))
            sizes.append([tw, th])
        else:
            stored.append(bytes(data))
            sizes.append([w, h])
    return stored, sizes, originals


def _sample(row: Mapping[str, Any], builder: str, task: str, cfg: BuildConfig, messages: list[dict[str, Any]],
            images: list[bytes], sizes: list[list[int]], originals: list[list[int]],
            annotations: Any, **meta: Any) -> Sample:
    return {
        "messages": messages,
        "images": images,
        "meta": {
            **_dict(row.get("meta")),
            "builder": builder,
            "task": task,
            "dialect": cfg.dialect,
            "min_pixels": cfg.min_pixels,
            "max_pixels": cfg.max_pixels,
            "pre_resized": sizes != originals,
            "image_sizes": sizes,
            "original_sizes": originals,
            **meta,
        },
        "annotations": annotations,
    }


def _images_or_reject(row: Mapping[str, Any], cfg: BuildConfig, need: bool = True) -> tuple:
    images = list(row.get("images") or [])
    if need and not images:
        raise Reject("no_image")
    return prepare_images(images, cfg)


# ----------------------------------------------------------------------------------------------------------
# Coordinates in text: the dialect's text and the ms-swift style template from one description


def _ref_text(ref: str, dialect: str) -> str:
    if dialect == "qwen-vl":
        return f"<ref>{ref}</ref>"
    if dialect == "qwen2-vl":
        return f"<|object_ref_start|>{ref}<|object_ref_end|>"
    return ref


def _pairs(coords: Sequence[int]) -> str:
    return ",".join(f"({coords[i]},{coords[i + 1]})" for i in range(0, len(coords), 2))


def _bbox_text(coords: Sequence[int], dialect: str) -> str:
    if dialect == "qwen-vl":
        tag = ("<quad>", "</quad>") if len(coords) == 8 else ("<box>", "</box>")
        return f"{tag[0]}{_pairs(coords)}{tag[1]}"
    if dialect == "qwen2-vl":
        tag = ("<|quad_start|>", "<|quad_end|>") if len(coords) == 8 else ("<|box_start|>", "<|box_end|>")
        return f"{tag[0]}{_pairs(coords)}{tag[1]}"
    return str([int(c) for c in coords])


def render_template(template: str, refs: Sequence[str], coords: Sequence[Sequence[int]], dialect: str) -> str:
    """Fill ``<ref-object>`` / ``<bbox>`` placeholders in order with refs and dialect coordinates, the way
    ms-swift's templates do for the dialect (qwen-vl ``<ref>``/``<box>``, qwen2-vl special tokens, qwen2.5-vl
    the plain ref and ``[x1, y1, x2, y2]``); 8-number shapes render as quads."""
    refs_it, coords_it = iter(refs), iter(coords)

    def fill(m: re.Match[str]) -> str:
        if m.group(0) == REF_PLACEHOLDER:
            return _ref_text(next(refs_it), dialect)
        return _bbox_text(next(coords_it), dialect)

    return re.sub(re.escape(REF_PLACEHOLDER) + "|" + re.escape(BBOX_PLACEHOLDER), fill, template)


def _json_ref(label: str) -> str:
    """The label as it appears between the quotes of format_json_boxes' JSON (escaped)."""
    return json.dumps(label, ensure_ascii=False)[1:-1]


@dataclass
class _Grounded:
    """A text with coordinates: the dialect's text, its template, refs and original-pixel boxes in order."""

    text: str
    template: str
    refs: list[str]
    bbox: list[list[float]]


def _plain(text: str) -> _Grounded:
    return _Grounded(text, text, [], [])


def _concat(*parts: _Grounded) -> _Grounded:
    return _Grounded("".join(p.text for p in parts), "".join(p.template for p in parts),
                     [r for p in parts for r in p.refs], [b for p in parts for b in p.bbox])


def _boxes_answer(label: str, boxes: list[tuple[list[int], list[float]]], dialect: str,
                  label_key: str = "label", quad: bool = False) -> _Grounded:
    """One label with one or more shapes: format_box_text / format_quad_text, or Qwen2.5-VL JSON."""
    coords = [c for c, _ in boxes]
    origs = [list(o) for _, o in boxes]
    if dialect == "qwen2.5-vl":
        text = format_json_boxes([(label, c) for c in coords], label_key=label_key)
        lines = [f'\t{{"bbox_2d": {BBOX_PLACEHOLDER}, "{label_key}": "{REF_PLACEHOLDER}"}}' for _ in coords]
        body = "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
        return _Grounded(text, f"```json\n{body}\n```", [_json_ref(label)] * len(coords), origs)
    text = format_quad_text(label, coords, dialect) if quad else format_box_text(label, coords, dialect)
    template = (REF_PLACEHOLDER if label else "") + BBOX_PLACEHOLDER * len(coords)
    return _Grounded(text, template, [label] if label else [], origs)


def _json_list(items: list[tuple[str, list[int], list[float]]], dialect: str, label_key: str) -> _Grounded:
    """Several labelled boxes in one Qwen2.5-VL JSON list (labels may differ)."""
    text = format_json_boxes([(label, c) for label, c, _ in items], label_key=label_key)
    lines = [f'\t{{"bbox_2d": {BBOX_PLACEHOLDER}, "{label_key}": "{REF_PLACEHOLDER}"}}' for _ in items]
    body = "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    return _Grounded(text, f"```json\n{body}\n```", [_json_ref(lb) for lb, _, _ in items],
                     [list(o) for _, _, o in items])


def _region(coords: list[int], orig: list[float], dialect: str) -> _Grounded:
    """A shape mentioned in a prompt (no ref): the dialect's box/quad text, or [x1, y1, x2, y2] for 2.5."""
    if dialect == "qwen2.5-vl":
        text = str(list(coords))
    elif len(coords) == 8:
        text = format_quad_text(None, coords, dialect)
    else:
        text = format_box_text(None, coords, dialect)
    return _Grounded(text, BBOX_PLACEHOLDER, [], [list(orig)])


def _grounded_sample(row: Mapping[str, Any], builder: str, task: str, cfg: BuildConfig, user: _Grounded,
                     answer: _Grounded, stored: list[bytes], sizes: list[list[int]], originals: list[list[int]],
                     annotations: dict[str, Any]) -> Sample:
    messages = [_user(user.text, n_images=1), _assistant(answer.text)]
    ann = {**annotations, "grounding": {"template": [user.template, answer.template],
                                        "ref": user.refs + answer.refs, "bbox": user.bbox + answer.bbox}}
    return _sample(row, builder, task, cfg, messages, stored, sizes, originals, ann)


def _finite(values: Any, n: int) -> list[float] | None:
    if not isinstance(values, list | tuple) or len(values) != n:
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _size_check(ann: Mapping[str, Any], width: int, height: int) -> None:
    aw, ah = ann.get("width"), ann.get("height")
    if aw is not None and ah is not None:
        try:
            if (int(aw), int(ah)) != (width, height):
                raise Reject("annotation_size_mismatch")
        except (TypeError, ValueError):
            raise Reject("broken_annotations") from None


def _cap(items: list[Any], limit: int | None, row_id: Any, task: str) -> list[Any]:
    """At most ``limit`` items, a deterministic pseudo-random subset (by row id), in their original order."""
    if limit is None or len(items) <= limit:
        return items
    keep = sorted(range(len(items)), key=lambda i: _rank(row_id, task, i))[:limit]
    return [items[i] for i in sorted(keep)]


# ----------------------------------------------------------------------------------------------------------
# Builders


def build_caption_pretrain(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """Stage-1 caption sample: the vision block(s), the caption, ``<|endoftext|>`` (SPEC §1)."""
    caption = _text(row.get("text"))
    if not caption:
        return "no_caption"
    stored, sizes, originals = _images_or_reject(row, cfg)
    parts = [{"type": "image"} for _ in stored] + [{"type": "text", "text": caption}]
    messages = [{"role": "assistant", "content": parts}]
    return [_sample(row, "caption_pretrain", "caption_pretrain", cfg, messages, stored, sizes, originals,
                    _dict(row.get("annotations")) or None, layout="pretrain")]


def build_caption_sft(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """One user turn (the images and a describe prompt chosen from a pool by the row id) -> the caption."""
    opts = options_for("caption_sft", cfg.options)
    caption = _text(row.get("text"))
    if not caption:
        return "no_caption"
    stored, sizes, originals = _images_or_reject(row, cfg)
    pool = opts["prompts"] if len(stored) == 1 else opts["multi_image_prompts"]
    prompt = pick(pool, row.get("id"), "caption_sft")
    messages = [_user(prompt, n_images=len(stored)), _assistant(caption)]
    return [_sample(row, "caption_sft", "caption", cfg, messages, stored, sizes, originals,
                    _dict(row.get("annotations")) or None, prompt=prompt)]


GROUNDING_TASKS = ("ref", "region", "detect")


def _grounding_objects(ann: Mapping[str, Any], width: int, height: int) -> tuple[list[dict], set[str]]:
    """(valid objects with a clipped corner box, categories that cannot be listed completely)."""
    objects, incomplete = [], set()
    for obj in ann.get("objects") or []:
        if not isinstance(obj, Mapping):
            continue
        category = _text(obj.get("category"))
        box = _finite(obj.get("bbox"), 4)
        crowd = bool(obj.get("iscrowd"))
        if box is not None:
            x1, y1 = max(0.0, min(box[0], box[2])), max(0.0, min(box[1], box[3]))
            x2, y2 = min(float(width), max(box[0], box[2])), min(float(height), max(box[1], box[3]))
            box = [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None
        if box is None or crowd:
            if category:
                incomplete.add(category)
            continue
        phrases = [p.strip() for p in obj.get("phrases") or [] if isinstance(p, str) and p.strip()]
        objects.append({**dict(obj), "bbox": box, "category": category, "phrases": list(dict.fromkeys(phrases))})
    return objects, incomplete


def _one_image(row: Mapping[str, Any], cfg: BuildConfig) -> tuple[dict, list[bytes], list, list] | str:
    """(annotations, stored images, stored sizes, original sizes) of a record annotated on exactly one image
    (grounding, OCR), or the drop reason; the annotation's recorded size must match the image."""
    ann = _dict(row.get("annotations"))
    images = list(row.get("images") or [])
    if len(images) != 1:
        return "no_image" if not images else "expected_one_image"
    stored, sizes, originals = prepare_images(images, cfg)
    _size_check(ann, *originals[0])
    return ann, stored, sizes, originals


def build_grounding(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """COCO / RefCOCO record -> referring grounding (phrase -> box), region captioning (box -> phrase) and
    "locate every <category>" detection samples, in the recipe's dialect (SPEC §2).

    RefCOCO phrases refer to their object; a COCO category names an object only when it is the sole
    instance of its category. Crowd and degenerate boxes are never targets, and a category with one of them
    is not listed ("every" would be incomplete). A phrase that names two different objects is skipped.
    """
    opts = options_for("grounding", cfg.options)
    one = _one_image(row, cfg)
    if isinstance(one, str):
        return one
    ann, stored, sizes, originals = one
    (width, height) = originals[0]
    objects, incomplete = _grounding_objects(ann, width, height)
    if not objects:
        return "no_objects"
    dialect, lo, hi = cfg.dialect, cfg.min_pixels, cfg.max_pixels
    base_ann = {"width": width, "height": height}
    rid = row.get("id")

    def coords(box: list[float]) -> list[int]:
        return convert_box(box, width, height, dialect, lo, hi)

    json_suffix = " Output its bbox coordinates in JSON format." if dialect == "qwen2.5-vl" else ""
    by_category: dict[str, list[dict]] = {}
    for obj in objects:
        if obj["category"]:
            by_category.setdefault(obj["category"], []).append(obj)
    samples: list[Sample] = []
    tasks = opts["tasks"]

    if "ref" in tasks:
        def names_of(obj: dict) -> list[str]:
            cat = obj["category"]
            sole = bool(cat) and len(by_category.get(cat, [])) == 1 and cat not in incomplete
            return obj["phrases"] or ([cat] if sole else [])

        phrase_owner: dict[str, set[int]] = {}
        for i, obj in enumerate(objects):
            for p in names_of(obj):
                phrase_owner.setdefault(p.lower(), set()).add(i)
        refs = []
        for obj in objects:
            names = names_of(obj)
            per_object = names[: opts["phrases_per_object"]] if opts["phrases_per_object"] else names
            refs.extend((obj, p) for p in per_object if len(phrase_owner[p.lower()]) == 1)
        for obj, phrase in _cap(refs, opts["max_per_task"], rid, "ref"):
            user = _plain(f"Locate the {phrase} in the image.{json_suffix}")
            answer = _boxes_answer(phrase, [(coords(obj["bbox"]), obj["bbox"])], dialect)
            samples.append(_grounded_sample(row, "grounding", "ref", cfg, user, answer, stored, sizes, originals,
                                            {**base_ann, "objects": [obj]}))

    if "region" in tasks:
        regions = []
        for obj in objects:
            names = obj["phrases"] or ([obj["category"]] if obj["category"] else [])
            if names:
                regions.append((obj, pick(names, rid, "region", obj.get("ann_id"))))
        for obj, phrase in _cap(regions, opts["max_per_task"], rid, "region"):
            user = _concat(_plain("Describe the region "), _region(coords(obj["bbox"]), obj["bbox"], dialect),
                           _plain(" with a short phrase."))
            samples.append(_grounded_sample(row, "grounding", "region", cfg, user, _plain(phrase), stored, sizes,
                                            originals, {**base_ann, "objects": [obj]}))

    if "detect" in tasks:
        cats = [c for c in sorted(by_category) if c not in incomplete]
        suffix = " Output the bbox coordinates in JSON format." if dialect == "qwen2.5-vl" else ""
        for cat in _cap(cats, opts["max_per_task"], rid, "detect"):
            members = sorted(by_category[cat], key=lambda o: (o["bbox"][1], o["bbox"][0]))
            user = _plain(f"Locate every {cat} in the image.{suffix}")
            answer = _boxes_answer(cat, [(coords(o["bbox"]), o["bbox"]) for o in members], dialect)
            samples.append(_grounded_sample(row, "grounding", "detect", cfg, user, answer, stored, sizes, originals,
                                            {**base_ann, "objects": members}))
    return samples or "no_grounding_targets"


OCR_TASKS = ("read", "locate", "recognize", "spot")


def reading_order(quads: Sequence[Sequence[float]], line_tolerance: float = 0.5) -> list[list[int]]:
    """Indices of the quads grouped into lines, top-to-bottom, each line left-to-right.

    Regions are sorted by the y of their centre; one joins the current line when its centre y is within
    ``line_tolerance`` x the median region height of the line's mean centre y.
    """
    if not quads:
        return []
    centres, heights = [], []
    for q in quads:
        xs, ys = q[0::2], q[1::2]
        centres.append((sum(xs) / len(xs), sum(ys) / len(ys)))
        heights.append(max(ys) - min(ys))
    ordered = sorted(heights)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1]
                                                                   + ordered[len(ordered) // 2]) / 2
    tol = line_tolerance * max(median, 1e-9)
    lines: list[list[int]] = []
    line_y: list[float] = []
    for i in sorted(range(len(quads)), key=lambda k: (centres[k][1], centres[k][0])):
        cy = centres[i][1]
        if lines and abs(cy - line_y[-1]) <= tol:
            lines[-1].append(i)
            line_y[-1] = sum(centres[k][1] for k in lines[-1]) / len(lines[-1])
        else:
            lines.append([i])
            line_y.append(cy)
    return [sorted(line, key=lambda k: centres[k][0]) for line in lines]


def _quad_bbox(quad: list[float], width: int, height: int) -> list[float]:
    xs, ys = quad[0::2], quad[1::2]
    return [max(0.0, min(xs)), max(0.0, min(ys)), min(float(width), max(xs)), min(float(height), max(ys))]


def _valid_texts(ann: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The annotation's text regions that can be targets: 8 finite numbers, a text, not ``ignore`` / ``###``."""
    texts = []
    for t in ann.get("texts") or []:
        if not isinstance(t, Mapping):
            continue
        quad, text = _finite(t.get("quad"), 8), t.get("text")
        if quad is None or not isinstance(text, str) or not text.strip() or t.get("ignore") or text == "###":
            continue
        texts.append({**dict(t), "quad": quad, "text": text.strip()})
    return texts


def _text_shape(t: Mapping[str, Any], width: int, height: int, cfg: BuildConfig) -> tuple[list[int], list[float]]:
    """(the dialect's coordinates, the shape in original pixels) of a text region: for Qwen2.5-VL the quad's
    axis-aligned box, for the others the quad, clipped to the image."""
    if cfg.dialect == "qwen2.5-vl":
        box = _quad_bbox(t["quad"], width, height)
        return convert_box(box, width, height, cfg.dialect, cfg.min_pixels, cfg.max_pixels), box
    clipped = [min(max(v, 0.0), float(width if i % 2 == 0 else height)) for i, v in enumerate(t["quad"])]
    return convert_quad(clipped, width, height, cfg.dialect, cfg.min_pixels, cfg.max_pixels), clipped


def _texts_answer(texts: list[dict[str, Any]], width: int, height: int, cfg: BuildConfig) -> _Grounded:
    """Text regions with their shapes: one Qwen2.5-VL JSON list (``text_content``), else one region a line."""
    if cfg.dialect == "qwen2.5-vl":
        return _json_list([(t["text"], *_text_shape(t, width, height, cfg)) for t in texts], cfg.dialect,
                          "text_content")
    pieces = []
    for k, t in enumerate(texts):
        if k:
            pieces.append(_plain("\n"))
        pieces.append(_boxes_answer(t["text"], [_text_shape(t, width, height, cfg)], cfg.dialect, quad=True))
    return _concat(*pieces)


def _text_record(row: Mapping[str, Any], cfg: BuildConfig) -> tuple | str:
    """(target text regions, stored images, stored sizes, original sizes, width, height) of a record annotated
    with text regions on one image, or the drop reason."""
    one = _one_image(row, cfg)
    if isinstance(one, str):
        return one
    ann, stored, sizes, originals = one
    return _valid_texts(ann), stored, sizes, originals, *originals[0]


def build_ocr(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """ICDAR-2015 record -> full-text reading (reading order), text -> quad, quad -> text and (option)
    text spotting samples. ``ignore`` / ``###`` regions are never targets. Qwen2.5-VL has no quad text: its
    shapes are the quads' axis-aligned boxes in JSON with ``"text_content"`` (the Qwen2.5-VL OCR format)."""
    opts = options_for("ocr", cfg.options)
    one = _text_record(row, cfg)
    if isinstance(one, str):
        return one
    texts, stored, sizes, originals, width, height = one
    if not texts:
        return "no_text_regions"
    dialect = cfg.dialect
    rid = row.get("id")
    base_ann = {"width": width, "height": height}
    lines = reading_order([t["quad"] for t in texts], opts["line_tolerance"])
    order = [i for line in lines for i in line]
    json25 = dialect == "qwen2.5-vl"

    def shape(t: dict) -> tuple[list[int], list[float]]:
        return _text_shape(t, width, height, cfg)

    samples: list[Sample] = []
    tasks = opts["tasks"]
    if "read" in tasks:
        answer = "\n".join(" ".join(texts[i]["text"] for i in line) for line in lines)
        messages = [_user("Read all the text in the image.", n_images=1), _assistant(answer)]
        samples.append(_sample(row, "ocr", "read", cfg, messages, stored, sizes, originals,
                               {**base_ann, "texts": [texts[i] for i in order]}))
    if "locate" in tasks:
        counts: dict[str, int] = {}
        for t in texts:
            counts[t["text"]] = counts.get(t["text"], 0) + 1
        unique = [texts[i] for i in order if counts[texts[i]["text"]] == 1]
        suffix = " Output its bbox coordinates in JSON format." if json25 else ""
        for t in _cap(unique, opts["max_per_task"], rid, "locate"):
            user = _plain(f'Locate the text "{t["text"]}" in the image.{suffix}')
            answer = _boxes_answer(t["text"], [shape(t)], dialect, label_key="text_content", quad=not json25)
            samples.append(_grounded_sample(row, "ocr", "locate", cfg, user, answer, stored, sizes, originals,
                                            {**base_ann, "texts": [t]}))
    if "recognize" in tasks:
        for t in _cap([texts[i] for i in order], opts["max_per_task"], rid, "recognize"):
            c, o = shape(t)
            user = _concat(_plain("What does the text in the region "), _region(c, o, dialect), _plain(" say?"))
            samples.append(_grounded_sample(row, "ocr", "recognize", cfg, user, _plain(t["text"]), stored, sizes,
                                            originals, {**base_ann, "texts": [t]}))
    if "spot" in tasks:
        ordered = [texts[i] for i in order]
        suffix = " in JSON format" if json25 else ""
        user = _plain(f"Detect all the text in the image and output each text region with its content{suffix}.")
        answer = _texts_answer(ordered, width, height, cfg)
        samples.append(_grounded_sample(row, "ocr", "spot", cfg, user, answer, stored, sizes, originals,
                                        {**base_ann, "texts": ordered}))
    return samples or "no_text_regions"


def build_vqa(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """Visual QA (VQA v2 and the like): the images and the question (plus the short-answer suffix) -> the
    answer. Several images go into one user turn."""
    opts = options_for("vqa", cfg.options)
    question, answer = _text(row.get("text")), _text(row.get("answer"))
    if not question:
        return "no_question"
    if not answer:
        return "no_answer"
    stored, sizes, originals = _images_or_reject(row, cfg)
    messages = [_user(question + opts["prompt_suffix"], n_images=len(stored)), _assistant(answer)]
    return [_sample(row, "vqa", "vqa", cfg, messages, stored, sizes, originals,
                    _dict(row.get("annotations")) or None)]


ANSWER_STYLES = ("final", "solution")
_BOX_START = re.compile(r"\\(boxed|fbox)(?![A-Za-z])")


def _brace_group(s: str, i: int) -> int | None:
    """s[i] == '{': the index just past its matching '}', or None when unbalanced (escaped braces skipped)."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


def last_boxed(solution: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (braces balanced) or `\\boxed N`; None if none or unbalanced."""
    starts = list(_BOX_START.finditer(solution))
    if not starts:
        return None
    m = starts[-1]
    i = m.end()
    while i < len(solution) and solution[i] == " ":
        i += 1
    if i < len(solution) and solution[i] == "{":
        end = _brace_group(solution, i)
        return solution[i + 1:end - 1] if end is not None else None
    if i > m.end():  # "\boxed 5": up to the next $ or whitespace
        tail = re.match(r"[^\s$]+", solution[i:])
        return tail.group(0) if tail else None
    return None


def solution_target(solution: str, answer: str) -> str:
    """The worked solution as a target whose last ``\\boxed{}`` is the final answer: the solution as it is
    when its last ``\\boxed{}`` holds the answer (MATH), else with ``\\boxed{answer}`` appended as its last
    line (GSM8K, or a MATH solution without a box). Rejects ``no_solution``, ``unbalanced_boxed`` and
    ``solution_answer_mismatch`` (its box holds another answer than the row's, e.g. MATH-500's ``answer``)."""
    if not solution:
        raise Reject("no_solution")
    boxed = last_boxed(solution)
    if boxed is None:
        if _BOX_START.search(solution):
            raise Reject("unbalanced_boxed")
        return f"{solution.rstrip()}\n\\boxed{{{answer.strip()}}}"
    if re.sub(r"\s+", "", boxed) != re.sub(r"\s+", "", answer):
        raise Reject("solution_answer_mismatch")
    return solution


def build_qa(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """Question -> answer (GSM8K, MATH, HumanEval, plain QA jsonl); text-only, or with the row's images if any.

    Texts are kept exactly as they are (a HumanEval prompt + its answer is the program). ``answer_style``
    ``final`` (default) trains on the row's answer; ``solution`` on ``meta.solution`` ending in the final
    answer as ``\\boxed{}`` (``solution_target``)."""
    opts = options_for("qa", cfg.options)
    question, answer = _content(row.get("text")), _content(row.get("answer"))
    if not question:
        return "no_question"
    if not answer:
        return "no_answer"
    if opts["answer_style"] == "solution":
        answer = solution_target(_content(_dict(row.get("meta")).get("solution")), answer)
    stored, sizes, originals = _images_or_reject(row, cfg, need=False)
    messages = [_user(question + opts["prompt_suffix"], n_images=len(stored)), _assistant(answer)]
    return [_sample(row, "qa", "qa", cfg, messages, stored, sizes, originals, _dict(row.get("annotations")) or None)]


def build_video(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """Video caption (no ``answer``: a describe prompt -> the caption) or video QA (the question -> the
    answer): one ``{"type": "video"}`` part; the planned frames (already resized) are the sample's images."""
    opts = options_for("video", cfg.options)
    meta = _dict(row.get("meta"))
    plan = meta.get("video")
    if not isinstance(plan, Mapping) or _finite(plan.get("grid_thw"), 3) is None:
        return "no_video_plan"
    frames = list(row.get("images") or [])
    if not frames:
        return "no_frames"
    grid_t = int(plan["grid_thw"][0])
    if len(frames) != 2 * grid_t:
        return "video_frames_mismatch"
    sizes = []
    for data in frames:
        sizes.append(list(_open(data).size))
    want = [plan.get("resized_width"), plan.get("resized_height")]
    if None not in want and any(s != [int(want[0]), int(want[1])] for s in sizes):
        return "video_frames_mismatch"
    text, answer = _text(row.get("text")), _text(row.get("answer"))
    if not text:
        return "no_text"
    if answer:
        task, prompt, target = "video_qa", text + opts["prompt_suffix"], answer
    else:
        task, prompt, target = "video_caption", pick(opts["prompts"], row.get("id"), "video"), text
    messages = [_user(prompt, n_videos=1), _assistant(target)]
    return [_sample(row, "video", task, cfg, messages, [bytes(f) for f in frames], sizes, sizes,
                    _dict(row.get("annotations")) or None)]


# ----------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Builder:
    """A builder: its function, its options with their defaults, and for ``tasks`` the allowed values."""

    fn: Callable[[Mapping[str, Any], BuildConfig], Result]
    options: Mapping[str, Any]
    tasks: tuple[str, ...] = ()
    summary: str = ""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __call__(self, row: Mapping[str, Any], cfg: BuildConfig) -> Result:
        try:
            return self.fn(row, cfg)
        except Reject as r:
            return r.reason


BUILDERS: dict[str, Builder] = {
    "caption_pretrain": Builder(build_caption_pretrain, {}, summary="stage-1 caption layout (no chat turns)"),
    "caption_sft": Builder(build_caption_sft, {"prompts": list(DESCRIBE_PROMPTS),
                                              "multi_image_prompts": list(DESCRIBE_MULTI_PROMPTS)},
                           summary="describe prompt (deterministic by row id) -> caption"),
    "grounding": Builder(build_grounding, {"tasks": list(GROUNDING_TASKS), "max_per_task": None,
                                           "phrases_per_object": None}, GROUNDING_TASKS,
                         summary="COCO/RefCOCO: phrase -> box, box -> phrase, every <category>"),
    "ocr": Builder(build_ocr, {"tasks": ["read", "locate", "recognize"], "max_per_task": None,
                               "line_tolerance": 0.5}, OCR_TASKS,
                   summary="ICDAR: full text in reading order, text -> quad, quad -> text, spotting"),
    "vqa": Builder(build_vqa, {"prompt_suffix": VQA_SUFFIX}, summary="images + question -> short answer"),
    "qa": Builder(build_qa, {"prompt_suffix": "", "answer_style": "final"},
                  summary="question -> answer or worked solution (text-only or with images)",
                  choices={"answer_style": ANSWER_STYLES}),
    "video": Builder(build_video, {"prompts": ["Describe this video."], "prompt_suffix": ""},
                     summary="video caption / QA on the planned frames"),
}


def _check_value(name: str, key: str, value: Any, default: Any, builder: Builder) -> Any:
    if key == "tasks":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or any(v not in builder.tasks for v in value):
            raise ValueError(f"{key}: expected a non-empty list of {', '.join(builder.tasks)} (got {value!r})")
        return list(dict.fromkeys(value))
    if key in builder.choices:
        if value not in builder.choices[key]:
            raise ValueError(f"{key}: expected one of {', '.join(builder.choices[key])} (got {value!r})")
        return value
    if key == "fields":  # kie: class names; empty = every *_value class
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{key}: expected a list of class names (got {value!r})")
        return list(value)
    if key in ("max_per_task", "phrases_per_object"):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}: expected a positive integer or null (got {value!r})")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{key}: expected a non-empty list of strings (got {value!r})")
        return list(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{key}: expected a positive number (got {value!r})")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string (got {value!r})")
    return value


def options_for(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The builder's options: defaults overlaid with ``options``, validated.

    Raises ValueError ``KEY: ...`` (one line) for an unknown key or a wrong value.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown builder {name!r} (known: {', '.join(BUILDERS)})")
    builder = BUILDERS[name]
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in builder.options.items()}
    for key, value in (options or {}).items():
        if key not in builder.options:
            allowed = ", ".join(sorted(builder.options)) or "none"
            raise ValueError(f"{key}: unknown option for builder {name} (allowed: {allowed})")
        out[key] = _check_value(name, key, value, builder.options[key], builder)
    return out


def build(name: str, row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """Run builder ``name`` on one row: its samples, or a drop reason."""
    if name not in BUILDERS:
        raise ValueError(f"unknown builder {name!r} (known: {', '.join(BUILDERS)})")
    return BUILDERS[name](row, cfg)


# ----------------------------------------------------------------------------------------------------------
# Key information extraction (WildReceipt)


def field_name(category: str) -> str:
    """A key class as a prompt names it: ``Store_name_value`` -> ``store name``."""
    return " ".join(re.sub(r"_value$", "", category, flags=re.IGNORECASE).replace("_", " ").split()).lower()


def build_kie(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """Key information (WildReceipt rows: text regions with a ``category``): one sample per key field present,
    asking for the field by its class name; the answer is the field's regions in reading order with their
    text and shape, written like OCR spotting (Qwen2.5-VL: JSON ``bbox_2d`` of the quad's box +
    ``text_content``; qwen-vl / qwen2-vl: ref + quad). Key fields are the ``*_value`` classes, or the classes
    named in option ``fields``; ignore / ``###`` regions are never targets."""
    opts = options_for("kie", cfg.options)
    one = _text_record(row, cfg)
    if isinstance(one, str):
        return one
    texts, stored, sizes, originals, width, height = one
    wanted = set(opts["fields"])
    by_field: dict[str, list[dict[str, Any]]] = {}
    for line in reading_order([t["quad"] for t in texts], opts["line_tolerance"]):
        for i in line:
            cat = texts[i].get("category")
            if isinstance(cat, str) and (cat in wanted if wanted else cat.lower().endswith("_value")):
                by_field.setdefault(cat, []).append(texts[i])
    if not by_field:
        return "no_key_fields"
    suffix = " in JSON format" if cfg.dialect == "qwen2.5-vl" else ""
    samples = []
    for cat in _cap(list(by_field), opts["max_per_task"], row.get("id"), "field"):
        user = _plain(f"Find the {field_name(cat)} in the image and output its text with its location{suffix}.")
        answer = _texts_answer(by_field[cat], width, height, cfg)
        samples.append(_grounded_sample(row, "kie", "field", cfg, user, answer, stored, sizes, originals,
                                        {"width": width, "height": height, "field": cat, "texts": by_field[cat]}))
    return samples


BUILDERS["kie"] = Builder(build_kie, {"fields": [], "max_per_task": None, "line_tolerance": 0.5},
                          summary="WildReceipt: key field by class name -> its texts with quads")


# ----------------------------------------------------------------------------------------------------------
# Interleaved image–text documents (OBELICS layout)


def build_interleaved(row: Mapping[str, Any], cfg: BuildConfig) -> Result:
    """A document's texts and images in reading order (``annotations["texts"]``: the texts with null where the
    next of the row's images goes) -> one pretraining sample: one assistant turn whose parts are the texts and
    one image part per image in order, ``meta["layout"] = "interleaved"`` (tokens.tokenize_interleaved: text as
    is, one vision block per image, ``<|endoftext|>``; labels on every text token). Adjacent texts are joined
    by option ``separator``."""
    opts = options_for("interleaved", cfg.options)
    texts = _dict(row.get("annotations")).get("texts")
    images = list(row.get("images") or [])
    if not isinstance(texts, list) or sum(t is None for t in texts) != len(images):
        return "interleaved_misaligned"
    if not any(isinstance(t, str) and t.strip() for t in texts):
        return "no_text"
    stored, sizes, originals = prepare_images(images, cfg) if images else ([], [], [])
    parts: list[dict[str, Any]] = []
    for t in texts:
        if t is None:
            parts.append({"type": "image"})
        elif t:
            joined = parts and parts[-1]["type"] == "text"
            parts.append({"type": "text", "text": opts["separator"] + t if joined else t})
    messages = [{"role": "assistant", "content": parts}]
    return [_sample(row, "interleaved", "interleaved", cfg, messages, stored, sizes, originals,
                    _dict(row.get("annotations")), layout="interleaved")]


BUILDERS["interleaved"] = Builder(build_interleaved, {"separator": "\n\n"},
                                  summary="interleaved document: texts and images in reading order, pretraining")
