"""Readers: input files -> partitions -> rows (DESIGN.md, Input formats). Only readers touch input storage.

A reader has `plan(spec) -> list[Partition]` (cheap: lists files, counts lines) and
`read(spec, part) -> list[row]`. A record that cannot be read is still a row, with `drop_stage="read"` and a
reason (`invalid_json`, `invalid_utf8`, `missing_file` ...), so it is counted and lands in rejects.

Paths named by records (image and video paths) must resolve, symlinks followed, inside the input root: the
folder `input.path` names, or the folder of the file it names; for images under an `image_dir` option, that
folder. Others are `path_outside_root` and never opened, unless `input.allow_outside_root`. A text longer
than `input.max_caption_bytes` is `caption_too_long`, and only a short prefix of it stays in the row.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, RecipeError
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


def input_root(path: str) -> tuple[pafs.FileSystem, str]:
    """(fs, root) of an input.path: the folder itself, or the folder of the file (one stat a process)."""
    return _input_root(path if is_remote(path) else os.path.abspath(path))


@functools.lru_cache(maxsize=64)
def _input_root(path: str) -> tuple[pafs.FileSystem, str]:
    fs, p = resolve(path)
    return fs, p if fs.get_file_info(p).type == pafs.FileType.Directory else posixpath.dirname(p)


def confined(spec: InputSpec, root: str) -> str | None:
    """The root paths must stay under, or None when input.allow_outside_root."""
    return None if spec.allow_outside_root else root


def inside(fs: pafs.FileSystem, path: str, root_fs: pafs.FileSystem, root: str) -> bool:
    """Whether `path` on `fs` lies under `root` on `root_fs`; local paths with their symlinks followed."""
    if type(fs) is not type(root_fs):
        return False
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            path, root = os.path.realpath(path), os.path.realpath(root)
        except ValueError:  # a NUL in the path: opening it fails as missing_file
            return True
    else:
        path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def outside(spec: InputSpec, fs: pafs.FileSystem, path: str, root: str) -> bool:
    """A listed file (not a path a record names) that a symlink takes out of `root`, when that is not allowed."""
    return not spec.allow_outside_root and not inside(fs, path, fs, root)


def locate(fs: pafs.FileSystem, base_dir: str, value: str, root: str | None
           ) -> tuple[pafs.FileSystem, str, str | None]:
    """A path a record names -> (fs, path, error reason): relative to `base_dir`, or absolute, or a URI with
    its own filesystem; `path_outside_root` when `root` is set and the path does not resolve under it."""
    if is_remote(value):
        try:
            fs2, p = resolve(value)
        except (ValueError, OSError):
            return fs, value, "missing_file"
    else:
        fs2, p = fs, value if os.path.isabs(value) else posixpath.normpath(posixpath.join(base_dir, value))
    if root is not None and not inside(fs2, p, fs, root):
        return fs2, p, "path_outside_root"
    return fs2, p, None


def cap_text(row: dict[str, Any], spec: InputSpec) -> dict[str, Any]:
    """The row dropped as `caption_too_long` when its text exceeds input.max_caption_bytes; the text then goes
    (meta keeps its first 200 characters and its length in bytes)."""
    text, cap = row["text"], spec.max_caption_bytes
    if cap is None or not isinstance(text, str) or row["drop_reason"] or len(text) * 4 <= cap:
        return row  # UTF-8 takes at most 4 bytes a character: most texts need no encoding to tell
    n = len(text.encode("utf-8", "surrogatepass"))
    return too_long(row, spec, text, n) if n > cap else row


def too_long(row: dict[str, Any], spec: InputSpec, text: str, n: int) -> dict[str, Any]:
    """Drop as `caption_too_long` a row whose text (`n` bytes, given by `text` or its start) is over the cap."""
    row["text"] = None
    row["meta"]["caption_prefix"], row["meta"]["caption_bytes"] = text[:200], n
    return drop(row, "caption_too_long", f"{n} bytes, over input.max_caption_bytes ({int(spec.max_caption_bytes)})")


_LEADING_SPACE = re.compile(rb"(?:\xef\xbb\xbf)?\s*")


def check_json_lines(data: bytes, spec: InputSpec, relpath: str) -> None:
    """A JSON array given where JSON Lines are read is one error line, not an invalid_json row per line."""
    if data[257:262] == b"ustar" or relpath.endswith(".tar"):
        raise RecipeError(f"input.path: {relpath} is a tar archive, not JSON Lines as format {spec.format!r} "
                          "reads; for webdataset tars set input.format: webdataset")
    start = _LEADING_SPACE.match(data).end()
    if data[start:start + 1] == b"[":
        stem = posixpath.basename(relpath).removesuffix(".gz").rsplit(".", 1)[0]
        raise RecipeError(f"input.path: {relpath} is a JSON array, not JSON Lines (one object per line) as format "
                          f"{spec.format!r} reads; convert it, e.g. jq -c '.[]' {relpath} > {stem}.jsonl")


def check_not_empty(spec: InputSpec, parts: list[Partition], allow_empty: bool, any_records: Any = None) -> None:
    """An input without a single record is an error (unless allowed) when the plan can tell: every partition
    knows its record count, or the reader's ``any_records(spec, parts)`` (tars: the first member) says none."""
    if allow_empty:
        return
    counted = all(p.stop is not None for p in parts)
    if (counted and sum(p.stop - p.start for p in parts) == 0) or (
            not counted and any_records is not None and not any_records(spec, parts)):
        raise RecipeError(f"input.path: no records in {spec.path} (empty input); "
                          "pass --allow-empty to run the job anyway")


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


