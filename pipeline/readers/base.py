"""Readers: input files -> partitions -> rows (DESIGN.md, Input formats). Only readers touch input storage.

A reader has `plan(spec) -> list[Partition]` (cheap: lists files, counts lines) and
`read(spec, part) -> list[row]`. A record that cannot be read is still a row, with `drop_stage="read"` and a
reason (`invalid_json`, `invalid_utf8`, `missing_file` ...), so it is counted and lands in rejects.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from pipeline.recipe import InputSpec, RecipeError
from pipeline.storage import is_remote, resolve

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Partition:
    """A unit of work: one input file, or a fixed slice [start, stop) of records of a large one."""

    name: str
    path: str
    relpath: str
    start: int = 0
    stop: int | None = None
    offset: int = 0
    nbytes: int = -1


def drop(row: dict[str, Any], reason: str, detail: str | None = None) -> dict[str, Any]:
    row["drop_stage"], row["drop_reason"] = "read", reason
    if detail:
        row["meta"]["error"] = detail
    return row


def _files(spec: InputSpec, suffixes: tuple[str, ...]) -> tuple[pafs.FileSystem, str, list[str]]:
    """(fs, dataset root, sorted file paths) for a file or a folder of files."""
    fs, path = resolve(spec.path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise RecipeError(f"input.path: not found: {spec.path}")
    if info.type == pafs.FileType.File:
        return fs, posixpath.dirname(path), [path]
    sel = pafs.FileSelector(path, recursive=True)
    files = sorted(i.path for i in fs.get_file_info(sel)
                   if i.type == pafs.FileType.File and i.path.lower().endswith(suffixes))
    if not files:
        raise RecipeError(f"input.path: no {'/'.join(suffixes)} files under {spec.path}")
    return fs, path, files


def _rel(root: str, path: str) -> str:
    return posixpath.relpath(path, root)


def _name(i: int) -> str:
    return f"p{i:05d}"


def load_image(fs: pafs.FileSystem, base_dir: str, value: Any) -> tuple[bytes | None, str | None, str | None]:
    """An image column value -> (bytes, path, error reason). Path strings are relative to the input file."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), value.get("path"), None
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None, None
    if not isinstance(value, str) or not value:
        return None, None, "no_image"
    if value.startswith(("http://", "https://")):
        return None, value, "url_not_downloaded"  # fetching is img2dataset's job; then read its tars
    if is_remote(value):
        try:
            fs2, p = resolve(value)
        except (ValueError, OSError):
            return None, value, "missing_file"
    else:
        fs2 = fs
        p = value if os.path.isabs(value) else posixpath.normpath(posixpath.join(base_dir, value))
    try:
        with fs2.open_input_stream(p) as f:
            return f.read(), value, None
    except (FileNotFoundError, IsADirectoryError, OSError):
        return None, value, "missing_file"


def record_to_row(rec: dict[str, Any], row: dict[str, Any], spec: InputSpec, fs: pafs.FileSystem,
                  base_dir: str) -> dict[str, Any]:
    """A web-pair record (dict) -> row: images loaded, caption, answer, small scalar fields kept in meta."""
    text = rec.get(spec.text_column)
    row["text"] = text if isinstance(text, str) or text is None else str(text)
    images = rec.get(spec.image_column)
    values = images if isinstance(images, list) else ([images] if images is not None else [])
    for value in values:
        data, path, err = load_image(fs, base_dir, value)
        if err:
            return drop(row, err, f"{spec.image_column}: {path or value!r}"[:300])
        row["images"].append(data)
        if path:
            row["meta"].setdefault("image_paths", []).append(path)
    if spec.answer_column:
        ans = rec.get(spec.answer_column)
        row["answer"] = ans if isinstance(ans, str) or ans is None else json.dumps(ans)
    for k, v in rec.items():
        if k in (spec.image_column, spec.text_column, spec.answer_column):
            continue
        if isinstance(v, str | int | float | bool) and len(str(v)) <= 1000:
            row["meta"][k] = v
    return row




def fingerprint(spec: InputSpec, parts: list[Partition]) -> list[dict[str, Any]]:
    """Size and content hash of each input file (job.json)."""
    import hashlib

    fs, _ = resolve(spec.path)
    out = []
    for path in sorted({p.path for p in parts}):
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            out.append({"path": posixpath.basename(path), "type": "folder"})
            continue
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out.append({"path": posixpath.basename(path), "bytes": info.size, "sha256": h.hexdigest()})
    return out
