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
# where a row's image bytes are in the input, when the work files leave them out (pipeline/media.py)
MEDIA_COLUMNS = ("_media_root", "_image_refs")
# what only the steps of a running job read: never part of a decision, stripped from _work after the job
HEAVY_COLUMNS = (*BINARY_COLUMNS, *TOKEN_COLUMNS, *MEDIA_COLUMNS)
NOT_SCORES = frozenset(BASE_COLUMNS) | {"video", *TOKEN_COLUMNS}


ID_HEX = 32


def make_id(*parts: object) -> str:
    """128 bits (32 hex characters) of sha1 over the parts (relative source path and key; or parent id, builder,
    index): at 5 billion rows the chance of any collision is ~4e-20 (64 bits: ~50%)."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:ID_HEX]


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
    """Tables of several partitions as one. A column typed differently in two partitions (a custom stage
    returning bool here and int there) becomes float64 when all its types are numbers, else JSON text,
    instead of failing the job at the very end."""
    tables = [t for t in tables if t is not None]
    if not tables:
        return rows_to_table([])
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.concat_tables([_harmonise(t, tables) for t in tables], promote_options="permissive")


def _harmonise(table: pa.Table, all_tables: list[pa.Table]) -> pa.Table:
    for name in table.column_names:
        kinds = {str(t.schema.field(name).type) for t in all_tables if name in t.column_names}
        kinds.discard("null")
        if len(kinds) < 2:
            continue
        col = table[name]
        numeric = all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                      for t in (pa.type_for_alias(k) if k.isidentifier() else pa.string() for k in kinds))
        if numeric:
            new = col.cast(pa.float64())
        else:
            new = pa.array([v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True)
                            for v in col.to_pylist()], pa.string())
        table = table.set_column(table.schema.get_field_index(name), name, new)
    return table


def score_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n not in NOT_SCORES and not n.startswith("_")]
