"""The one row schema (DESIGN.md, One row schema) and the conversions between Arrow and stage batches."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

BASE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("parent_id", pa.string()),
        ("source", pa.string()),
        ("images", pa.list_(pa.binary())),
        ("text", pa.string()),
        ("answer", pa.string()),
        ("annotations", pa.string()),
        ("messages", pa.string()),
        ("meta", pa.string()),
        ("drop_stage", pa.string()),
        ("drop_reason", pa.string()),
    ]
)
BASE_COLUMNS = tuple(BASE_SCHEMA.names)
JSON_COLUMNS = ("meta", "annotations", "messages")
BINARY_COLUMNS = ("images", "video")
TOKEN_COLUMNS = ("input_ids", "labels")
HEAVY_COLUMNS = (*BINARY_COLUMNS, *TOKEN_COLUMNS)
NOT_SCORES = frozenset(BASE_COLUMNS) | {"video", *TOKEN_COLUMNS}


def make_id(*parts: object) -> str:
    """16 hex characters of sha1 over the parts (relative source path and key; or parent id, builder, index)."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:16]


def bucket_of(row_id: str, buckets: int) -> int:
    return int(row_id, 16) % buckets


def new_row(row_id: str, source: str) -> dict[str, Any]:
    return {"id": row_id, "parent_id": None, "source": source, "images": [], "text": None, "answer": None,
            "annotations": None, "messages": None, "meta": {}, "drop_stage": None, "drop_reason": None}


def dumps(value: Any) -> str | None:
    """Deterministic JSON for the JSON columns."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (JSON columns as Python objects) -> Arrow, base columns first with fixed types, scores after."""
    names: list[str] = list(BASE_COLUMNS)
    for row in rows:
        names.extend(k for k in row if k not in names)
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        if name in JSON_COLUMNS:
            values = [v if isinstance(v, str) or v is None else dumps(v) for v in values]
        if name in BASE_SCHEMA.names:
            typ = BASE_SCHEMA.field(name).type
            arr = pa.array(values, type=typ)
        else:
            arr = pa.array(values)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_to_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for row in rows:
        for name in JSON_COLUMNS:
            value = row.get(name)
            if isinstance(value, str):
                row[name] = json.loads(value)
        if row.get("meta") is None:
            row["meta"] = {}
        if row.get("images") is None:
            row["images"] = []
    return rows


def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None]
    if not tables:
        return rows_to_table([])
    return pa.concat_tables(tables, promote_options="permissive")


def score_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n not in NOT_SCORES and not n.startswith("_")]
