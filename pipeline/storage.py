"""All storage access goes through here: URIs (local paths, s3://, gs://) via pyarrow.fs, atomic writes."""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.schema import concat

WORK = "_work"  # the folder of a job's per-partition results and completion markers (resume)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path inside it; local relative paths are made absolute."""
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


@dataclass
class Store:
    """One folder (a URI) with the few operations the pipeline needs."""

    uri: str

    def __post_init__(self) -> None:
        self.fs, self.root = resolve(self.uri)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write to a temporary name, then rename: readers never see half a file."""
        with self.open_atomic(*parts) as f:
            f.write(data)

    @contextmanager
    def open_atomic(self, *parts: str) -> Iterator[Any]:
        """A stream to a temporary name, renamed to the final name when the block ends without error."""
        final = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                yield f
        except BaseException:
            self.fs.delete_file(tmp)
            raise
        self.fs.move(tmp, final)

    def write_parquet(self, table: pa.Table, *parts: str, work: bool = False) -> None:
        """Parquet, atomically. `work=True` (intermediate files): fast zstd (level 1: ids, scores and text
        shrink; the few image bytes left there pass through), no dictionary encoding or statistics."""
        final = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        if work:
            pq.write_table(table, tmp, filesystem=self.fs, compression="zstd", compression_level=1,
                           use_dictionary=False, write_statistics=False)
        else:
            pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        self.fs.move(tmp, final)

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        if columns is not None:
            schema = pq.read_schema(self.path(*parts), filesystem=self.fs)
            columns = [c for c in columns if c in schema.names]
        return pq.read_table(self.path(*parts), columns=columns, filesystem=self.fs)

    def read_folder(self, *parts: str, columns: list[str] | None = None, exclude: tuple[str, ...] = ()) -> pa.Table:
        """All parquet files of a folder, concatenated in name order (schemas unified); `exclude` drops
        columns before reading them (image bytes, token arrays)."""
        tables = []
        for name in self.list(*parts):
            if name.endswith(".parquet"):
                cols = columns
                if exclude:
                    names = pq.read_schema(self.path(*parts, name), filesystem=self.fs).names
                    cols = [n for n in (columns or names) if n not in exclude]
                tables.append(self.read_parquet(*parts, name, columns=cols))
        if not tables:
            return pa.table({})
        return concat(tables)

    def list(self, *parts: str) -> list[str]:
        """Names (not paths) of the entries of a folder, sorted; empty when it does not exist."""
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(posixpath.basename(i.path) for i in infos)

    def remove_temporary(self) -> int:
        """Delete the `*.tmp-*` files a killed writer left behind (they are never read); return how many."""
        if not self.exists():
            return 0
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        stale = [i.path for i in infos if i.type == pafs.FileType.File and ".tmp-" in posixpath.basename(i.path)]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def delete_entry(self, *parts: str) -> None:
        """A file or a folder, whichever it is."""
        info = self.fs.get_file_info(self.path(*parts))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type != pafs.FileType.NotFound:
            self.fs.delete_file(info.path)

    def size(self, *parts: str) -> int:
        """Bytes of all files under a folder (0 when it does not exist)."""
        if not self.exists(*parts):
            return 0
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts), recursive=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)
