"""OCR readers: ICDAR-2015 incidental scene text, and WildReceipt (at the end: the same row layout plus key
classes, for the ``ocr`` and ``kie`` builders) (DESIGN.md, Input formats).

input.path is a folder holding ``imgs/`` (img_N.jpg) and ``gt/`` (gt_img_N.txt); ``input.options.image_dir`` /
``input.options.gt_dir`` override either folder (paths resolve like input.path). One row per image, images in
sorted order:

- ``images``: [the image file's bytes]
- ``annotations``: {"width": W, "height": H, "texts": [{"quad": [x1, y1, ..., x4, y4] (8 ints, original pixels),
  "text": transcription, "ignore": text == "###"}, ...]} in file order
- ``meta``: {"file_name", "gt_file", "bad_lines"}

Ground-truth lines are ``x1,y1,x2,y2,x3,y3,x4,y4,transcription``: the transcription is everything after the
eighth comma (it may hold commas), the file may start with a UTF-8 BOM and use CRLF line ends. An unparsable
line is skipped and counted in ``meta["bad_lines"]``; blank lines are ignored. Drop reasons: ``missing_file``
(image or gt file), ``decode_error`` (image header unreadable), ``invalid_utf8`` (gt file).
"""

from __future__ import annotations

import math
import posixpath
from typing import Any

import pyarrow.fs as pafs

from pipeline.readers.base import IMAGE_EXTENSIONS, Partition, check_options, drop, outside
from pipeline.readers.grounding import cached, image_size, option_path, slices
from pipeline.readers.vl import attach_image
from pipeline.readers.web import JsonlReader
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, RecipeError
from pipeline.storage import resolve


def parse_gt_line(line: str) -> dict[str, Any] | None:
    """One ICDAR-2015 gt line -> {"quad", "text", "ignore"}, or None when unparsable."""
    parts = line.split(",", 8)
    if len(parts) != 9:
        return None
    try:
        quad = [int(p.strip()) for p in parts[:8]]
    except ValueError:
        return None
    text = parts[8]
    return {"quad": quad, "text": text, "ignore": text.strip() == "###"}


def parse_gt(text: str) -> tuple[list[dict[str, Any]], int]:
    """A gt file's text (BOM already removed) -> (texts in file order, number of unparsable lines)."""
    texts, bad = [], 0
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        item = parse_gt_line(line)
        if item is None:
            bad += 1
        else:
            texts.append(item)
    return texts, bad


class Icdar2015Reader:
    options = ("image_dir", "gt_dir")

    def _layout(self, spec: InputSpec) -> tuple[pafs.FileSystem, str, pafs.FileSystem, str, pafs.FileSystem, str]:
        check_options(spec, self.options)
        fs, root = resolve(spec.path)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            raise RecipeError(f"input.path: format icdar2015 needs a folder with imgs/ and gt/: {spec.path}")
        ifs, image_dir = option_path(spec, "image_dir", posixpath.join(root, "imgs"))
        gfs, gt_dir = option_path(spec, "gt_dir", posixpath.join(root, "gt"))
        for key, f, d in (("image_dir", ifs, image_dir), ("gt_dir", gfs, gt_dir)):
            if f.get_file_info(d).type != pafs.FileType.Directory:
                raise RecipeError(f"input.options.{key}: folder not found: {d}")
        return fs, root, ifs, image_dir, gfs, gt_dir

    @staticmethod
    def _images(fs: pafs.FileSystem, image_dir: str) -> list[str]:
        sel = pafs.FileSelector(image_dir, recursive=False)
        return sorted(i.path for i in fs.get_file_info(sel)
                      if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_EXTENSIONS))

    def plan(self, spec: InputSpec) -> list[Partition]:
        _, root, ifs, image_dir, _, _ = self._layout(spec)
        images = self._images(ifs, image_dir)
        if not images:
            raise RecipeError(f"input.path: no images in {image_dir}")
        return slices(len(images), spec.partition_rows, root, ".")

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        _, root, ifs, image_dir, gfs, gt_dir = self._layout(spec)
        rows = []
        for path in self._images(ifs, image_dir)[part.start:part.stop]:
            rel = posixpath.relpath(path, root)
            stem = posixpath.splitext(posixpath.basename(path))[0]
            gt_name = f"gt_{stem}.txt"
            row = new_row(make_id(rel, stem), rel)
            row["meta"] = {"file_name": posixpath.basename(path), "gt_file": gt_name, "bad_lines": 0}
            if outside(spec, ifs, path, image_dir):
                rows.append(drop(row, "path_outside_root", f"{rel} links outside {image_dir}"))
                continue
            try:
                with ifs.open_input_stream(path) as f:
                    data = f.read()
            except OSError:
                rows.append(drop(row, "missing_file", rel))
                continue
            row["images"] = [data]
            size = image_size(data)
            if size is None:
                rows.append(drop(row, "decode_error", f"{rel}: cannot read the image size"))
                continue
            try:
                with gfs.open_input_stream(posixpath.join(gt_dir, gt_name)) as f:
                    raw = f.read()
            except OSError:
                rows.append(drop(row, "missing_file", f"ground truth {gt_name}"))
                continue
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                rows.append(drop(row, "invalid_utf8", f"{gt_name}: {e}"[:200]))
                continue
            texts, bad = parse_gt(text)
            row["meta"]["bad_lines"] = bad
            row["annotations"] = {"width": size[0], "height": size[1], "texts": texts}
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------- WildReceipt


