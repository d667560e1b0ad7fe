"""Web image-text pairs: jsonl, parquet, webdataset tars (img2dataset layout), a folder with sidecar captions."""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.readers.base import (
    IMAGE_EXTENSIONS,
    Partition,
    _files,
    _name,
    _rel,
    cap_text,
    check_json_lines,
    check_options,
    drop,
    iter_json_lines,
    outside,
    read_text_file,
    record_to_row,
    too_long,
)
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec
from pipeline.storage import resolve
from pipeline.tar import iter_entries


class JsonlReader:
    """JSON lines (plain or gzip) with an image column (relative/absolute path, or {bytes, path}) and a caption
    column; subclasses convert other record layouts by overriding `convert`."""

    suffixes: tuple[str, ...] = (".jsonl", ".json", ".jsonl.gz")
    options: tuple[str, ...] = ()
    record_key: str | None = None  # the record's own id field, used when input.key_column is not set

    def rows_per_partition(self, spec: InputSpec) -> int:
        return spec.partition_rows

    def plan(self, spec: InputSpec) -> list[Partition]:
        check_options(spec, self.options)
        fs, root, files = _files(spec, self.suffixes)
        size = self.rows_per_partition(spec)
        parts = []
        for path in files:
            data = read_text_file(fs, path)
            check_json_lines(data, spec, _rel(root, path))
            offsets, n, pos = [0], 0, 0
            while (nl := data.find(b"\n", pos)) >= 0:
                n, pos = n + 1, nl + 1
                if n % size == 0 and pos < len(data):
                    offsets.append(pos)
            if pos < len(data):
                n += 1
            ends = [*offsets[1:], len(data)]
            for k, (off, end) in enumerate(zip(offsets, ends, strict=True)):
                start = k * size
                parts.append(Partition(_name(len(parts)), path, _rel(root, path), start, min(start + size, n),
                                       off, end - off))
        return parts

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        fs, _ = resolve(spec.path)
        if part.path.endswith(".gz"):
            data = read_text_file(fs, part.path)[part.offset:part.offset + part.nbytes]
        else:
            with fs.open_input_file(part.path) as f:
                f.seek(part.offset)
                data = f.read(part.nbytes)
        base = posixpath.dirname(part.path)
        key_field = spec.key_column or self.record_key
        rows = []
        for row, rec in iter_json_lines(data, part, key_field):
            rows.append(row if rec is None else cap_text(self.convert(rec, row, spec, fs, base), spec))
        return rows

    def convert(self, rec: dict[str, Any], row: dict[str, Any], spec: InputSpec, fs: pafs.FileSystem,
                base: str) -> dict[str, Any]:
        return record_to_row(rec, row, spec, fs, base)


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

    def any_records(self, spec: InputSpec, parts: list[Partition]) -> bool:
        """Whether some tar holds a member (reads tar headers until one is found; an unreadable tar counts as
        holding records: its rows say why)."""
        fs, _ = resolve(spec.path)
        for part in parts:
            try:
                with fs.open_input_file(part.path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    if tar.next() is not None:
                        return True
            except (tarfile.TarError, OSError):
                return True
        return False

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        fs, _ = resolve(spec.path)
        with fs.open_input_stream(part.path) as f:
            data = f.read()
        samples: dict[str, dict[str, bytes]] = {}
        rows: list[dict[str, Any]] = []
        try:
            for prefix, suffix, entry in iter_entries(data):
                samples.setdefault(prefix, {})[suffix.lower()] = entry
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
                meta = meta if isinstance(meta, dict) else {}
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
            rows.append(cap_text(row, spec))
        return rows


class FolderReader:
    """A folder of images with sidecar captions: a.jpg + a.txt (no .txt -> no caption). An image that is a
    symlink out of the folder is `path_outside_root` unless input.allow_outside_root; a .txt over
    input.max_caption_bytes is `caption_too_long` with only its start read."""

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
            if outside(spec, fs, path, root):
                rows.append(drop(row, "path_outside_root", f"{rel} links outside {root}"))
                continue
            txt = os.path.splitext(path)[0] + ".txt"
            info = fs.get_file_info(txt)
            if info.type == pafs.FileType.File:
                too_big = spec.max_caption_bytes is not None and info.size > spec.max_caption_bytes
                with fs.open_input_stream(txt) as f:
                    raw = f.read(800) if too_big else f.read()
                if too_big:
                    rows.append(too_long(row, spec, raw.decode("utf-8", "ignore"), info.size))
                    continue
                try:
                    row["text"] = raw.decode("utf-8-sig")
                except UnicodeDecodeError:
                    rows.append(drop(row, "invalid_utf8", "sidecar .txt"))
                    continue
            with fs.open_input_stream(path) as f:
                row["images"] = [f.read()]
            rows.append(row)
        return rows


