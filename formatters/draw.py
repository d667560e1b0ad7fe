"""Pictures of samples with Pillow: shapes drawn on an image with their phrase, a conversation under it,
frame strips, contact sheets and thumbnails. Pure functions on bytes and PIL images, no storage access."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from formatters.builders import message_text
from formatters.regions import Geometry, sample_regions, to_pixels

COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
          (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)


def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px."""
    return ImageFont.load_default(size=size)


def open_rgb(data: bytes) -> Image.Image:
    """Encoded bytes -> an RGB image (EXIF orientation is already applied to stored images)."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def thumbnail(data: bytes, px: int = 128, quality: int = 80) -> bytes | None:
    """A JPEG whose longer side is at most ``px`` (JPEGs decoded at reduced scale), or None if the bytes do not
    decode."""
    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (px, px))
        im = im.convert("RGB")
        im.thumbnail((px, px))
    except Exception:
        return None
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def draw_shapes(im: Image.Image, shapes: Sequence[tuple[str, Sequence[float], str]]) -> Image.Image:
    """A copy of ``im`` with each (kind, pixels, label) drawn: a box outline, a quad polygon or a point
    (circle and cross), a colour per shape, its label on a filled tag at its top-left corner."""
    out = im.copy()
    d = ImageDraw.Draw(out)
    line = max(2, round(max(im.size) / 320))
    f = font(max(12, round(max(im.size) / 45)))
    for k, (kind, pts, label) in enumerate(shapes):
        pts = [round(v) for v in pts]
        color = COLORS[k % len(COLORS)]
        if kind == "box":
            x1, y1, x2, y2 = pts
            d.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=line)
            anchor = (min(x1, x2), min(y1, y2))
        elif kind == "quad":
            xy = [(pts[i], pts[i + 1]) for i in range(0, 8, 2)]
            d.line([*xy, xy[0]], fill=color, width=line, joint="curve")
            anchor = min(xy, key=lambda p: (p[1], p[0]))
        else:
            x, y = pts[:2]
            r = 3 * line
            d.ellipse([x - r, y - r, x + r, y + r], outline=color, width=line)
            d.line([x - 2 * r, y, x + 2 * r, y], fill=color, width=max(1, line // 2))
            d.line([x, y - 2 * r, x, y + 2 * r], fill=color, width=max(1, line // 2))
            anchor = (x + r, y - r)
        if label:
            text = label if len(label) <= 40 else label[:39] + "…"
            left, top, right, bottom = d.textbbox((0, 0), text, font=f)
            tw, th = right - left + 6, bottom - top + 4
            x = min(max(0.0, anchor[0]), max(0.0, im.width - tw))
            y = anchor[1] - th if anchor[1] - th >= 0 else anchor[1]
            d.rectangle([x, y, x + tw, y + th], fill=color)
            d.text((x + 3 - left, y + 2 - top), text, fill=(255, 255, 255), font=f)
    return out


def text_panel(lines: Sequence[tuple[str, tuple[int, int, int]]], width: int, size: int = 14) -> Image.Image:
    """Lines of text (each with its colour), wrapped to ``width`` px, on white."""
    f = font(size)
    chars = max(20, int(width / (size * 0.55)))
    wrapped: list[tuple[str, tuple[int, int, int]]] = []
    for text, color in lines:
        for para in text.split("\n") or [""]:
            wrapped.extend((w, color) for w in (textwrap.wrap(para, chars) or [""]))
    step = size + 4
    panel = Image.new("RGB", (width, step * len(wrapped) + 8), BACKGROUND)
    d = ImageDraw.Draw(panel)
    for k, (text, color) in enumerate(wrapped):
        d.text((6, 4 + k * step), text, fill=color, font=f)
    return panel


def stack(parts: Sequence[Image.Image], vertical: bool = True, gap: int = 6) -> Image.Image:
    """Images one under the other (or side by side), on white, with a gap."""
    parts = [p for p in parts if p is not None]
    if vertical:
        size = (max(p.width for p in parts), sum(p.height for p in parts) + gap * (len(parts) - 1))
    else:
        size = (sum(p.width for p in parts) + gap * (len(parts) - 1), max(p.height for p in parts))
    out = Image.new("RGB", size, BACKGROUND)
    pos = 0
    for p in parts:
        out.paste(p, (0, pos) if vertical else (pos, 0))
        pos += (p.height if vertical else p.width) + gap
    return out


def conversation_lines(messages: Sequence[Mapping[str, Any]], limit: int = 1200) -> list[tuple[str, tuple]]:
    """``role: text`` per message (long texts cut at ``limit`` characters), the roles in their colour."""
    out = []
    for m in messages:
        text = message_text(m)
        text = text if len(text) <= limit else text[:limit] + " …"
        out.append((f"{m.get('role', '?')}: {text}", INK if m.get("role") == "assistant" else MUTED))
    return out


def render_sample(doc: Mapping[str, Any], images: Sequence[bytes], header: str = "") -> Image.Image:
    """A sample as one picture: its image(s) with every box, quad and point of its conversation drawn in the
    stored image's pixels and labelled (shapes go on the first image of a one-image sample), or the video's
    frames as a strip with their timestamps; the conversation under it."""
    meta = doc.get("meta") or {}
    messages = doc.get("messages") or []
    video = meta.get("video") if isinstance(meta.get("video"), Mapping) else None
    pictures = [open_rgb(b) for b in images]
    parts: list[Image.Image] = []
    if video is not None and pictures:
        fps = float(video.get("video_fps") or 0)
        idx = list(video.get("frame_indices") or [])
        labels = [f"{idx[k] / fps:.2f} s" if fps and k < len(idx) else f"frame {k}" for k in range(len(pictures))]
        parts.append(frame_strip(pictures, labels))
    elif pictures:
        drawn = []
        shapes = sample_regions(messages, meta.get("dialect")) if len(pictures) == 1 else []
        for k, im in enumerate(pictures):
            if k == 0 and shapes:
                geo = Geometry.of(meta, 0, im.size)
                im = draw_shapes(im, [(r.kind, to_pixels(r, geo), r.phrase) for _, r in shapes])
            drawn.append(im)
        parts.append(stack(drawn, vertical=False))
    width = max([p.width for p in parts] + [640])
    lines = conversation_lines(messages) if messages else [(str(doc.get("text") or ""), INK)]
    parts.append(text_panel(lines, width))
    if header:
        parts.insert(0, text_panel([(header, INK)], width))
    return stack(parts)


def frame_strip(frames: Sequence[Image.Image], labels: Sequence[str], height: int = 120,
                per_row: int = 8) -> Image.Image:
    """Frames scaled to ``height`` px in rows of ``per_row``, each with its label (the timestamp) under it."""
    tiles = []
    for im, label in zip(frames, labels, strict=False):
        w = max(1, round(im.width * height / im.height))
        tiles.append(stack([im.resize((w, height)), text_panel([(label, MUTED)], w, 12)], gap=0))
    rows = grid(tiles, per_row)
    return stack(rows)


def contact_sheet(tiles: Sequence[tuple[bytes | None, Sequence[str]]], title: str, px: int = 128,
                  columns: int = 6) -> Image.Image:
    """A grid of (thumbnail bytes or None, caption lines) tiles under a title; a missing thumbnail is a grey
    square saying so."""
    cell_w = px + 100
    cells = [stack([picture_box(data, cell_w, px, "no image kept"),
                    text_panel([(c, INK) for c in caption], cell_w, 11)], gap=0) for data, caption in tiles]
    return stack([text_panel([(title, INK)], max(640, cell_w * min(columns, max(1, len(cells)))), 16),
                  *grid(cells, columns)])


def picture_box(data: bytes | None, width: int, px: int, missing: str) -> Image.Image:
    """A grey ``width`` x ``px`` box with the picture in ``data`` scaled into it and centred, or ``missing``
    written in it when there is none (or the bytes do not decode)."""
    box = Image.new("RGB", (width, px), (235, 235, 235))
    try:
        im = open_rgb(data) if data else None
    except Exception:
        im = None
    if im is not None:
        im.thumbnail((px, px))
        box.paste(im, ((width - im.width) // 2, (px - im.height) // 2))
    else:
        ImageDraw.Draw(box).text((8, px // 2 - 8), missing, fill=MUTED, font=font(12))
    return box


def grid(cells: Sequence[Image.Image], columns: int) -> list[Image.Image]:
    """Cells in rows of ``columns``, each row one image."""
    return [stack(cells[i:i + columns], vertical=False) for i in range(0, len(cells), columns)]


SPAN_HEIGHT = 28
UNFILLED = (225, 225, 225)


def span_bar(spans: Sequence[tuple[int, int]], max_len: int, width: int) -> Image.Image:
    """The token spans [start, end) of a pack's members on a ``max_len``-token bar ``width`` px wide: member k
    in its colour (``COLORS[k]``), a white pixel between members, what the pack leaves unfilled grey."""
    bar = Image.new("RGB", (width, SPAN_HEIGHT), UNFILLED)
    d = ImageDraw.Draw(bar)
    scale = width / max(max_len, 1)
    for k, (start, end) in enumerate(spans):
        x1, x2 = round(start * scale), max(round(end * scale) - 1, round(start * scale))
        d.rectangle([x1, 0, x2, SPAN_HEIGHT - 1], fill=COLORS[k % len(COLORS)])
        if k:
            d.line([x1, 0, x1, SPAN_HEIGHT - 1], fill=BACKGROUND)
    return bar


def pack_sheet(members: Sequence[tuple[bytes | None, str, int, int]], max_len: int, title: str, px: int = 96,
               columns: int = 6) -> Image.Image:
    """A pack as one picture: the title, its members' token spans on one bar (``span_bar``), then each member as
    a tile framed in its span's colour: its thumbnail (bytes, or None for a text-only member), id and
    ``tokens START-END (LENGTH)``."""
    cell_w = px + 110
    width = max(640, cell_w * min(columns, max(1, len(members))))
    cells = []
    for k, (data, member_id, start, end) in enumerate(members):
        color = COLORS[k % len(COLORS)]
        box = Image.new("RGB", (cell_w, px + 8), color)  # the frame
        box.paste(picture_box(data, cell_w - 8, px, "text only"), (4, 4))
        lines = [(f"{k}: {member_id}", INK), (f"tokens {start}-{end} ({end - start})", INK)]
        cells.append(stack([box, text_panel(lines, cell_w, 11)], gap=0))
    spans = [(start, end) for _, _, start, end in members]
    return stack([text_panel([(title, INK)], width, 16), span_bar(spans, max_len, width), *grid(cells, columns)])
