"""The output folder a job owns: which entries a job writes, when a folder may be used, resumed or cleared,
and what is left of `_work/` after a successful job.

A folder is a job folder when it holds `_work/job_identity.json`. A job refuses a non-empty folder that is
not one (the user's own files are never written into, nor deleted by `--overwrite`), refuses a job folder of
another recipe or input, and resumes one of the same. `--overwrite` deletes only the entries a job writes.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import HEAVY_COLUMNS
from pipeline.spec import RecipeError
from pipeline.storage import WORK, Store

IDENTITY = "job_identity.json"
COMPLETE = "complete.json"
# everything a job writes at the top of its folder; `--overwrite` deletes these and nothing else
JOB_ENTRIES = ("shards", "packs", "exports", "manifest.parquet", "rejects.parquet", "packs.parquet",
               "candidates.parquet", "dpo", "stats.json", "job.json", "report.html", WORK)
# the parts of `_work/` only a resume of an unfinished job reads (image bytes on their way to the shards)
RESUME_ONLY = ("packbuckets",)


def is_job_folder(store: Store) -> bool:
    return store.exists(WORK, IDENTITY)


def claim(store: Store, identity: bytes, overwrite: bool = False) -> None:
    """Make OUT the folder of a job of this identity (its identity file written), or raise a one-line
    RecipeError saying why it cannot be."""
    entries = store.list()
    if entries and not is_job_folder(store):
        what = "deleting" if overwrite else "writing into"
        raise RecipeError(f"-o {store.uri}: the folder is not empty and holds no vlcurate job; not {what} it "
                          "(choose a new or empty folder)")
    if overwrite:
        for name in JOB_ENTRIES:
            if name in entries:
                store.delete_entry(name)
    elif entries and store.read_bytes(WORK, IDENTITY) != identity:
        raise RecipeError(f"-o {store.uri}: this folder holds a job with another recipe or input; "
                          "choose a new output folder or pass --overwrite")
    if not is_job_folder(store):
        store.write_bytes(identity, WORK, IDENTITY)


def is_complete(store: Store) -> bool:
    return store.exists(WORK, COMPLETE) and store.exists("stats.json")


def finish(store: Store, steps: list[str], keep_work: bool, stats: dict[str, Any]) -> dict[str, Any]:
    """Mark the job complete (a rerun then does nothing); unless `keep_work`, strip what only a resume needs
    from `_work/`: image bytes, token arrays and media references left in step files (ids, scores and
    decisions stay: that is what `regen-sft` reads) and the pack members. The sizes go into stats.json:
    ``work`` (``_work`` before and after the clean-up) and ``bytes``: the media bytes the read step loaded
    (images, video frames), every byte the job wrote (the folder before the clean-up) and their ratio."""
    before, written = store.size(WORK), store.size()
    media = int(((stats.get("stages") or {}).get("read") or {}).get("media_bytes") or 0)
    store.write_bytes(json.dumps({"work_cleaned": not keep_work}).encode(), WORK, COMPLETE)
    if not keep_work:
        for step in steps:
            for name in store.list(WORK, step):
                if name.endswith(".parquet"):
                    table = store.read_parquet(WORK, step, name)
                    heavy = [c for c in HEAVY_COLUMNS if c in table.column_names]
                    if any(_holds_values(table[c]) for c in heavy):
                        store.write_parquet(table.drop_columns(heavy), WORK, step, name)
        for name in RESUME_ONLY:
            store.delete_dir(WORK, name)
    stats = {**stats, "work": {"bytes_at_end_of_job": before, "bytes_kept": store.size(WORK),
                               "cleaned": not keep_work},
             "bytes": {"media_read": media, "written": written,
                       "written_over_media_read": round(written / media, 3) if media else None}}
    store.write_bytes(json.dumps(stats, indent=2).encode(), "stats.json")
    return stats


def _holds_values(column: pa.ChunkedArray) -> bool:
    """Whether a column holds anything (a column of nulls or of empty lists costs nothing to keep)."""
    if column.null_count == len(column):
        return False
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return bool(pc.sum(pc.list_value_length(column)).as_py() or 0)
    return True
