"""Qwen2-VL / Qwen2.5-VL vision geometry and grounding dialects (SPEC-qwen.md §2, §3, §4).

Pure functions: image resize and token counts, the video frame plan, and box / quad coordinates in the
Qwen-VL, Qwen2-VL and Qwen2.5-VL dialects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

PATCH_SIZE = 14
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28
TEMPORAL_PATCH_SIZE = 2
MAX_RATIO = 200

IMAGE_MIN_PIXELS = 4 * FACTOR * FACTOR  # 3136
IMAGE_MAX_PIXELS = 16384 * FACTOR * FACTOR  # 12,845,056 (the shipped Qwen2.5-VL preprocessor config)

FRAME_FACTOR = 2
VIDEO_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR
VIDEO_TOTAL_PIXELS = int(128000 * FACTOR * FACTOR * 0.9)

DIALECTS = ("qwen-vl", "qwen2-vl", "qwen2.5-vl")


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> tuple[int, int]:
    """Resized (height, width), both multiples of ``factor``, pixels within the limits (SPEC §3).

    Raises ValueError for a non-positive side, an aspect ratio above 200, or max_pixels < min_pixels.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height} (WxH)")
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"aspect ratio {ratio:.1f} of a {width}x{height} (WxH) image exceeds {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid(
    height: int, width: int, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS
) -> tuple[int, int, int]:
    """The image's grid (t, h, w) = (1, h'/14, w'/14) in 14-px patches (SPEC §3)."""
    h, w = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    return 1, h // PATCH_SIZE, w // PATCH_SIZE


