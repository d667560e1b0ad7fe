"""Writers: webdataset shards, manifest, rejects, packs, stats and job description.

The last step of a job writes each partition's kept rows into that partition's shard(s) (the image bytes go
from the input to the shard once: pipeline/media.py); the driver then writes the manifest and rejects from
the step files' ids and scores. Every file is written to a temporary name then renamed, shards are sorted by
id with fixed tar metadata, so the same input and recipe give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.exports import export_all
from pipeline.format_stage import load_tokenizer
from pipeline.pack_stage import pack_summary
from pipeline.packing import assemble_pack, pack_cost, pack_tar_bytes
from pipeline.raymap import ray_map
from pipeline.readers import Partition
from pipeline.schema import (
    HEAVY_COLUMNS,
    JSON_COLUMNS,
    NOT_SCORES,
    TOKEN_COLUMNS,
    score_columns,
    table_to_rows,
)
from pipeline.spec import Recipe
from pipeline.storage import WORK, Store, is_remote
from pipeline.tar import image_extension, iter_entries, tar_bytes, write_tar

SHARD_INDEX = pa.schema([("id", pa.string()), ("shard", pa.string())])
PACKAGES = ("vlcurate", "ray", "pyarrow", "pillow", "webdataset", "transformers", "torch", "open_clip_torch")


def job_identity(recipe: Recipe, parts: list[Partition], inputs: list[dict[str, Any]]) -> bytes:
    """What a resumable job is: the recipe (less what only changes speed), the partitions of its input and
    the input files' content hashes (`inputs`), so an edited input is never resumed from the old results."""
    doc = {"recipe": recipe.identity(), "partitions": [[p.name, p.relpath, p.start, p.stop] for p in parts],
           "input": inputs}
    return json.dumps(doc, sort_keys=True).encode()


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def sample_json(row: dict[str, Any], scores: list[str]) -> bytes:
    doc: dict[str, Any] = {k: row.get(k) for k in ("id", "parent_id", "source", "text", "answer")}
    for k in JSON_COLUMNS:
        v = row.get(k)
        doc[k] = json.loads(v) if isinstance(v, str) else v
    # NaN / inf are not JSON: such a score is left out like a missing one
    doc["scores"] = {k: row[k] for k in scores if row.get(k) is not None and not _non_finite(row[k])}
    return json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8")


def shard_samples(rows: list[dict[str, Any]], scores: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A webdataset shard, per sample: KEY.json (text, messages, meta, scores), KEY.0.jpg, KEY.1.png ... and,
    for formatted samples, KEY.input_ids.npy / KEY.labels.npy (int32), the exact tokens that were counted."""
    for row in rows:
        files = {"json": sample_json(row, scores)}
        for k, data in enumerate(row.get("images") or []):
            files[f"{k}.{image_extension(data)}"] = data
        for name in TOKEN_COLUMNS:
            if row.get(name) is not None:
                files[f"{name}.npy"] = npy_bytes(np.asarray(row[name], dtype="<i4"))
        yield row["id"], files


def shard_tar(rows: list[dict[str, Any]], scores: list[str]) -> bytes:
    return tar_bytes(shard_samples(rows, scores))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_partition_shards(store: Store, part: str, rows: list[dict[str, Any]],
                           shard_bytes: int | None) -> list[str]:
    """One partition's kept rows, sorted by id, as `shards/shard-PART.tar` (then `shard-PART_1.tar` ... when
    `shard_bytes` is set and reached); `_work/shards/PART.parquet` (id, shard) for the manifest."""
    rows = sorted(rows, key=lambda r: r["id"])
    scores = sorted({k for r in rows for k in r if k not in NOT_SCORES and not k.startswith("_")})
    pieces: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        n = sum(len(d) for d in row.get("images") or []) + 1024
        if shard_bytes and pieces[-1] and size + n > shard_bytes:
            pieces.append([])
            size = 0
        pieces[-1].append(row)
        size += n
    index: dict[str, list[str]] = {"id": [], "shard": []}
    names = []
    for k, piece in enumerate(pieces):
        if not piece:
            continue
        name = f"shard-{part}.tar" if k == 0 else f"shard-{part}_{k}.tar"
        with store.open_atomic("shards", name) as f:
            write_tar(f, shard_samples(piece, scores))
        index["id"].extend(r["id"] for r in piece)
        index["shard"].extend([name] * len(piece))
        names.append(name)
    store.write_parquet(pa.table(index, schema=SHARD_INDEX), WORK, "shards", f"{part}.parquet")
    return names


def concat_tables(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def remove_from_shards(store: Store, names: list[str], ids: set[str]) -> None:
    """Rewrite shards without the samples of `ids` (rows rejected after their shard was written: an id that
    another partition also holds). Rare, so plain: read the tar, write it again without them."""
    for name in names:
        samples: dict[str, dict[str, bytes]] = {}
        for key, suffix, data in iter_entries(store.read_bytes("shards", name)):
            if key not in ids:
                samples.setdefault(key, {})[suffix] = data
        with store.open_atomic("shards", name) as f:
            write_tar(f, samples.items())


def write_pack_shard_task(batch: dict[str, Any], out: str, token_ids: dict[str, int],
                          max_len: int) -> dict[str, list[Any]]:
    """Ray task: assemble the packs of one pack shard from their members' rows and write packs/pack-K.tar."""

    store = Store(out)
    done = []
    for shard in batch["shard"]:
        k = f"{int(shard):05d}"
        rows = table_to_rows(store.read_folder(WORK, "packbuckets", k))
        by_pack: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_pack.setdefault(r["pack_id"], []).append(r)
        packs, index = [], []
        name = f"pack-{k}.tar"
        for pack_id in sorted(by_pack):
            members = sorted(by_pack[pack_id], key=lambda r: r["pack_pos"])
            spec = [{
                "id": m["id"], "input_ids": m["input_ids"], "labels": m["labels"], "images": m["images"] or [],
                "image_grid_thw": m["meta"].get("image_grid_thw") or [],
                "video_grid_thw": m["meta"].get("video_grid_thw") or [],
                "second_per_grid_ts": m["meta"].get("second_per_grid_ts") or [],
                "is_video": bool(m["meta"].get("video_grid_thw")),
            } for m in members]
            pack = assemble_pack(spec, **token_ids)
            # the resize limits each member was built with: a trainer's processor needs them for images that
            # were not pre-resized (PackDataset)
            pack["json"]["image_limits"] = [[m["meta"].get("min_pixels"), m["meta"].get("max_pixels")]
                                            for m in members]
            packs.append((pack_id, pack))
            lengths = [len(m["input_ids"]) for m in members]
            index.append({"pack": pack_id, "shard": name, "members": [m["id"] for m in members],
                          "lengths": lengths, "n_tokens": sum(lengths), "fill": sum(lengths) / max_len,
                          "cost": pack_cost(list(range(len(lengths))), lengths)})
        store.write_bytes(pack_tar_bytes(packs), "packs", name)
        store.write_bytes(json.dumps(index).encode(), WORK, "packs", f"{k}.json")
        done.append(int(shard))
    return {"shard": done}


