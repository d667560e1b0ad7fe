"""Video reader: any container decord reads, sampled per the Qwen frame plan (DESIGN.md; SPEC-qwen.md §4).

input.path is a video file, a folder of videos (searched recursively, sorted), or a jsonl (``.jsonl``/``.json``)
whose records name a video (``video`` column, or ``input.options.video_column``; relative paths are relative to
the jsonl) with an optional caption/question and answer. For each video:

1. decode with decord (``decord.VideoReader(path)``, as qwen-vl-utils 0.0.14 does; remote URIs are read into
   memory first);
2. plan frames with ``formatters.qwen.video_plan(total_frames, avg_fps, h, w, **limits)``;
3. extract the planned frames (``get_batch``) and resize them to (resized_height, resized_width) exactly as
   qwen-vl-utils' ``fetch_video``: ``torchvision.transforms.functional.resize`` on the uint8 TCHW tensor,
   BICUBIC, antialias=True (the uint8 result is what fetch_video's ``.float()`` holds: integral values);
4. store each frame as lossless PNG bytes (RGB, uint8) in ``images``, in plan order.

Row: ``images`` = the frames; ``text`` = the jsonl's caption/question (``input.text_column`` when set in the
recipe, else ``caption``, else ``question``); ``answer`` = ``input.answer_column`` when set, else ``answer``;
``meta["video"]`` = {"path" (relative to the input root; as written in the jsonl), "total_frames" (decord's
frame count of the whole file), "video_fps" (decord's average fps), "frame_indices", "sample_fps", "grid_thw",
"second_per_grid_t", "resized_height", "resized_width", "n_tokens"}; ``meta["video_limits"]`` = the plan options
used; ``meta["width"]``/``meta["height"]`` = the original frame size; jsonl rows also keep their other small
scalar fields in meta.

Options (``input.options``; a jsonl record may override the plan options for its own video with fields of the
same names): ``fps``, ``min_frames``, ``max_frames``, ``min_pixels``, ``max_pixels``, ``total_pixels``,
``nframes``, ``video_start``, ``video_end`` (video_plan's arguments); ``video_column`` (jsonl, default "video");
``videos_per_partition`` (default 4: decoded frames are large).

Ids: a file or folder input: make_id(path relative to the input root, that path without its extension); a jsonl:
as the jsonl reader (make_id(jsonl path, line number or input.key_column's value)). Drop reasons:
``missing_file``, ``no_video`` (jsonl record without a video), ``decode_error`` (decord cannot open or decode it,
no frames, no fps), ``frame_plan_error`` (video_plan rejects it: too few frames, aspect ratio > 200, an empty
video_start/video_end range), ``path_outside_root`` (a path or symlink leading out of the input root: not
opened), ``caption_too_long`` (not decoded), plus the jsonl reasons (``invalid_json``, ...). Video files carry
no text: with a ``format:`` section, `check_recipe` refuses them before the job (no builder takes them).
"""

from __future__ import annotations

import io
import os
from typing import Any

import pyarrow.fs as pafs

from formatters import qwen
from pipeline.readers.base import (
    Partition,
    _files,
    _name,
    _rel,
    cap_text,
    check_options,
    confined,
    drop,
    input_root,
    locate,
    outside,
)
from pipeline.readers.qa import _scalars
from pipeline.readers.web import JsonlReader
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, Recipe, RecipeError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp")
JSONL_EXTENSIONS = (".jsonl", ".json")
PLAN_OPTIONS = ("fps", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels", "nframes",
                "video_start", "video_end")
FRAME_CHUNK = 32  # frames decoded and resized at a time (bounds memory on long videos)


class VideoError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _plan_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in PLAN_OPTIONS if options.get(k) is not None}


