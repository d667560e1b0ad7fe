"""Image bytes by reference: each image's bytes are written once, into its shard.

A step's work file does not hold the image bytes that the input itself holds. Each row read from the input
gets ``_media_root`` (its own id; the samples a stage makes from it inherit it) and, when its step writes its
work file, ``_image_refs``: the indices of its images among its root record's images, which are then left
out of the file. The next step reads the partition of the input again (no decode: the reader's raw bytes)
and puts the same bytes back (`restore`). So bytes move from the input to the shard writer once, and a
resumed step reads them from the input as the first run did.

Bytes a stage made itself (none of the bundled stages does) and the frames a video reader decodes (reading
them again would decode the video again: its reader sets ``media_rereadable = False``) stay in the work file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.schema import MEDIA_COLUMNS

ROOT, REFS = MEDIA_COLUMNS

Roots = dict[str, list[bytes]]


def rereadable(reader: Any) -> bool:
    """Whether reading a partition again is cheap and gives the same bytes (every reader but video's)."""
    return bool(getattr(reader, "media_rereadable", True))


def mark_roots(rows: list[dict[str, Any]]) -> Roots:
    """Rows just read: each is its own root. Returns id -> images."""
    roots: Roots = {}
    for r in rows:
        r[ROOT] = r["id"]
        roots[r["id"]] = r.get("images") or []
    return roots


def restore(rows: list[dict[str, Any]], read: Callable[[], list[dict[str, Any]]], where: str) -> Roots:
    """Put the referenced image bytes back into the kept rows, reading the input partition (``read``) once,
    only if some kept row needs it."""
    need = [r for r in rows if r.get(REFS) and r.get("drop_stage") is None]
    if not need:
        return {}
    roots = {r["id"]: r.get("images") or [] for r in read()}
    for r in need:
        src = roots.get(r[ROOT])
        if src is None or max(r[REFS]) >= len(src):
            raise RuntimeError(f"the input of partition {where} changed while the job ran (record {r[ROOT]} is "
                               "not what the first step read): rerun the job with --overwrite")
        r["images"] = [src[i] for i in r[REFS]]
    return roots


def to_refs(rows: list[dict[str, Any]], roots: Roots) -> int:
    """Replace the images that are their root record's own bytes by their indices (before a work file is
    written). Returns the number of image bytes left out."""
    saved = 0
    for r in rows:
        images = r.get("images") or []
        refs = _indices(images, roots.get(r.get(ROOT) or "")) if images else None
        r[REFS] = refs
        if refs is not None:
            saved += sum(len(b) for b in images)
            r["images"] = []
    return saved


def _indices(images: list[bytes], src: list[bytes] | None) -> list[int] | None:
    if not src:
        return None
    by_object = {id(b): i for i, b in enumerate(src)}
    out = []
    for b in images:
        i = by_object.get(id(b))
        if i is None:  # the same bytes in another object (e.g. a copy): compare values
            i = next((k for k, s in enumerate(src) if s == b), None)
            if i is None:
                return None
        out.append(i)
    return out
