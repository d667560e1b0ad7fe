"""`vlcurate inspect OUT`: look at what a job kept and dropped, and why."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any

IMAGE_SUFFIXES = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
SKIP = {"id", "parent_id", "shard", "key", "source", "text", "drop_stage", "drop_reason", "meta"}


def _load(out: str, name: str) -> Any:
    import pyarrow.parquet as pq

    from pipeline.storage import Store

    store = Store(out)
    if not store.exists(name):
        raise FileNotFoundError(f"{out}: no {name} (is this a finished vlcurate job folder?)")
    return pq.read_table(store.path(name), filesystem=store.fs)


def _sample_from_shard(out: str, shard: str, key: str) -> dict[str, Any]:
    from pipeline.storage import Store
    from pipeline.tar import iter_entries

    data = Store(out).read_bytes("shards", shard)
    sample: dict[str, Any] = {"images": []}
    for entry_key, suffix, entry in iter_entries(data):
        if entry_key != key:
            continue
        if suffix == "json":
            sample["json"] = json.loads(entry)
        elif suffix.split(".")[-1] in IMAGE_SUFFIXES:  # not the .npy token arrays
            sample["images"].append((suffix, entry))
    # entries are in name order ("10.jpg" before "2.jpg"): the images' order is their index
    sample["images"].sort(key=lambda e: int(e[0].split(".")[0]) if e[0].split(".")[0].isdigit() else 0)
    return sample


def _image_sizes(images: list[tuple[str, bytes]]) -> list[str]:
    from PIL import Image

    sizes = []
    for _, data in images:
        with Image.open(io.BytesIO(data)) as im:
            sizes.append(f"{im.width}x{im.height}")
    return sizes


def _scores(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in SKIP and v is not None}


def inspect_job(args: argparse.Namespace) -> int:
    try:
        if args.packs:
            from jobs.inspect_packs import show_packs

            return show_packs(args)
        rejected = args.rejected or args.reason is not None
        manifest = _load(args.out, "manifest.parquet")
        rejects = _load(args.out, "rejects.parquet")
    except FileNotFoundError as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    if args.row_id:
        for table, kind in ((manifest, "kept"), (rejects, "rejected")):
            rows = [r for r in table.to_pylist() if r["id"] == args.row_id]
            if rows:
                return _show(args, [rows[0]], kind)
        print(f"vlcurate: no sample or reject with id {args.row_id}", file=sys.stderr)
        return 1
    if rejected:
        rows = rejects.to_pylist()
        if args.reason:
            rows = [r for r in rows if r["drop_reason"] == args.reason]
            if not rows:
                reasons = sorted(set(rejects["drop_reason"].to_pylist()))
                print(f"vlcurate: no rejects with reason {args.reason!r} (present: {', '.join(reasons)})",
                      file=sys.stderr)
                return 1
        if args.render:
            _contact_sheets(args, rows)
        return _show(args, rows[: args.n], "rejected")
    return _show(args, manifest.to_pylist()[: args.n], "kept")


def _detail(row: dict[str, Any]) -> str | None:
    meta = json.loads(row["meta"]) if row.get("meta") else {}
    return meta.get("error") or meta.get("image_error")


def _contact_sheets(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """One PNG per drop reason, DIR/rejected-STAGE-REASON.png: up to N rows of that reason (those with a kept
    thumbnail first, in the job's choice order), each tile its thumbnail, id, source, reason and detail."""
    from formatters.draw import contact_sheet
    from pipeline import thumbs
    from pipeline.storage import Store

    kept = thumbs.load(Store(args.out))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["drop_stage"], row["drop_reason"]), []).append(row)
    os.makedirs(args.render, exist_ok=True)
    for (stage, reason), members in sorted(groups.items()):
        pictures = {t["id"]: t["thumb"] for t in kept.get((stage, reason), [])}
        ordered = [r for r in members if r["id"] in pictures]
        ordered.sort(key=lambda r: thumbs.rank(r["id"]))
        ordered += [r for r in members if r["id"] not in pictures]
        tiles = []
        for row in ordered[: max(args.n, len(pictures))]:
            lines = [row["id"], str(row["source"])[-36:], f"{stage}: {reason}"]
            if _detail(row):
                lines.append(str(_detail(row))[:80])
            tiles.append((pictures.get(row["id"]), lines))
        sheet = contact_sheet(tiles, f"{reason} (stage {stage}): {len(members)} row(s), {len(tiles)} shown")
        path = os.path.join(args.render, f"rejected-{stage}-{reason}.png")
        sheet.save(path)
        print(f"wrote {path}", file=sys.stderr)


def _show(args: argparse.Namespace, rows: list[dict[str, Any]], kind: str) -> int:
    for row in rows:
        doc: dict[str, Any] = {"status": kind, "id": row["id"], "source": row["source"], "text": row.get("text")}
        if row.get("parent_id"):
            doc["parent_id"] = row["parent_id"]
        if kind == "kept":
            sample = _sample_from_shard(args.out, row["shard"], row["key"])
            doc["shard"] = row["shard"]
            doc["image_sizes"] = _image_sizes(sample["images"])
            js = sample.get("json", {})
            if js.get("messages"):
                doc["messages"] = js["messages"]
            if args.render:
                doc["rendered"] = _render_kept(args.render, row, js, [data for _, data in sample["images"]])
        else:
            doc["drop_stage"], doc["drop_reason"] = row["drop_stage"], row["drop_reason"]
            detail = _detail(row)
            if detail:
                doc["detail"] = detail
        doc["scores"] = _scores(row)
        if args.json:
            print(json.dumps(doc, ensure_ascii=False))
        else:
            _print_human(doc)
    if not rows and not args.json:
        print(f"(no {kind} rows)")
    return 0


def _render_kept(folder: str, row: dict[str, Any], doc: dict[str, Any], images: list[bytes]) -> str:
    """DIR/ID.png: the sample's image(s) with its boxes, quads and points drawn, or its video frames, and the
    conversation under them (formatters.draw.render_sample)."""
    from formatters.draw import render_sample

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{row['id']}.png")
    render_sample(doc, images, header=f"{row['id']}  {row['source']}").save(path)
    return path


def _print_human(doc: dict[str, Any]) -> None:
    head = f"{doc['id']}  [{doc['status']}]"
    if doc["status"] == "rejected":
        head += f"  {doc['drop_stage']}: {doc['drop_reason']}"
    print(head)
    print(f"  source: {doc['source']}")
    if doc.get("text") is not None:
        print(f"  text:   {doc['text'][:200]!r}")
    if doc.get("image_sizes"):
        print(f"  images: {', '.join(doc['image_sizes'])}  ({doc['shard']})")
    if doc.get("detail"):
        print(f"  detail: {doc['detail']}")
    if doc.get("rendered"):
        print(f"  render: {doc['rendered']}")
    if doc.get("messages"):
        print(f"  messages: {json.dumps(doc['messages'], ensure_ascii=False)[:300]}")
    if doc["scores"]:
        print("  scores: " + ", ".join(f"{k}={_fmt(v)}" for k, v in doc["scores"].items()))
    print()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