def resize_frames(frames: Any, height: int, width: int) -> Any:
    """uint8 (T, C, H, W) -> uint8 (T, C, height, width), exactly qwen-vl-utils 0.0.14's fetch_video resize."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F  # noqa: N812

    return F.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)


def _png(frame: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, "PNG")
    return buf.getvalue()


def decode_video(source: Any, options: dict[str, Any], chunk: int = FRAME_CHUNK) -> tuple[list[bytes], dict[str, Any]]:
    """A local path (or a file-like object) -> (PNG frames, plan dict); raises VideoError(reason, detail)."""
    import torch  # here: only video decoding needs it

    try:
        import decord

        vr = decord.VideoReader(source)
        total_frames, video_fps = len(vr), float(vr.get_avg_fps())
        height, width = (int(v) for v in vr[0].shape[:2]) if total_frames else (0, 0)
    except Exception as e:  # noqa: BLE001 - decord raises many error types: every one is a decode_error
        raise VideoError("decode_error", str(e).strip().splitlines()[0][:200] if str(e).strip() else repr(e)) from None
    if total_frames <= 0 or not video_fps > 0 or height <= 0 or width <= 0:
        raise VideoError("decode_error", f"no frames or no fps (frames={total_frames}, fps={video_fps})")
    try:
        plan = qwen.video_plan(total_frames, video_fps, height, width, **options)
    except (ValueError, TypeError) as e:
        raise VideoError("frame_plan_error", str(e)[:200]) from None
    frames: list[bytes] = []
    try:
        for s in range(0, plan.n_frames, chunk):
            batch = torch.from_numpy(vr.get_batch(plan.frame_indices[s:s + chunk]).asnumpy()).permute(0, 3, 1, 2)
            resized = resize_frames(batch, plan.resized_height, plan.resized_width)
            frames.extend(_png(f.permute(1, 2, 0).contiguous().numpy()) for f in resized)
    except Exception as e:  # noqa: BLE001
        raise VideoError("decode_error", str(e).strip()[:200] or repr(e)) from None
    info = {"total_frames": total_frames, "video_fps": video_fps, "frame_indices": list(plan.frame_indices),
            "sample_fps": plan.sample_fps, "grid_thw": list(plan.grid_thw),
            "second_per_grid_t": plan.second_per_grid_t, "resized_height": plan.resized_height,
            "resized_width": plan.resized_width, "n_tokens": plan.n_tokens}
    return frames, {"video": info, "width": width, "height": height}


def _fill(row: dict[str, Any], fs: pafs.FileSystem, path: str, display: str, options: dict[str, Any]
          ) -> dict[str, Any]:
    """Decode `path` on `fs` into the row (frames + meta), or drop it with a reason."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return drop(row, "missing_file", display[:300])
    if isinstance(fs, pafs.LocalFileSystem):
        source: Any = path
    else:
        with fs.open_input_stream(path) as f:
            source = io.BytesIO(f.read())
    try:
        frames, meta = decode_video(source, options)
    except VideoError as e:
        row["meta"]["video"] = {"path": display}
        return drop(row, e.reason, e.detail)
    meta["video"] = {"path": display, **meta["video"]}
    row["images"] = frames
    row["meta"].update(meta)
    row["meta"]["video_limits"] = _limits(options)
    return row


OPTIONS = (*PLAN_OPTIONS, "video_column", "videos_per_partition")


def _limits(options: dict[str, Any]) -> dict[str, Any]:
    """The plan options in effect (defaults of formatters.qwen.video_plan filled in)."""
    out: dict[str, Any] = {"fps": qwen.VIDEO_FPS, "min_frames": qwen.VIDEO_MIN_FRAMES,
                           "max_frames": qwen.VIDEO_MAX_FRAMES, "min_pixels": qwen.VIDEO_MIN_PIXELS,
                           "max_pixels": qwen.VIDEO_MAX_PIXELS, "total_pixels": qwen.VIDEO_TOTAL_PIXELS}
    out.update(options)
    if "nframes" in options:
        out.pop("fps")
    return out


