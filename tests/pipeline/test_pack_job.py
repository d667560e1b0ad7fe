"""The pack step in a real job: OCR samples tokenized with the tiny model's tokenizer, packed, written to
packs/*.tar, read back by PackDataset; too-long samples rejected; packs independent of partitioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from model.tiny import build_tiny_qwen25vl
from pipeline.pack_dataset import PackDataset, iter_packs
from pipeline.recipe import load_recipe
from pipeline.runner import run_job

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "qwen25vl")


def ocr_job(tiny, out: Path, partition_rows: int, pack: dict | None = None):
    sets = [f"input.path={REPO / 'tests/data/ocr_icdar2015'}", f"format.tokenizer={tiny}",
            f"input.partition_rows={partition_rows}", "format.max_pixels=3136"]  # 4 image tokens: samples short enough to share packs
    if pack:
        sets += [f"pack.{k}={v}" for k, v in pack.items()]
    run_job(load_recipe(str(REPO / "jobs/recipes/ocr.yaml"), sets), str(out), log=lambda m: None)
    return pq.read_table(out / "manifest.parquet").to_pylist(), pq.read_table(out / "rejects.parquet").to_pylist()


def test_pack_job(ray_local, tiny, tmp_path, capsys):
    plain, _ = ocr_job(tiny, tmp_path / "plain", 5)
    lengths = {r["id"]: r["n_tokens"] for r in plain}
    assert len(lengths) > 10
    max_len = max(lengths.values()) - 1  # the longest sample cannot fit
    too_long = {i for i, n in lengths.items() if n > max_len}
    pack = {"max_len": max_len, "packs_per_step": 2, "packs_per_shard": 3}
    manifest, rejects = ocr_job(tiny, tmp_path / "a", 1, pack)
    assert {r["id"] for r in manifest} == set(lengths) - too_long
    assert {r["id"] for r in rejects if r["drop_reason"] == "too_long"} == too_long
    assert all(r["drop_stage"] == "pack" for r in rejects if r["drop_reason"] == "too_long")

    packs = pq.read_table(tmp_path / "a" / "packs.parquet").to_pylist()
    members = [m for p in packs for m in p["members"]]
    assert sorted(members) == sorted(r["id"] for r in manifest)  # every kept sample in exactly one pack
    for p in packs:
        assert p["lengths"] == [lengths[m] for m in p["members"]]
        assert sum(p["lengths"]) == p["n_tokens"] <= max_len
    assert len(packs) < len(manifest)  # samples really share packs

    read = 0
    for shard in sorted((tmp_path / "a" / "packs").glob("pack-*.tar")):
        for pk in iter_packs(str(shard)):
            lens = pk["json"]["lengths"]
            assert pk["cu_seqlens"].tolist() == np.cumsum([0, *lens]).tolist()
            starts = np.cumsum([0, *lens[:-1]])
            for s, n in zip(starts, lens, strict=True):
                assert pk["position_ids"][0, s:s + n].tolist() == list(range(n))
            assert pk["input_ids"].shape == pk["labels"].shape == (sum(lens),)
            read += 1
    assert read == len(packs)

    batches = list(PackDataset(str(tmp_path / "a" / "packs"), tiny))  # grids re-derived from the stored images
    assert len(batches) == len(packs)
    assert all(b["position_ids"].shape[0] == 4 for b in batches)

    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    summary = stats["stages"]["pack"]["summary"]
    assert summary["packs"] == len(packs) and summary["lower_bound_packs"] <= len(packs)
    assert main(["inspect", str(tmp_path / "a"), "--packs"]) == 0
    assert "fill" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "a"), "--json", "--n", "3"]) == 0  # shards also hold .npy tokens
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(shown) == 3 and all(s["image_sizes"] and s["messages"] for s in shown)

    ocr_job(tiny, tmp_path / "b", 5, pack)  # other partitioning: byte-identical packs
    names = sorted(p.name for p in (tmp_path / "a" / "packs").glob("*.tar"))
    assert names == sorted(p.name for p in (tmp_path / "b" / "packs").glob("*.tar"))
    for name in names:
        assert (tmp_path / "a" / "packs" / name).read_bytes() == (tmp_path / "b" / "packs" / name).read_bytes()
    assert (tmp_path / "a" / "packs.parquet").read_bytes() == (tmp_path / "b" / "packs.parquet").read_bytes()


def test_packs_of_images_kept_at_original_size_read_back(ray_local, tiny, tmp_path):
    """pre_resize: false stores the originals; PackDataset resizes them with each member's recorded limits and
    gets exactly the grids the pack counted."""
    pack = {"max_len": 4096}
    manifest, _ = ocr_job(tiny, tmp_path / "orig", 5, {**pack})
    assert manifest
    out = tmp_path / "nopre"
    sets = [f"input.path={REPO / 'tests/data/ocr_icdar2015'}", f"format.tokenizer={tiny}", "format.pre_resize=false",
            "format.max_pixels=12544", "pack.max_len=4096"]
    run_job(load_recipe(str(REPO / "jobs/recipes/ocr.yaml"), sets), str(out), log=lambda m: None)
    packs = pq.read_table(out / "packs.parquet").to_pylist()
    batches = list(PackDataset(str(out / "packs"), tiny))
    assert len(batches) == len(packs) > 0
    first = next(iter_packs(str(sorted((out / "packs").glob("*.tar"))[0])))
    import io

    from PIL import Image

    sizes = {Image.open(io.BytesIO(data)).size for data in first["media"].values()}
    assert sizes == {(1280, 720)}  # the ICDAR originals, not resized
    n_images = sum(len(p["members"]) for p in packs)
    assert sum(int(b["image_grid_thw"].shape[0]) for b in batches) == n_images