def reject_duplicate_ids(table: pa.Table) -> pa.Table:
    """Rows that share an id (a repeated `key_column` value) are all rejected as `duplicate_id`: an id must
    name one record, in shards, manifest and decisions alike."""
    counts = pc.value_counts(table["id"]).to_pylist()
    dups = [c["values"] for c in counts if c["counts"] > 1]
    if not dups:
        return table
    mask = pc.is_in(table["id"], value_set=pa.array(dups, pa.string()))
    for name, value in (("drop_stage", "read"), ("drop_reason", "duplicate_id")):
        col = pc.if_else(mask, pa.scalar(value, pa.string()), table[name].cast(pa.string()))
        table = table.set_column(table.schema.get_field_index(name), name, col)
    return table


def token_ids_for(recipe: Recipe) -> dict[str, int]:
    """The vision token ids for M-RoPE, read from the recipe's tokenizer (defaults: the Qwen2 family's)."""
    fmt = recipe.model.format
    return vision_token_ids(fmt.tokenizer if fmt is not None else None)


def vision_token_ids(tokenizer: str | None) -> dict[str, int]:
    """The vision token ids for M-RoPE, read from `tokenizer` (defaults: the Qwen2 family's)."""
    ids = {"vision_start_token_id": 151652, "image_token_id": 151655, "video_token_id": 151656}
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        for key, token in (("vision_start_token_id", "<|vision_start|>"), ("image_token_id", "<|image_pad|>"),
                           ("video_token_id", "<|video_pad|>")):
            ids[key] = int(tok.convert_tokens_to_ids(token))
    return ids


def write_packs(recipe: Recipe, store: Store, log: Any = print) -> dict[str, Any]:
    return write_pack_files(store, recipe.model.pack, token_ids_for(recipe), ray_map, log=log)


def write_pack_files(store: Store, spec: Any, token_ids: dict[str, int], mapper: Any,
                     log: Any = print) -> dict[str, Any]:
    """Packs from `_work/packbuckets/` (rows with pack_id / pack_pos), one pack shard per task of `mapper`
    (`ray_map` in a job), then packs.parquet; returns the fill summary."""

    shards = sorted(int(b) for b in store.list(WORK, "packbuckets"))
    done = {n.removesuffix(".json") for n in store.list(WORK, "packs")}
    todo = [k for k in shards if f"{k:05d}" not in done]
    if todo:
        log(f"[vlcurate] writing {len(todo)} pack shard(s)")
        mapper([{"shard": k} for k in todo], write_pack_shard_task, out=store.uri,
               token_ids=token_ids, max_len=spec.max_len)
    index = []
    for k in shards:
        index.extend(json.loads(store.read_bytes(WORK, "packs", f"{k:05d}.json")))
    index.sort(key=lambda r: r["pack"])
    table = pa.Table.from_pylist(index, schema=pa.schema([
        ("pack", pa.string()), ("shard", pa.string()), ("members", pa.list_(pa.string())),
        ("lengths", pa.list_(pa.int64())), ("n_tokens", pa.int64()), ("fill", pa.float64()), ("cost", pa.int64())]))
    store.write_parquet(table, "packs.parquet")
    return pack_summary({r["pack"]: r["lengths"] for r in index}, spec.max_len, spec.packs_per_step)