class _VideoJsonl(JsonlReader):
    suffixes = JSONL_EXTENSIONS
    options = OPTIONS
    media_rereadable = False  # frames are decoded from the video: the work files keep them (pipeline/media.py)

    def rows_per_partition(self, spec: InputSpec) -> int:
        return int(spec.options.get("videos_per_partition", 4))

    def convert(self, rec, row, spec, fs, base):
        column = spec.options.get("video_column", "video")
        value = rec.get(column)
        text_col = spec.text_column if "text_column" in spec.model_fields_set else (
            "caption" if "caption" in rec else "question")
        answer_col = spec.answer_column if "answer_column" in spec.model_fields_set else "answer"
        for col, field in ((text_col, "text"), (answer_col, "answer")):
            v = rec.get(col) if col else None
            row[field] = v if isinstance(v, str) or v is None else str(v)
        row["meta"] = _scalars(rec, (column, text_col, answer_col or "", *PLAN_OPTIONS))
        if not isinstance(value, str) or not value:
            return drop(row, "no_video", f"{column}: {value!r}"[:300])
        if cap_text(row, spec)["drop_reason"]:
            return row
        options = {**_plan_options(spec.options), **_plan_options(rec)}
        vfs, vpath, err = locate(fs, base, value, confined(spec, input_root(spec.path)[1]))
        if err:
            return drop(row, err, f"{column}: {value}"[:300])
        return _fill(row, vfs, vpath, value, options)


class VideoReader:
    options = OPTIONS
    media_rereadable = False  # frames are decoded from the video: the work files keep them (pipeline/media.py)

    def _check(self, spec: InputSpec) -> bool:
        """Validate; True for a jsonl input."""
        check_options(spec, self.options)
        import importlib.util

        if importlib.util.find_spec("decord") is None:
            raise RecipeError("input.format: video needs decord (pip install 'vlcurate[video]'; "
                              "no wheels for arm64)")
        n = spec.options.get("videos_per_partition", 4)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RecipeError(f"input.options.videos_per_partition: must be a positive integer (got {n!r})")
        for key in PLAN_OPTIONS:
            v = spec.options.get(key)
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v < 0):
                raise RecipeError(f"input.options.{key}: must be a non-negative number (got {v!r})")
        lo = spec.options.get("min_pixels", qwen.VIDEO_MIN_PIXELS)
        hi = spec.options.get("max_pixels", qwen.VIDEO_MAX_PIXELS)
        if hi < lo:
            raise RecipeError(f"input.options.max_pixels: {hi} is below min_pixels {lo} (set both)")
        return spec.path.lower().endswith(JSONL_EXTENSIONS)

    def plan(self, spec: InputSpec) -> list[Partition]:
        if self._check(spec):
            return _VideoJsonl().plan(spec)
        _, root, files = _files(spec, VIDEO_EXTENSIONS)
        n = spec.options.get("videos_per_partition", 4)
        return [Partition(_name(i), root, ".", start, min(start + n, len(files)))
                for i, start in enumerate(range(0, len(files), n))]

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        if self._check(spec):
            return _VideoJsonl().read(spec, part)
        fs, root, files = _files(spec, VIDEO_EXTENSIONS)
        options = _plan_options(spec.options)
        rows = []
        for path in files[part.start:part.stop]:
            rel = _rel(root, path)
            row = new_row(make_id(rel, os.path.splitext(rel)[0]), rel)
            if outside(spec, fs, path, root):
                rows.append(drop(row, "path_outside_root", f"{rel} links outside {root}"))
                continue
            rows.append(_fill(row, fs, path, rel, options))
        return rows

    def check_recipe(self, recipe: Recipe) -> None:
        """Video files carry no caption: with a format section every one would be rejected `no_text`."""
        if recipe.model.format is not None and not self._check(recipe.input):
            raise RecipeError(
                f"format.builder: {recipe.model.format.builder} needs a caption or question per video, and "
                f"{recipe.input.path} holds video files without text (no builder takes captionless video): "
                "give input.path a jsonl with `video` + `caption` (or `question` + `answer`) per line, "
                "or remove the format section to only check and plan the videos")
