"""OCR reader: ICDAR-2015 incidental scene text (DESIGN.md, Input formats).

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

import posixpath
from typing import Any

import pyarrow.fs as pafs

from pipeline.readers.base import IMAGE_EXTENSIONS, Partition, check_options, drop, outside
from pipeline.readers.grounding import image_size, option_path, slices
from pipeline.recipe import InputSpec, RecipeError
from pipeline.schema import make_id, new_row
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
