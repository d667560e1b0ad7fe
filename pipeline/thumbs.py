"""Thumbnails of dropped rows, for `vlcurate report` and `inspect --rejected --render`.

A dropped row loses its image bytes, so as rows are dropped the runner keeps a capped, deterministic sample:
per stage and reason the ``PER_REASON`` rows with the smallest ``rank`` (a hash of the id) whose first image
decodes, as JPEGs of at most ``PX`` px. ``stash`` is called where a row is dropped (before its bytes are
cleared); ``save`` at the end of each step's partition writes that partition's candidates to
``_work/thumbs/STEP.PART.parquet`` (stage, reason, id, rank, thumb), at most ``PER_REASON`` per reason, so the
smallest ranks of the whole job are among them whatever the partitioning; ``load`` picks them. Every step
holds its kept rows' bytes (pipeline/media.py puts them back from the input), so a row has its image when it
is dropped. `_work/thumbs` survives the cleanup of `_work` at the end of a job.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from formatters.draw import thumbnail
from pipeline.storage import WORK, Store

PER_REASON = 16
PX = 128
FOLDER = "thumbs"
SRC = "_thumb_src"  # a dropped row's image bytes, kept aside until its partition's thumbnails are chosen
SCHEMA = pa.schema([("stage", pa.string()), ("reason", pa.string()), ("id", pa.string()), ("rank", pa.string()),
                    ("thumb", pa.binary())])


def rank(row_id: str) -> str:
    """The order in which dropped rows are chosen (a hash of the id: no bias towards any source or key)."""
    return hashlib.sha1(f"thumb\x1f{row_id}".encode()).hexdigest()


def stash(row: dict[str, Any]) -> None:
    """Keep a row's image bytes aside as it is dropped (called before the runner clears them)."""
    row[SRC] = row.get("images") or None


def save(store: Store, step: str, part: str, rows: list[dict[str, Any]]) -> None:
    """Choose and write this partition's thumbnails of the rows dropped in this step; the stashed bytes are
    removed from every row."""
    candidates: dict[tuple[str, str], list[tuple[str, str, Any]]] = {}
    for row in rows:
        if SRC in row:
            images = row.pop(SRC)
            key = (str(row.get("drop_stage")), str(row.get("drop_reason")))
            candidates.setdefault(key, []).append((rank(row["id"]), row["id"], images))
    out: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for (stage, reason), items in sorted(candidates.items()):
        n = 0
        for r, row_id, images in sorted(items):
            thumb = thumbnail(images[0], PX) if images else None
            if thumb is None:
                continue
            for name, value in zip(SCHEMA.names, (stage, reason, row_id, r, thumb), strict=True):
                out[name].append(value)
            n += 1
            if n == PER_REASON:
                break
    if out["id"] or store.exists(WORK, FOLDER, f"{step}.{part}.parquet"):  # a rerun replaces the old file
        store.write_parquet(pa.table(out, schema=SCHEMA), WORK, FOLDER, f"{step}.{part}.parquet")


def load(store: Store) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(stage, reason) -> up to PER_REASON {id, thumb} of the whole job, in rank order."""
    table = store.read_folder(WORK, FOLDER)
    if table.num_rows == 0:
        return {}
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["rank"]):
        group = out.setdefault((row["stage"], row["reason"]), [])
        if len(group) < PER_REASON:
            group.append({"id": row["id"], "thumb": row["thumb"]})
    return out
