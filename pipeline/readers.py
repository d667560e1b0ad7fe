"""Readers: input files -> partitions -> rows (DESIGN.md, Input formats). Only readers touch input storage.

A reader has `plan(spec) -> list[Partition]` (cheap: lists files, counts lines) and
`read(spec, part) -> list[row]`. A record that cannot be read is still a row, with `drop_stage="read"` and a
reason (`invalid_json`, `invalid_utf8`, `missing_file` ...), so it is counted and lands in rejects.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.recipe import InputSpec, RecipeError
from pipeline.schema import make_id, new_row
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
    if is_remote(value):
        fs2, p = resolve(value)
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
    images = rec.get(spec.image_column)
    values = images if isinstance(images, list) else ([images] if images is not None else [])
    for value in values:
        data, path, err = load_image(fs, base_dir, value)
        if err:
            return drop(row, err, f"{spec.image_column}: {path or value!r}"[:300])
        row["images"].append(data)
        if path:
            row["meta"].setdefault("image_paths", []).append(path)
    text = rec.get(spec.text_column)
    row["text"] = text if isinstance(text, str) or text is None else str(text)
    if spec.answer_column:
        ans = rec.get(spec.answer_column)
        row["answer"] = ans if isinstance(ans, str) or ans is None else json.dumps(ans)
    for k, v in rec.items():
        if k in (spec.image_column, spec.text_column, spec.answer_column):
            continue
        if isinstance(v, str | int | float | bool) and len(str(v)) <= 1000:
            row["meta"][k] = v
    return row


class JsonlReader:
    """JSON lines with an image column (relative/absolute path, or {bytes, path}) and a caption column."""

    suffixes = (".jsonl", ".json")

    def plan(self, spec: InputSpec) -> list[Partition]:
        fs, root, files = _files(spec, self.suffixes)
        parts = []
        for path in files:
            with fs.open_input_stream(path) as f:
                data = f.read()
            offsets, line_no, pos = [0], 0, 0
            while True:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    if pos < len(data):
                        line_no += 1
                    break
                line_no += 1
                pos = nl + 1
                if line_no % spec.partition_rows == 0 and pos < len(data):
                    offsets.append(pos)
            ends = [*offsets[1:], len(data)]
            for k, (off, end) in enumerate(zip(offsets, ends, strict=True)):
                start = k * spec.partition_rows
                parts.append(Partition(_name(len(parts)), path, _rel(root, path), start,
                                       min(start + spec.partition_rows, line_no), off, end - off))
        return parts

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        fs, _ = resolve(spec.path)
        with fs.open_input_file(part.path) as f:
            f.seek(part.offset)
            data = f.read(part.nbytes) if part.nbytes >= 0 else f.read()
        rows = []
        base = posixpath.dirname(part.path)
        lines = data.split(b"\n")
        for i in range(part.stop - part.start):
            line_no = part.start + i + 1
            raw = lines[i] if i < len(lines) else b""
            row = new_row(make_id(part.relpath, line_no), f"{part.relpath}:{line_no}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.append(drop(row, "invalid_utf8", str(e)[:200]))
                continue
            if not text.strip():
                rows.append(drop(row, "empty_line"))
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                rows.append(drop(row, "invalid_json", str(e)[:200]))
                continue
            if not isinstance(rec, dict):
                rows.append(drop(row, "invalid_json", "line is not a JSON object"))
                continue
            if spec.key_column and rec.get(spec.key_column) is not None:
                key = str(rec[spec.key_column])
                row["id"], row["source"] = make_id(part.relpath, key), f"{part.relpath}:{line_no}#{key}"
            rows.append(record_to_row(rec, row, spec, fs, base))
        return rows


class ParquetReader:
    """Parquet with an image column (binary, path string or Hugging Face {bytes, path}) and a caption column."""

    suffixes = (".parquet",)

    def plan(self, spec: InputSpec) -> list[Partition]:
        fs, root, files = _files(spec, self.suffixes)
        parts = []
        for path in files:
            n = pq.ParquetFile(path, filesystem=fs).metadata.num_rows
            for start in range(0, max(n, 1), spec.partition_rows):
                parts.append(Partition(_name(len(parts)), path, _rel(root, path), start,
                                       min(start + spec.partition_rows, n)))
        return parts

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        fs, _ = resolve(spec.path)
        table = pq.read_table(part.path, filesystem=fs).slice(part.start, part.stop - part.start)
        base = posixpath.dirname(part.path)
        rows = []
        for i, rec in enumerate(table.to_pylist()):
            idx = part.start + i
            key = rec.get(spec.key_column) if spec.key_column else None
            key = str(key) if key is not None else idx
            row = new_row(make_id(part.relpath, key), f"{part.relpath}#{key}")
            rows.append(record_to_row(rec, row, spec, fs, base))
        return rows


class WebDatasetReader:
    """Webdataset tars as img2dataset writes them: KEY.jpg + KEY.txt + KEY.json (caption from .txt)."""

    suffixes = (".tar",)

    def plan(self, spec: InputSpec) -> list[Partition]:
        fs, root, files = _files(spec, self.suffixes)
        return [Partition(_name(i), p, _rel(root, p)) for i, p in enumerate(files)]

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        import webdataset as wds

        fs, _ = resolve(spec.path)
        with fs.open_input_stream(part.path) as f:
            data = f.read()
        samples: dict[str, dict[str, bytes]] = {}
        rows: list[dict[str, Any]] = []
        try:
            for entry in wds.tariterators.tar_file_iterator(io.BytesIO(data)):
                prefix, suffix = _split_key(entry["fname"])
                samples.setdefault(prefix, {})[suffix] = entry["data"]
        except (tarfile.TarError, OSError, ValueError) as e:
            row = new_row(make_id(part.relpath, "__tar__"), f"{part.relpath}#__tar__")
            rows.append(drop(row, "broken_tar", str(e)[:200]))
        for key in sorted(samples):
            files = samples[key]
            row = new_row(make_id(part.relpath, key), f"{part.relpath}#{key}")
            meta: dict[str, Any] = {}
            if "json" in files:
                try:
                    meta = json.loads(files["json"].decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    meta = {}
            image_ext = next((e for e in sorted(files) if "." + e.split(".")[-1] in IMAGE_EXTENSIONS), None)
            if image_ext is None:
                rows.append(drop(row, "no_image", f"files: {sorted(files)}"))
                continue
            row["images"] = [files[image_ext]]
            text = None
            if "txt" in files:
                try:
                    text = files["txt"].decode("utf-8")
                except UnicodeDecodeError:
                    rows.append(drop(row, "invalid_utf8", "KEY.txt"))
                    continue
            elif isinstance(meta.get(spec.text_column), str):
                text = meta[spec.text_column]
            row["text"] = text
            row["meta"] = {k: v for k, v in meta.items()
                           if isinstance(v, str | int | float | bool) and len(str(v)) <= 1000}
            rows.append(row)
        return rows


def _split_key(fname: str) -> tuple[str, str]:
    """webdataset's rule: the key is up to the first dot of the basename."""
    d, base = posixpath.split(fname)
    stem, _, suffix = base.partition(".")
    return posixpath.join(d, stem) if d else stem, suffix.lower()


