"""`vlcurate inspect OUT --packs [--json] [--n N]`: fill per pack and the fill distribution (SPEC-qwen §6).

Reads ``OUT/packs.parquet`` (one row per pack: pack, shard, members, lengths, n_tokens, fill, cost) and,
when present, the ``pack`` entry of ``OUT/stats.json`` (the packer's own fill statistics) and the packer's
``max_len`` from ``OUT/job.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from typing import Any

COLUMNS = ("pack", "shard", "members", "lengths", "n_tokens", "fill", "cost")


def _read_json(store: Any, name: str) -> dict[str, Any]:
    if not store.exists(name):
        return {}
    try:
        doc = json.loads(store.read_bytes(name))
    except (ValueError, OSError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _max_len(stats: dict[str, Any], job: dict[str, Any]) -> int | None:
    for value in (stats.get("max_len"), ((job.get("recipe") or {}).get("pack") or {}).get("max_len")):
        if isinstance(value, int) and value > 0:
            return value
    return None


def summarize(fills: list[float], tokens: int, max_len: int | None, stats: dict[str, Any]) -> dict[str, Any]:
    """Fill distribution over packs: n_packs, tokens, mean fill, min/p5/p50/p95/max, lower bound on packs.

    The mean fill is tokens / (n_packs · max_len) when max_len is known (the mean of per-pack fills
    otherwise, which is the same number). The lower bound is ceil(tokens / max_len), the fewest packs any
    packing could use; from stats.json when the packer recorded it.
    """
    import numpy as np

    n = len(fills)
    doc: dict[str, Any] = {"n_packs": n, "tokens": tokens, "max_len": max_len}
    arr = np.asarray(fills, dtype=np.float64)
    doc["mean_fill"] = (tokens / (n * max_len) if max_len else float(arr.mean())) if n else 0.0
    for name, q in (("min", 0), ("p5", 5), ("p50", 50), ("p95", 95), ("max", 100)):
        doc[name] = float(np.percentile(arr, q)) if n else 0.0
    bound = stats.get("lower_bound_packs")
    if not isinstance(bound, int):
        bound = math.ceil(tokens / max_len) if max_len else None
    doc["lower_bound_packs"] = bound
    doc["packs_over_bound"] = n - bound if bound is not None else None
    return doc


def show_packs(args: argparse.Namespace) -> int:
    """Print the first ``args.n`` packs with their fill, then the fill distribution (or JSON lines with
    ``--json``: one ``{"kind": "pack", ...}`` per pack shown, then one ``{"kind": "summary", ...}``).

    Returns 0, or 2 with a one-line message when OUT has no packs.parquet.
    """
    import pyarrow.parquet as pq

    from pipeline.storage import Store

    store = Store(args.out)
    if not store.exists("packs.parquet"):
        print(
            f"vlcurate: {args.out}: no packs.parquet (did the recipe pack? set pack.max_len and rerun)",
            file=sys.stderr,
        )
        return 2
    table = pq.read_table(store.path("packs.parquet"), filesystem=store.fs)
    missing = [c for c in ("pack", "n_tokens", "fill") if c not in table.column_names]
    if missing:
        print(f"vlcurate: {args.out}/packs.parquet lacks column(s) {', '.join(missing)}", file=sys.stderr)
        return 2
    stats = _read_json(store, "stats.json").get("pack") or {}
    stats = stats if isinstance(stats, dict) else {}
    max_len = _max_len(stats, _read_json(store, "job.json"))
    fills = [float(f) for f in table["fill"].to_pylist()]
    tokens = int(sum(int(t) for t in table["n_tokens"].to_pylist()))
    summary = summarize(fills, tokens, max_len, stats)
    n = max(0, int(args.n)) if getattr(args, "n", None) is not None else 10
    rows = table.slice(0, n).select([c for c in COLUMNS if c in table.column_names]).to_pylist()
    if getattr(args, "render", None):
        cache: dict[str, dict[str, Any]] = {}
        for row in rows:
            row["rendered"] = render_pack(store, row, max_len or int(row["n_tokens"]), args.render, cache)
            print(f"wrote {row['rendered']}", file=sys.stderr)
    if args.json:
        for row in rows:
            print(json.dumps({"kind": "pack", **row}, ensure_ascii=False))
        print(json.dumps({"kind": "summary", **summary, "packer": stats}, ensure_ascii=False))
        return 0
    _print_human(rows, summary, stats, len(fills))
    return 0


def _first_media(store: Any, shard: str, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """pack id -> (its json, {member index: bytes of its first image or frame}) for the packs of one tar."""
    from pipeline.tar import iter_entries

    if shard not in cache:
        packs: dict[str, Any] = {}
        for key, suffix, data in iter_entries(store.read_bytes("packs", shard)):
            entry = packs.setdefault(key, [None, {}])
            if suffix == "json":
                entry[0] = json.loads(data)
            elif suffix.startswith("m") and not suffix.endswith(".npy"):
                member, index = suffix[1:].split(".")[:2]
                if index == "0":
                    entry[1][int(member)] = data
        cache[shard] = packs
    return cache[shard]


def render_pack(store: Any, row: dict[str, Any], max_len: int, folder: str,
                cache: dict[str, dict[str, Any]] | None = None) -> str:
    """DIR/pack-ID.png: the pack's members' token spans on one bar and each member's thumbnail with its span
    (formatters.draw.pack_sheet); the members and spans are the pack tar's own (its json's lengths)."""
    from formatters.draw import pack_sheet

    cache = cache if cache is not None else {}
    doc, media = _first_media(store, row["shard"], cache).get(row["pack"], [None, {}])
    members = (doc or {}).get("members") or row.get("members") or []
    lengths = (doc or {}).get("lengths") or row.get("lengths") or []
    starts = [0, *itertools.accumulate(lengths)]
    tiles = [(media.get(k), m, starts[k], starts[k + 1]) for k, m in enumerate(members)]
    title = (f"pack {row['pack']} ({row['shard']}): {len(members)} member(s), {starts[-1]} / {max_len} tokens, "
             f"fill {starts[-1] / max_len:.1%}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"pack-{row['pack']}.png")
    pack_sheet(tiles, max_len, title).save(path)
    return path


def _print_human(
    rows: list[dict[str, Any]], summary: dict[str, Any], stats: dict[str, Any], total: int
) -> None:
    if rows:
        print(f"{'pack':<18} {'shard':<16} {'members':>7} {'tokens':>8} {'fill':>7} {'cost':>12}")
        for r in rows:
            members = len(r.get("members") or [])
            cost = r.get("cost")
            print(
                f"{str(r['pack']):<18} {str(r.get('shard') or ''):<16} {members:>7} {int(r['n_tokens']):>8} "
                f"{float(r['fill']):>7.3f} {'' if cost is None else int(cost):>12}"
            )
        if total > len(rows):
            print(f"... {total - len(rows)} more pack(s) (--n N to show more)")
        print()
    s = summary
    bound = s["lower_bound_packs"]
    line = f"packs: {s['n_packs']}   tokens: {s['tokens']}"
    if s["max_len"]:
        line += f"   max_len: {s['max_len']}"
    if bound is not None:
        line += f"   lower bound: {bound} pack(s) (+{s['packs_over_bound']})"
    print(line)
    print(
        f"fill: mean {s['mean_fill']:.4f}   min {s['min']:.3f}   p5 {s['p5']:.3f}   p50 {s['p50']:.3f}   "
        f"p95 {s['p95']:.3f}   max {s['max']:.3f}"
    )
    extra = {
        k: v
        for k, v in stats.items()
        if k
        not in {"n_packs", "tokens", "max_len", "fill", "lower_bound_packs", "p0", "p5", "p50", "p95", "p100"}
    }
    if extra:
        print(
            "packer: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        )