def _final_tables(store: Store, step: str) -> pa.Table:
    return store.read_folder(WORK, step, exclude=(*HEAVY_COLUMNS, "messages", "annotations"))


def write_outputs(recipe: Recipe, store: Store, parts: list[Partition], inputs: list[dict[str, Any]], step: str,
                  stats: dict[str, Any], log: Any = print, score_steps: dict[str, str] | None = None) -> None:
    """Shards, manifest, rejects, packs, job.json, exports. `score_steps` (stage key -> the step whose work
    files hold that stage's scores under the ids it scored) goes into job.json for regen-sft."""
    table = reject_duplicate_ids(_final_tables(store, step))
    index = concat_tables([store.read_parquet(WORK, "shards", f"{p.name}.parquet") for p in parts], SHARD_INDEX)
    kept_mask = pc.is_null(table["drop_stage"])
    shared = pc.is_in(index["id"], value_set=pc.filter(table["id"], pc.invert(kept_mask)).combine_chunks())
    if pc.any(shared).as_py():  # an id that several records share: already in their shards, now rejected
        gone = index.filter(shared)
        remove_from_shards(store, sorted(set(gone["shard"].to_pylist())), set(gone["id"].to_pylist()))
        index = index.filter(pc.invert(shared))
    kept = table.filter(kept_mask).sort_by("id")
    rejected = table.filter(pc.invert(kept_mask)).sort_by("id")
    scores = score_columns(table.schema)
    shard = index["shard"].combine_chunks().take(pc.index_in(kept["id"], value_set=index["id"].combine_chunks()))
    if shard.null_count:
        first = kept["id"][pc.index(pc.is_null(shard), True).as_py()].as_py()
        raise RuntimeError(f"{shard.null_count} kept rows have no shard (first {first}): rerun the job")
    manifest = pa.table({
        "id": kept["id"], "parent_id": kept["parent_id"], "shard": shard,
        "key": kept["id"], "source": kept["source"], "text": kept["text"],
        **{s: kept[s] for s in scores},
    })
    rejects = pa.table({
        "id": rejected["id"], "parent_id": rejected["parent_id"], "source": rejected["source"],
        "drop_stage": rejected["drop_stage"], "drop_reason": rejected["drop_reason"], "text": rejected["text"],
        "meta": rejected["meta"], **{s: rejected[s] for s in scores},
    })
    if recipe.model.pack is not None and recipe.model.pack.enabled:
        stats["pack"] = {**stats.get("pack", {}), "summary": write_packs(recipe, store, log=log)}
    store.write_parquet(manifest, "manifest.parquet")
    store.write_parquet(rejects, "rejects.parquet")
    # `recipe_as_given`: what regen-sft reruns (the resolved recipe fills in defaults of the generic input
    # schema, e.g. a caption column, that a format-specific reader would otherwise choose itself)
    job = {"recipe": recipe.resolved(), "recipe_as_given": recipe.raw, "versions": versions(), "input": inputs,
           "input_path": input_location(recipe.input.path), "partitions": len(parts),
           "final_step": step, "score_steps": score_steps or {}}
    # not sort_keys: the stages mapping is the run order, and regen-sft reads it back
    store.write_bytes(json.dumps(job, indent=2).encode(), "job.json")
    if recipe.model.output.exports:
        log(f"[vlcurate] exporting for {', '.join(recipe.model.output.exports)}")
        export_all(store.uri, recipe.model.output.exports)


def input_location(path: str) -> str:
    """The input as a path that works from any directory (regen-sft reads it again)."""
    return path if is_remote(path) else os.path.abspath(path)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_stats(store: Store, recipe: Recipe, stats: dict[str, Any], parts: list[Partition], skipped: int,
                seconds: float) -> dict[str, Any]:
    manifest = store.read_parquet("manifest.parquet", columns=["id"])
    rejects = store.read_parquet("rejects.parquet", columns=["drop_reason"])
    reasons: dict[str, int] = {}
    for r in rejects["drop_reason"].to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    doc = {
        "records_in": stats["read"].get("in", 0),
        "kept": manifest.num_rows,
        "rejected": rejects.num_rows,
        "rejected_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "partitions": len(parts),
        "partitions_resumed": skipped,
        "wall_seconds": round(seconds, 3),
        "stages": stats,
    }
    store.write_bytes(json.dumps(doc, indent=2).encode(), "stats.json")
    return doc