def parse_class_list(text: str) -> dict[int, str]:
    """WildReceipt's class_list.txt (``N Name`` per line, trailing tabs allowed) -> {N: Name}."""
    classes = {}
    for line in text.splitlines():
        num, _, name = line.strip().partition(" ")
        if num.isdigit() and name.strip():
            classes[int(num)] = name.strip()
    return classes


def _coord(v: float) -> int | float:
    return int(v) if float(v).is_integer() else round(float(v), 6)


class WildReceiptReader(JsonlReader):
    """WildReceipt (mmocr's KIE layout): input.path is an annotation file (``train.txt`` / ``test.txt``), one JSON
    object per line: ``file_name`` (relative to ``input.options.image_dir``, default the file's folder; when
    that path is absent its trailing parts are tried, so mmocr's ``tests/data/.../2.jpeg`` finds ``2.jpeg``),
    ``height``, ``width``, ``annotations`` [{"box": 8 numbers (a quad, clockwise from any corner), "text",
    "label"}]. ``input.options.class_list`` names the classes (default ``class_list.txt`` beside the file;
    ``null``: labels stay numbers). One row per line, the OCR reader's layout plus the key classes:

    - ``annotations``: {"width", "height", "texts": [{"quad": [8 numbers, original pixels], "text", "ignore":
      text empty or ``###``, "label": int, "category": class name or None}, ...]} in file order
    - ``meta``: {"file_name", "bad_annotations"} (a region without 8 finite numbers or a text is left out
      and counted)

    id = make_id(annotation file, file_name). Drop reasons: the jsonl ones (``invalid_json`` ...),
    ``missing_field`` (no file_name / annotations list), ``missing_file``, ``decode_error``."""

    suffixes = (".txt", ".jsonl", ".json")
    options = ("image_dir", "class_list")
    record_key = "file_name"

    def plan(self, spec: InputSpec) -> list[Partition]:
        fs, path = resolve(spec.path)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise RecipeError(f"input.path: format wildreceipt needs an annotation file (train.txt / test.txt), "
                              f"not found: {spec.path}")
        self._classes(spec)
        return super().plan(spec)

    @staticmethod
    def _classes(spec: InputSpec) -> dict[int, str]:
        if "class_list" in spec.options and spec.options["class_list"] is None:
            return {}
        fs, path = resolve(spec.path)
        cfs, cpath = option_path(spec, "class_list", posixpath.join(posixpath.dirname(path), "class_list.txt"))
        if cfs.get_file_info(cpath).type != pafs.FileType.File:
            raise RecipeError(f"input.options.class_list: not found: {cpath} (name the class list, or null)")
        return cached(cfs, cpath, "wildreceipt_classes", lambda b: parse_class_list(b.decode("utf-8-sig")))

    def convert(self, rec, row, spec, fs, base):
        name, anns = rec.get("file_name"), rec.get("annotations")
        if not isinstance(name, str) or not name.strip() or not isinstance(anns, list):
            return drop(row, "missing_field", "file_name and an annotations list are required")
        row["meta"] = {"file_name": name, "bad_annotations": 0}
        ifs, image_dir = option_path(spec, "image_dir", base)
        parts = name.strip("/").split("/")
        row = attach_image(row, ifs, image_dir, ["/".join(parts[k:]) for k in range(len(parts))], spec)
        if row["drop_reason"]:
            return row
        data = row["images"][0]
        width, height = rec.get("width"), rec.get("height")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            size = image_size(data)
            if size is None:
                return drop(row, "decode_error", f"{name}: cannot read the image size")
            width, height = size
        classes = self._classes(spec)
        texts = []
        for ann in anns:
            ann = ann if isinstance(ann, dict) else {}
            box, text, label = ann.get("box"), ann.get("text"), ann.get("label")
            if (not isinstance(box, list) or len(box) != 8 or not isinstance(text, str)
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                               for v in box)):
                row["meta"]["bad_annotations"] += 1
                continue
            label = label if isinstance(label, int) and not isinstance(label, bool) else None
            texts.append({"quad": [_coord(v) for v in box], "text": text, "ignore": text.strip() in ("", "###"),
                          "label": label, "category": classes.get(label) if label is not None else None})
        row["annotations"] = {"width": _coord(width), "height": _coord(height), "texts": texts}
        return row
