"""End-to-end jobs on local Ray: conservation, determinism, readback, custom global and expand stages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline.recipe import parse_recipe
from pipeline.runner import run_job
from tests import media
from tests.media import samples_in

pytestmark = pytest.mark.slow


def run(raw: dict, out: Path):
    return run_job(parse_recipe(raw), str(out), log=lambda m: None)


def recipe(path: Path, partition_rows: int = 5, **extra) -> dict:
    return {
        "input": {"path": str(path), "format": "jsonl", "partition_rows": partition_rows},
        "stages": {"image_check": {"min_side_px": 32}, "caption_check": {}, **extra.pop("stages", {})},
        **extra,
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return media.write_mixed_dataset(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def mixed_run(ray_local, mixed, tmp_path_factory):
    path, expected = mixed
    out = tmp_path_factory.mktemp("out") / "job"
    result = run(recipe(path), out)
    return out, result, expected


def test_conservation(mixed_run):
    out, result, expected = mixed_run
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(manifest) + len(rejects) == len(expected) == result.stats["records_in"]
    got = {r["source"]: None for r in manifest}
    got.update({r["source"]: r["drop_reason"] for r in rejects})
    assert got == expected
    assert all(r["drop_stage"] and r["drop_reason"] for r in rejects)
    assert {r["id"] for r in manifest}.isdisjoint({r["id"] for r in rejects})
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == len(manifest) and stats["rejected"] == len(rejects)
    assert stats["stages"]["image_check"]["dropped"]["truncated"] == 1


def test_readback_with_webdataset(mixed_run):
    out, _, _ = mixed_run
    manifest = {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False):
        meta = json.loads(sample["json"])
        images = [Image.open(io.BytesIO(v)).convert("RGB") for k, v in sorted(sample.items())
                  if k.split(".")[-1] in ("jpg", "png", "webp", "gif")]
        seen[sample["__key__"]] = (meta, images, sample["__url__"])
    assert set(seen) == set(manifest)
    for key, (meta, images, url) in seen.items():
        assert meta["id"] == key and meta["text"] == manifest[key]["text"]
        assert Path(url).name == manifest[key]["shard"]
        assert len(images) == 1
        assert images[0].size == (manifest[key]["width"], manifest[key]["height"])
    exif = next(m for m in manifest.values() if m["source"].endswith(":4"))
    assert (exif["width"], exif["height"]) == (200, 300)  # stored upright


def test_determinism_across_partitioning(ray_local, mixed, mixed_run, tmp_path):
    out1, _, _ = mixed_run
    path, _ = mixed
    out2 = tmp_path / "job2"
    run(recipe(path, partition_rows=3), out2)
    # shards are per partition (their names and number follow the partitioning); their samples do not
    names1, names2 = sorted((out1 / "shards").glob("*.tar")), sorted((out2 / "shards").glob("*.tar"))
    assert len(names1) != len(names2)
    assert samples_in(names1) == samples_in(names2) and len(samples_in(names1)) > 0
    assert pq.read_table(out1 / "rejects.parquet").equals(pq.read_table(out2 / "rejects.parquet"))
    m1, m2 = (pq.read_table(o / "manifest.parquet") for o in (out1, out2))
    assert m1.drop_columns(["shard"]).equals(m2.drop_columns(["shard"]))


def test_global_and_expand_stages(ray_local, mixed, tmp_path):
    path, expected = mixed
    stages = {"wide": {"use": "tests.pipeline.custom_stages:WideHalf"},
              "split": {"use": "tests.pipeline.custom_stages:Split", "copies": 3}}
    out = tmp_path / "job"
    result = run(recipe(path, stages=stages), out)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    n_good = sum(1 for v in expected.values() if v is None)
    wide = result.stats["stages"]["wide"]
    assert wide["in"] == n_good and wide["kept"] + wide["dropped"].get("narrow", 0) == n_good
    assert all(r["median_width"] is not None for r in manifest)
    widths = {r["width"] for r in manifest}
    assert min(widths) >= manifest[0]["median_width"]
    split = result.stats["stages"]["split"]
    # every record kept by `wide` is expanded into 3 samples or rejected as unsplittable
    assert split["samples"] == 3 * split["kept"]
    assert len(manifest) == split["samples"]
    assert all(r["parent_id"] for r in manifest)
    assert len({r["id"] for r in manifest}) == len(manifest)
    parents = {r["parent_id"] for r in manifest}
    record_rejects = [r for r in rejects if r["parent_id"] is None]
    assert len(parents) + len(record_rejects) == len(expected)
    assert any(r["drop_reason"] == "unsplittable" for r in rejects)
