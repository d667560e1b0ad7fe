"""Jobs on awkward inputs: repeated keys, escaped lone surrogates, an edited input, a half-written file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.recipe import RecipeError, parse_recipe
from pipeline.runner import run_job
from tests import media

pytestmark = pytest.mark.slow


def write(tmp_path: Path, lines: list[str]) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    for k in range(4):
        (tmp_path / "img" / f"{k}.jpg").write_bytes(media.jpeg(96, 64, seed=k))
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(path: Path, out: Path, **input_kw):
    raw = {"input": {"path": str(path), "partition_rows": 2, **input_kw},
           "stages": {"image_check": {"min_side_px": 16}, "dedup": {}}}
    return run_job(parse_recipe(raw), str(out), log=lambda m: None)


def tables(out: Path):
    return pq.read_table(out / "manifest.parquet").to_pylist(), pq.read_table(out / "rejects.parquet").to_pylist()


def test_repeated_keys_are_rejected_not_merged(ray_local, tmp_path):
    lines = [json.dumps({"image": f"img/{k}.jpg", "caption": f"c{k}", "url": u})
             for k, u in enumerate(["a", "b", "a", "c"])]
    path = write(tmp_path, lines)
    run(path, tmp_path / "out", key_column="url")
    kept, rejects = tables(tmp_path / "out")
    assert sorted(r["text"] for r in kept) == ["c1", "c3"]
    dup = [r for r in rejects if r["drop_reason"] == "duplicate_id"]
    assert sorted(r["source"] for r in dup) == ["d.jsonl:1#a", "d.jsonl:3#a"]
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / "out/shards").glob("*.tar")),
                                                 shardshuffle=False)]
    assert sorted(keys) == sorted(r["id"] for r in kept)


def test_escaped_lone_surrogate_is_invalid_utf8(ray_local, tmp_path):
    path = write(tmp_path, [json.dumps({"image": "img/0.jpg", "caption": "fine"}),
                            '{"image": "img/1.jpg", "caption": "cut emoji \\ud83d"}'])
    run(path, tmp_path / "out")
    kept, rejects = tables(tmp_path / "out")
    assert [r["text"] for r in kept] == ["fine"]
    assert [(r["drop_stage"], r["drop_reason"]) for r in rejects] == [("read", "invalid_utf8")]


def test_edited_input_is_not_resumed_and_stale_temp_files_go(ray_local, tmp_path):
    path = write(tmp_path, [json.dumps({"image": f"img/{k}.jpg", "caption": f"c{k}"}) for k in range(4)])
    out = tmp_path / "out"
    run(path, out)
    stale = out / "shards" / "shard-00099.tar.tmp-1234abcd"
    stale.write_bytes(b"half a tar")
    result = run(path, out)  # same job: resumed, the half-written file removed
    assert result.skipped_partitions > 0 and not stale.exists()
    path.write_text(path.read_text().replace('"c0"', '"x0"'))
    with pytest.raises(RecipeError, match="another recipe or input"):
        run(path, out)


def test_nan_in_input_never_reaches_the_shard_json(ray_local, tmp_path):
    path = write(tmp_path, ['{"image": "img/0.jpg", "caption": "nan here", "rating": NaN, "views": 3}'])
    run(path, tmp_path / "out")
    [tar] = list((tmp_path / "out" / "shards").glob("*.tar"))
    import tarfile

    def strict(name: str):
        raise ValueError(f"not JSON: {name}")

    with tarfile.open(tar) as t:
        docs = [json.loads(t.extractfile(m).read(), parse_constant=strict) for m in t if m.name.endswith(".json")]
    assert docs[0]["meta"]["views"] == 3 and "rating" not in docs[0]["meta"]
