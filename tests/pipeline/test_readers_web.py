"""Each web-pair reader format on real files, without Ray."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.readers import iter_rows
from pipeline.recipe import InputSpec, RecipeError
from pipeline.schema import make_id
from tests import media

PAIRS = media.DEMO_IMAGES
NAMES = ["camera.png", "chelsea.png", "rocket.jpg"]


def spec(path, fmt, **kw) -> InputSpec:
    return InputSpec(path=str(path), format=fmt, **kw)


def test_jsonl_relative_absolute_and_hf_struct(tmp_path):
    (tmp_path / "imgs").mkdir()
    for n in NAMES:
        shutil.copy(PAIRS / n, tmp_path / "imgs" / n)
    data = (PAIRS / "rocket.jpg").read_bytes()
    lines = [
        {"img": "imgs/camera.png", "txt": "relative"},
        {"img": str(tmp_path / "imgs" / "chelsea.png"), "txt": "absolute", "url": "http://x/y.png"},
        {"img": {"bytes": list(data), "path": "rocket.jpg"}, "txt": "hf struct"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = list(iter_rows(spec(path, "jsonl", image_column="img", text_column="txt", partition_rows=2)))
    assert [r["text"] for r in rows] == ["relative", "absolute", "hf struct"]
    assert rows[0]["images"][0] == (PAIRS / "camera.png").read_bytes()
    assert rows[1]["images"][0] == (PAIRS / "chelsea.png").read_bytes()
    assert rows[2]["images"][0] == data
    assert rows[1]["meta"]["url"] == "http://x/y.png"
    assert [r["id"] for r in rows] == [make_id("d.jsonl", i) for i in (1, 2, 3)]
    assert all(len(r["id"]) == 32 and int(r["id"], 16) >= 0 for r in rows)
    assert [r["source"] for r in rows] == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"]


def test_jsonl_bad_lines_are_rows_with_reasons(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"image": "nope.jpg", "caption": "x"}\n{broken\n\xff\xfe{"a": 1}\n[1, 2]\n')
    rows = list(iter_rows(spec(path, "jsonl")))
    assert [(r["drop_stage"], r["drop_reason"]) for r in rows] == [
        ("read", "missing_file"), ("read", "invalid_json"), ("read", "invalid_utf8"), ("read", "invalid_json")]
    assert len({r["id"] for r in rows}) == 4


def test_jsonl_ids_stable_across_mounts(tmp_path):
    for root in ("a", "b/c"):
        d = tmp_path / root
        d.mkdir(parents=True)
        shutil.copy(PAIRS / "camera.png", d / "camera.png")
        (d / "d.jsonl").write_text(json.dumps({"image": "camera.png", "caption": "c"}) + "\n")
    ids = [next(iter_rows(spec(tmp_path / r / "d.jsonl", "jsonl")))["id"] for r in ("a", "b/c")]
    assert ids[0] == ids[1]


def test_parquet_binary_struct_and_path(tmp_path):
    shutil.copy(PAIRS / "camera.png", tmp_path / "camera.png")
    data = (PAIRS / "rocket.jpg").read_bytes()
    table = pa.table({
        "jpg": pa.array([{"bytes": data, "path": "r.jpg"}, {"bytes": None, "path": "camera.png"}],
                        pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": ["a rocket", "a camera"],
        "key": ["k1", "k2"],
    })
    pq.write_table(table, tmp_path / "d.parquet")
    rows = list(iter_rows(spec(tmp_path / "d.parquet", "parquet", image_column="jpg", key_column="key")))
    assert rows[0]["images"] == [data]
    assert rows[1]["images"] == [(PAIRS / "camera.png").read_bytes()]
    assert rows[0]["id"] == make_id("d.parquet", "k1")
    pq.write_table(pa.table({"image": [data], "caption": ["raw"]}), tmp_path / "raw.parquet")
    assert next(iter_rows(spec(tmp_path / "raw.parquet", "parquet")))["images"] == [data]


def test_real_web_alttext_parquet():
    path = Path(__file__).resolve().parents[1] / "data" / "web_alttext" / "test_1000.parquet"
    rows = list(iter_rows(spec(path, "parquet", image_column="URL", text_column="TEXT", partition_rows=300)))
    assert len(rows) == 1000
    # the images are URLs that this machine cannot fetch: each row is a reject with a reason, none is lost
    assert {r["drop_reason"] for r in rows} == {"url_not_downloaded"}
    assert rows[1]["text"] == "Tavern Brawl by velinov"
    assert len({r["id"] for r in rows}) == 1000


def test_webdataset_img2dataset_layout(tmp_path):
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False) as tw:
        for i, n in enumerate(NAMES):
            ext = n.split(".")[-1]
            tw.write({"__key__": f"{i:09d}", ext: (PAIRS / n).read_bytes(), "txt": f"caption {i}".encode(),
                      "json": json.dumps({"url": f"http://e/{n}", "key": f"{i:09d}", "status": "success"}).encode()})
        tw.write({"__key__": "000000009", "txt": b"no image here"})
    (tmp_path / "00000.tar").write_bytes(buf.getvalue())
    rows = list(iter_rows(spec(tmp_path, "webdataset")))
    assert [r["text"] for r in rows[:3]] == ["caption 0", "caption 1", "caption 2"]
    assert rows[1]["images"] == [(PAIRS / "chelsea.png").read_bytes()]
    assert rows[0]["meta"]["url"] == "http://e/camera.png"
    assert rows[0]["id"] == make_id("00000.tar", "000000000")
    assert rows[3]["drop_reason"] == "no_image"


def test_folder_with_sidecar_captions(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(PAIRS / "camera.png", tmp_path / "sub" / "camera.png")
    (tmp_path / "sub" / "camera.txt").write_text("\ufeffa camera man")
    shutil.copy(PAIRS / "rocket.jpg", tmp_path / "rocket.jpg")
    rows = list(iter_rows(spec(tmp_path, "folder")))
    assert [r["source"] for r in rows] == ["rocket.jpg", "sub/camera.png"]
    assert rows[1]["text"] == "a camera man" and rows[0]["text"] is None


def test_missing_input_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="input.path: not found"):
        list(iter_rows(spec(tmp_path / "nope.jsonl", "jsonl")))