def image_tokens(
    height: int, width: int, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS
) -> int:
    """Number of LLM tokens (``<|image_pad|>`` count) of an image: (h'/28)·(w'/28) (SPEC §3)."""
    h, w = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    return (h // FACTOR) * (w // FACTOR)


@dataclass(frozen=True)
class VideoPlan:
    """Which frames to sample and how the model sees them (SPEC §4)."""

    frame_indices: list[int]
    sample_fps: float
    resized_height: int
    resized_width: int
    grid_thw: tuple[int, int, int]
    n_tokens: int
    second_per_grid_t: float

    @property
    def n_frames(self) -> int:
        """Number of sampled frames."""
        return len(self.frame_indices)


def _frame_range(
    total_frames: int, video_fps: float, video_start: float | None, video_end: float | None
) -> tuple[int, int, int]:
    """(start, end, count) of the frames inside [video_start, video_end] seconds (qwen-vl-utils 0.0.14)."""
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    start = 0
    if video_start is not None:
        start = math.ceil(max(0.0, min(video_start, max_duration)) * video_fps)
    end = total_frames - 1
    if video_end is not None:
        end = min(math.floor(max(0.0, min(video_end, max_duration)) * video_fps), total_frames - 1)
    if start >= end:
        raise ValueError(f"empty video range: start frame {start} >= end frame {end}")
    return start, end, end - start + 1


def _linspace_indices(start: int, end: int, n: int) -> list[int]:
    """torch.linspace(start, end, n).round(), the float32 computation qwen-vl-utils uses."""
    import torch  # heavy: imported only where video planning needs it

    return torch.linspace(start, end, n).round().long().tolist()


def video_plan(
    total_frames: int,
    video_fps: float,
    height: int,
    width: int,
    fps: float = VIDEO_FPS,
    min_frames: int = VIDEO_MIN_FRAMES,
    max_frames: int = VIDEO_MAX_FRAMES,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    total_pixels: int = VIDEO_TOTAL_PIXELS,
    nframes: int | None = None,
    video_start: float | None = None,
    video_end: float | None = None,
) -> VideoPlan:
    """Frame plan of a video as qwen-vl-utils 0.0.14 makes it with the decord reader (SPEC §4).

    ``nframes``, when given, replaces the fps rule (rounded to a multiple of 2). ``video_start`` /
    ``video_end`` (seconds) restrict the frames as qwen-vl-utils' calculate_video_frame_range does.
    ``max_pixels`` can only lower the per-frame cap max(min(768·28·28, total_pixels / n · 2),
    int(1.05·min_pixels)). Raises ValueError on invalid input (no frames, fps <= 0, too few frames).
    """
    if total_frames <= 0:
        raise ValueError(f"video has no frames (total_frames={total_frames})")
    if not video_fps > 0:
        raise ValueError(f"video fps must be positive, got {video_fps}")
    if nframes is None and not fps > 0:
        raise ValueError(f"sampling fps must be positive, got {fps}")
    start, end, count = _frame_range(total_frames, video_fps, video_start, video_end)
    if nframes is not None:
        n = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(min(max_frames, count) / FRAME_FACTOR) * FRAME_FACTOR
        n = min(min(max(count / video_fps * fps, lo), hi), count)
        n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= count:
        raise ValueError(f"cannot sample {n} frames from {count}: need {FRAME_FACTOR} <= n <= {count}")
    indices = _linspace_indices(start, end, n)
    sample_fps = n / count * video_fps
    cap = max(min(VIDEO_MAX_PIXELS, total_pixels / n * FRAME_FACTOR), int(min_pixels * 1.05))
    h, w = smart_resize(height, width, FACTOR, min_pixels, min(max_pixels, cap))
    grid = (n // TEMPORAL_PATCH_SIZE, h // PATCH_SIZE, w // PATCH_SIZE)
    n_tokens = grid[0] * (h // FACTOR) * (w // FACTOR)
    return VideoPlan(indices, sample_fps, h, w, grid, n_tokens, TEMPORAL_PATCH_SIZE / sample_fps)


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown grounding dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")


def _to_dialect(value: float, side: int, resized_side: int, dialect: str) -> int:
    if dialect == "qwen-vl":
        return min(999, max(0, math.floor(value * 1000 / side)))
    if dialect == "qwen2-vl":
        return min(1000, max(0, round(value / side * 1000)))
    return min(resized_side - 1, max(0, round(value * resized_side / side)))


def _from_dialect(coord: float, side: int, resized_side: int, dialect: str) -> float:
    if dialect == "qwen-vl":
        return (coord + 0.5) * side / 1000  # centre of the 1/1000 bin the value was floored into
    if dialect == "qwen2-vl":
        return coord * side / 1000
    return coord * side / resized_side


def _convert_points(
    values: Sequence[float],
    width: int,
    height: int,
    dialect: str,
    min_pixels: int,
    max_pixels: int,
    inverse: bool,
) -> list:
    _check_dialect(dialect)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height} (WxH)")
    rh, rw = height, width
    if dialect == "qwen2.5-vl":
        rh, rw = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    fn = _from_dialect if inverse else _to_dialect
    return [
        fn(v, width, rw, dialect) if i % 2 == 0 else fn(v, height, rh, dialect) for i, v in enumerate(values)
    ]


def convert_box(
    box_xyxy: Sequence[float],
    width: int,
    height: int,
    dialect: str,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> list[int]:
    """Corner box [x1, y1, x2, y2] in original pixels -> the dialect's integer coordinates (SPEC §2).

    qwen-vl: floor(x·1000/W) in [0, 999]; qwen2-vl: round(x/W·1000) in [0, 1000]; qwen2.5-vl: pixels of
    the smart-resized image (W'×H' from the limits), round(x·W'/W) in [0, W'−1].
    """
    if len(box_xyxy) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box_xyxy)}")
    return _convert_points(box_xyxy, width, height, dialect, min_pixels, max_pixels, inverse=False)


def convert_quad(
    points8: Sequence[float],
    width: int,
    height: int,
    dialect: str,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> list[int]:
    """Quad [x1, y1, …, x4, y4] in original pixels -> the dialect's integer coordinates (SPEC §2)."""
    if len(points8) != 8:
        raise ValueError(f"a quad has 8 coordinates, got {len(points8)}")
    return _convert_points(points8, width, height, dialect, min_pixels, max_pixels, inverse=False)


def convert_point(
    point_xy: Sequence[float],
    width: int,
    height: int,
    dialect: str,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> list[int]:
    """Point [x, y] in original pixels -> the dialect's integer coordinates (SPEC §2, ``point_2d``)."""
    if len(point_xy) != 2:
        raise ValueError(f"a point has 2 coordinates, got {len(point_xy)}")
    return _convert_points(point_xy, width, height, dialect, min_pixels, max_pixels, inverse=False)


def box_to_pixels(
    coords: Sequence[float],
    width: int,
    height: int,
    dialect: str,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> list[float]:
    """Inverse of convert_box: dialect coordinates -> original pixels (SPEC §2)."""
    if len(coords) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(coords)}")
    return _convert_points(coords, width, height, dialect, min_pixels, max_pixels, inverse=True)


def quad_to_pixels(
    coords: Sequence[float],
    width: int,
    height: int,
    dialect: str,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> list[float]:
    """Inverse of convert_quad: dialect coordinates -> original pixels (SPEC §2)."""
    if len(coords) != 8:
        raise ValueError(f"a quad has 8 coordinates, got {len(coords)}")
    return _convert_points(coords, width, height, dialect, min_pixels, max_pixels, inverse=True)


def _pairs(coords: Sequence[int]) -> str:
    return ",".join(f"({coords[i]},{coords[i + 1]})" for i in range(0, len(coords), 2))


_TAGS = {
    "qwen-vl": ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"),
    "qwen2-vl": (
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
    ),
}


def _format_text(phrase: str | None, shapes: list[Sequence[int]], dialect: str, quad: bool) -> str:
    ref_open, ref_close, box_open, box_close, quad_open, quad_close = _TAGS[dialect]
    shape_open, shape_close = (quad_open, quad_close) if quad else (box_open, box_close)
    ref = f"{ref_open}{phrase}{ref_close}" if phrase else ""
    return ref + "".join(f"{shape_open}{_pairs(s)}{shape_close}" for s in shapes)


def _as_shapes(coords: Sequence, n: int) -> list[Sequence[int]]:
    shapes = list(coords) if coords and isinstance(coords[0], Sequence) else [coords]
    for s in shapes:
        if len(s) != n:
            raise ValueError(f"expected {n} coordinates per shape, got {len(s)}")
    return shapes


def format_box_text(phrase: str | None, coords: Sequence, dialect: str) -> str:
    """The dialect's text for a phrase and one box (or a list of boxes) already converted (SPEC §2).

    qwen-vl: ``<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>``; qwen2-vl: the same with
    ``<|object_ref_start|>…<|object_ref_end|><|box_start|>…<|box_end|>``. An empty phrase omits the ref.
    qwen2.5-vl gives format_json_boxes' fenced JSON list.
    """
    _check_dialect(dialect)
    shapes = _as_shapes(coords, 4)
    if dialect == "qwen2.5-vl":
        return format_json_boxes([(phrase or "", s) for s in shapes])
    return _format_text(phrase, shapes, dialect, quad=False)


def format_quad_text(phrase: str | None, coords: Sequence, dialect: str) -> str:
    """The dialect's OCR text for a phrase and one quad (or a list of quads) already converted (SPEC §2).

    qwen-vl: ``<ref>text</ref><quad>(x1,y1),(x2,y2),(x3,y3),(x4,y4)</quad>``; qwen2-vl: inside
    ``<|quad_start|>…<|quad_end|>``. qwen2.5-vl has no quad text: use format_json_boxes.
    """
    _check_dialect(dialect)
    if dialect == "qwen2.5-vl":
        raise ValueError("qwen2.5-vl has no quad text; use format_json_boxes with boxes or points")
    return _format_text(phrase, _as_shapes(coords, 8), dialect, quad=True)


def format_json_boxes(
    items: Sequence[tuple[str, Sequence[int]]], label_key: str = "label", fenced: bool = True
) -> str:
    """Qwen2.5-VL grounding JSON (SPEC §2) as its cookbooks print it.

    ``items`` are (label, coords) with coords already converted: 4 numbers give ``"bbox_2d"``, 2 give
    ``"point_2d"``; ``label_key`` names the text field (``"text_content"`` for OCR). One object a line,
    tab-indented, inside a ```json fenced block unless ``fenced`` is False, e.g.
    ``'```json\\n[\\n\\t{"bbox_2d": [147, 134, 619, 407], "label": "cat"}\\n]\\n```'``.
    """
    lines = []
    for label, coords in items:
        if len(coords) == 4:
            key = "bbox_2d"
        elif len(coords) == 2:
            key = "point_2d"
        else:
            raise ValueError(f"a box has 4 coordinates and a point 2, got {len(coords)}")
        obj = {key: [int(c) for c in coords], label_key: label}
        lines.append("\t" + json.dumps(obj, ensure_ascii=False))
    body = "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    return f"```json\n{body}\n```" if fenced else body
