"""Webdataset tars with the standard library: deterministic writing and plain reading.

The layout is webdataset's (`KEY.SUFFIX` entries, a sample's entries consecutive); `webdataset.WebDataset`
reads these files (tested). The library's own TarWriter is not used because importing webdataset imports
torch, about 2 s in every Ray worker that writes a shard.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO


def write_tar(fileobj: BinaryIO, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """Write samples [(key, {suffix: bytes})] as a tar to `fileobj`: entries `key.suffix` in sorted suffix order,
    fixed metadata (mtime 0, uid/gid 0, no owner names, mode 0444), so the same samples give the same bytes."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, files in samples:
            for suffix in sorted(files):
                data = files[suffix]
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """`write_tar` into memory."""
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the suffix the rest."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix


def iter_entries(data: bytes) -> Iterator[tuple[str, str, bytes]]:
    """(key, suffix, bytes) of each regular file in a tar held in memory; raises tarfile.TarError/OSError on a
    broken archive (after yielding what came before the break)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            key, suffix = split_name(member.name)
            yield key, suffix, f.read()


def image_extension(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"GIF8",):
        return "gif"
    return "bin"
