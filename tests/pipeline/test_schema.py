import pyarrow as pa

from pipeline.schema import concat, make_id, rows_to_table, table_to_rows


def test_ids_are_32_hex_and_stable():
    assert make_id("a/b.jsonl", 3) == make_id("a/b.jsonl", 3) != make_id("a/b.jsonl", 4)
    assert len(make_id("x", "y")) == 32 and int(make_id("x", "y"), 16) >= 0  # 128 bits


def test_rows_round_trip_with_json_columns():
    rows = [{"id": "1", "source": "s", "meta": {"b": 1, "a": [1, 2]}, "images": [b"x"], "score": 0.5}]
    back = table_to_rows(rows_to_table(rows))
    assert back[0]["meta"] == {"a": [1, 2], "b": 1} and back[0]["images"] == [b"x"] and back[0]["score"] == 0.5
    assert rows_to_table(rows)["meta"].to_pylist() == ['{"a":[1,2],"b":1}']  # sorted keys: deterministic


def test_concat_harmonises_conflicting_column_types():
    a = pa.table({"id": ["a"], "flag": pa.array([True])})
    b = pa.table({"id": ["b"], "flag": pa.array([3])})
    c = pa.table({"id": ["c"], "note": pa.array(["s"])})
    d = pa.table({"id": ["d"], "note": pa.array([5])})
    assert concat([a, b]).column("flag").to_pylist() == [1.0, 3.0]
    assert concat([c, d]).column("note").to_pylist() == ["s", "5"]
    assert concat([a, c]).num_rows == 2  # absent columns still merge as nulls