class FolderReader:
    """A folder of images with sidecar captions: a.jpg + a.txt (no .txt -> no caption)."""

    def plan(self, spec: InputSpec) -> list[Partition]:
        fs, root, files = _files(spec, IMAGE_EXTENSIONS)
        parts = []
        for start in range(0, len(files), spec.partition_rows):
            parts.append(Partition(_name(len(parts)), root, ".", start, min(start + spec.partition_rows, len(files))))
        return parts

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        fs, root, files = _files(spec, IMAGE_EXTENSIONS)
        rows = []
        for path in files[part.start:part.stop]:
            rel = _rel(root, path)
            key = os.path.splitext(rel)[0]
            row = new_row(make_id(rel, key), rel)
            with fs.open_input_stream(path) as f:
                row["images"] = [f.read()]
            txt = os.path.splitext(path)[0] + ".txt"
            if fs.get_file_info(txt).type == pafs.FileType.File:
                with fs.open_input_stream(txt) as f:
                    raw = f.read()
                try:
                    row["text"] = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    rows.append(drop(row, "invalid_utf8", "sidecar .txt"))
                    continue
            rows.append(row)
        return rows


READERS: dict[str, Any] = {
    "jsonl": JsonlReader(),
    "parquet": ParquetReader(),
    "webdataset": WebDatasetReader(),
    "folder": FolderReader(),
}


def reader_for(spec: InputSpec) -> Any:
    return READERS[spec.format]


def iter_rows(spec: InputSpec) -> Iterator[dict[str, Any]]:
    """All rows of an input, in order, without Ray (tests and small tools)."""
    reader = reader_for(spec)
    for part in reader.plan(spec):
        yield from reader.read(spec, part)


def fingerprint(spec: InputSpec) -> list[dict[str, Any]]:
    """Size and content hash of each input file (job.json)."""
    import hashlib

    reader = reader_for(spec)
    fs, _ = resolve(spec.path)
    out = []
    for path in sorted({p.path for p in reader.plan(spec)}):
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            out.append({"path": path, "type": "folder"})
            continue
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out.append({"path": posixpath.basename(path), "bytes": info.size, "sha256": h.hexdigest()})
    return out