def load_image(fs: pafs.FileSystem, base_dir: str, value: Any, spec: InputSpec, root: str | None = None
               ) -> tuple[bytes | None, str | None, str | None]:
    """An image column value -> (bytes, path, error reason). Path strings are relative to `base_dir` and must
    resolve under `root` (default: `base_dir`) unless input.allow_outside_root; one outside is not opened."""
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            if not isinstance(data, bytes | bytearray | list):
                return None, None, "decode_error"  # e.g. base64 text: not the {bytes, path} struct
            try:
                return bytes(data), value.get("path"), None
            except (ValueError, TypeError):
                return None, None, "decode_error"
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None, None
    if not isinstance(value, str) or not value:
        return None, None, "no_image"
    if value.startswith(("http://", "https://")):
        return None, value, "url_not_downloaded"  # fetching is img2dataset's job; then read its tars
    fs2, p, err = locate(fs, base_dir, value, confined(spec, root or base_dir))
    if err:
        return None, value, err
    try:
        with fs2.open_input_stream(p) as f:
            return f.read(), value, None
    except (FileNotFoundError, IsADirectoryError, OSError, ValueError):  # ValueError: e.g. a NUL in the path
        return None, value, "missing_file"


def check_options(spec: InputSpec, allowed: tuple[str, ...]) -> None:
    """A wrong option key is one clear line, like a wrong recipe key."""
    for key in spec.options:
        if key not in allowed:
            raise RecipeError(f"input.options.{key}: unknown option for format {spec.format!r} "
                              f"(allowed: {', '.join(allowed) or 'none'})")


def read_text_file(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:  # pyarrow would guess from the name otherwise
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def iter_json_lines(data: bytes, part: Partition, key_field: str | None
                    ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The lines of a jsonl partition as (row, record); a line that is not a UTF-8 JSON object comes as
    (row dropped with a reason, None). The key is `key_field`'s value when the record has it, else the
    1-based line number."""
    lines = data.split(b"\n")
    for i in range(part.stop - part.start):
        line_no = part.start + i + 1
        raw = lines[i] if i < len(lines) else b""
        row = new_row(make_id(part.relpath, line_no), f"{part.relpath}:{line_no}")
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield drop(row, "invalid_utf8", str(e)[:200]), None
            continue
        if not text.strip():
            yield drop(row, "empty_line"), None
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            yield drop(row, "invalid_json", str(e)[:200]), None
            continue
        if not isinstance(rec, dict):
            yield drop(row, "invalid_json", "line is not a JSON object"), None
            continue
        if "\\u" in text:  # \ud83d escapes decode to lone surrogates that no UTF-8 writer accepts
            try:
                json.dumps(rec, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as e:
                yield drop(row, "invalid_utf8", f"escaped lone surrogate: {str(e)[:150]}"), None
                continue
        if key_field and rec.get(key_field) is not None:
            key = str(rec[key_field])
            row["id"], row["source"] = make_id(part.relpath, key), f"{part.relpath}:{line_no}#{key}"
        yield row, rec


def attach_images(row: dict[str, Any], fs: Any, base_dir: str, spec: InputSpec,
                  values: list[tuple[str, Any]]) -> bool:
    """Load each (label, value) image into the row (paths into ``meta["image_paths"]``); the first that fails
    drops the row with its reason and the label in the detail. True when the row was dropped."""
    root = input_root(spec.path)[1]
    for label, value in values:
        data, path, err = load_image(fs, base_dir, value, spec, root)
        if err:
            drop(row, err, f"{label}: {path or value!r}"[:300])
            return True
        row["images"].append(data)
        if path:
            row["meta"].setdefault("image_paths", []).append(path)
    return False


def record_to_row(rec: dict[str, Any], row: dict[str, Any], spec: InputSpec, fs: pafs.FileSystem,
                  base_dir: str) -> dict[str, Any]:
    """A web-pair record (dict) -> row: images loaded, caption, answer, small scalar fields kept in meta."""
    text = rec.get(spec.text_column)
    row["text"] = text if isinstance(text, str) or text is None else str(text)
    if cap_text(row, spec)["drop_reason"]:
        return row
    images = rec.get(spec.image_column)
    values = images if isinstance(images, list) else ([images] if images is not None else [])
    if attach_images(row, fs, base_dir, spec, [(spec.image_column, v) for v in values]):
        return row
    if spec.answer_column:
        ans = rec.get(spec.answer_column)
        row["answer"] = ans if isinstance(ans, str) or ans is None else json.dumps(ans)
    for k, v in rec.items():
        if k in (spec.image_column, spec.text_column, spec.answer_column):
            continue
        if isinstance(v, float) and not math.isfinite(v):  # json.loads accepts NaN; JSON writers do not
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
