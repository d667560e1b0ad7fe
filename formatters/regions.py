"""Grounding text read back: every box, quad and point a conversation writes, in any dialect, as pixels of the
stored image (the inverse of the builders' texts, SPEC-qwen §2).

Styles recognised in a text:

- ``qwen-vl``: ``<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>`` / ``<quad>…</quad>``, 0–999 of the image;
- ``qwen2-vl``: the same with ``<|object_ref_start|>…<|box_start|>…<|box_end|>`` / quad tokens, 0–1000;
- ``json``: Qwen2.5-VL objects ``{"bbox_2d": [x1, y1, x2, y2], "label": …}`` / ``"point_2d": [x, y]`` /
  ``"text_content"``, absolute pixels of the smart-resized W'×H' image;
- ``list``: a bare ``[x1, y1, x2, y2]`` (or 8 numbers) in a Qwen2.5-VL text (a region prompt), the same pixels.

``to_pixels`` maps a region's numbers to the stored image through ``formatters.qwen``'s own inverse
(``box_to_pixels`` / ``quad_to_pixels`` on the original size, then scaled to the stored size), so a
pre-resized image and an original one are both drawn right.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from formatters.builders import message_text
from formatters.qwen import _TAGS, IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, box_to_pixels, quad_to_pixels

STYLES = ("qwen-vl", "qwen2-vl", "json", "list")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_JSON_OBJECT = re.compile(r'\{[^{}]*"(?:bbox_2d|point_2d)"[^{}]*\}')
_LIST = re.compile(r"\[\s*-?\d+(?:\s*,\s*-?\d+){3}(?:(?:\s*,\s*-?\d+){4})?\s*\]")
LABEL_KEYS = ("label", "text_content")


@dataclass(frozen=True)
class Region:
    """One shape as written: ``kind`` box / quad / point, its numbers, the style, its phrase, its span."""

    kind: str
    coords: tuple[float, ...]
    style: str
    phrase: str
    start: int
    end: int


@dataclass(frozen=True)
class Geometry:
    """What maps a sample's coordinates to its stored image: stored and original size, dialect limits."""

    stored: tuple[int, int]
    original: tuple[int, int]
    min_pixels: int = IMAGE_MIN_PIXELS
    max_pixels: int = IMAGE_MAX_PIXELS

    @classmethod
    def of(cls, meta: Mapping[str, Any], index: int = 0, stored: Sequence[int] | None = None) -> Geometry:
        """From a sample's meta (``image_sizes``, ``original_sizes``, ``min_pixels``, ``max_pixels``);
        ``stored`` (the decoded image's size) wins over the meta's."""
        sizes = meta.get("image_sizes") or []
        originals = meta.get("original_sizes") or []
        size = tuple(stored) if stored else tuple(sizes[index]) if index < len(sizes) else None
        if size is None:
            raise ValueError("no stored image size")
        orig = tuple(originals[index]) if index < len(originals) else size
        return cls((int(size[0]), int(size[1])), (int(orig[0]), int(orig[1])),
                   int(meta.get("min_pixels") or IMAGE_MIN_PIXELS), int(meta.get("max_pixels") or IMAGE_MAX_PIXELS))


def _tagged(text: str, style: str) -> list[Region]:
    ref_open, ref_close, box_open, box_close, quad_open, quad_close = (re.escape(t) for t in _TAGS[style])
    shape = rf"(?:{box_open}.*?{box_close}|{quad_open}.*?{quad_close})"
    pattern = re.compile(rf"(?:{ref_open}(?P<phrase>.*?){ref_close})?(?P<shapes>{shape}+)", re.S)
    one = re.compile(rf"(?P<open>{box_open}|{quad_open})(?P<body>.*?)(?:{box_close}|{quad_close})", re.S)
    out = []
    for m in pattern.finditer(text):
        phrase = (m.group("phrase") or "").strip()
        for s in one.finditer(m.group("shapes")):
            numbers = tuple(float(n) for n in _NUMBER.findall(s.group("body")))
            kind = "quad" if s.group("open") == _TAGS[style][4] else "box"
            if len(numbers) == (8 if kind == "quad" else 4):
                base = m.start("shapes")
                out.append(Region(kind, numbers, style, phrase, base + s.start(), base + s.end()))
    return out


def _json_objects(text: str) -> list[Region]:
    out = []
    for m in _JSON_OBJECT.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        key, kind, n = ("bbox_2d", "box", 4) if "bbox_2d" in obj else ("point_2d", "point", 2)
        coords = obj.get(key)
        if not isinstance(coords, list) or len(coords) != n or not all(isinstance(c, int | float) for c in coords):
            continue
        label = next((obj[k] for k in LABEL_KEYS if isinstance(obj.get(k), str)), None)
        if label is None:
            label = next((v for v in obj.values() if isinstance(v, str)), "")
        out.append(Region(kind, tuple(float(c) for c in coords), "json", label, m.start(), m.end()))
    return out


def find_regions(text: str, dialect: str | None = None) -> list[Region]:
    """Every shape written in ``text``, in order of appearance. Tagged shapes (qwen-vl, qwen2-vl) and JSON
    ``bbox_2d`` / ``point_2d`` objects are found whatever ``dialect`` says; bare ``[x1, y1, x2, y2]`` lists
    only when ``dialect`` is ``qwen2.5-vl`` (elsewhere a list of four numbers is not a shape)."""
    found = _tagged(text, "qwen-vl") + _tagged(text, "qwen2-vl") + _json_objects(text)
    if dialect == "qwen2.5-vl":
        taken = [(r.start, r.end) for r in found]
        for m in _LIST.finditer(text):
            if any(a <= m.start() < b for a, b in taken):
                continue
            numbers = tuple(float(n) for n in _NUMBER.findall(m.group(0)))
            found.append(Region("box" if len(numbers) == 4 else "quad", numbers, "list", "", m.start(), m.end()))
    return sorted(found, key=lambda r: r.start)


def to_pixels(region: Region, geo: Geometry) -> list[float]:
    """The region's numbers as pixels of the stored image (x, y pairs)."""
    dialect = region.style if region.style in _TAGS else "qwen2.5-vl"
    (ow, oh), (sw, sh) = geo.original, geo.stored
    coords = list(region.coords)
    if region.kind == "point":
        coords = coords * 2
    if len(coords) == 8:
        pixels = quad_to_pixels(coords, ow, oh, dialect, geo.min_pixels, geo.max_pixels)
    else:
        pixels = box_to_pixels(coords, ow, oh, dialect, geo.min_pixels, geo.max_pixels)
    if region.kind == "point":
        pixels = pixels[:2]
    return [v * (sw / ow if i % 2 == 0 else sh / oh) for i, v in enumerate(pixels)]


def sample_regions(messages: Sequence[Mapping[str, Any]], dialect: str | None) -> list[tuple[int, Region]]:
    """(message index, region) of every shape in a conversation. A shape written without a phrase (a region
    prompt: "Describe the region [..]") takes the next assistant answer as its label when that is one short
    line."""
    out = []
    for i, message in enumerate(messages):
        for region in find_regions(message_text(message), dialect):
            if not region.phrase and message.get("role") != "assistant":
                reply = next((message_text(m) for m in messages[i + 1:] if m.get("role") == "assistant"), "")
                if reply and "\n" not in reply.strip() and len(reply) <= 80 and not find_regions(reply, dialect):
                    region = Region(region.kind, region.coords, region.style, reply.strip(), region.start,
                                    region.end)
            out.append((i, region))
    return out
