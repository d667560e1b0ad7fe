"""pipeline.packing.assemble_pack / pack_tar_bytes (SPEC-qwen §5, §6; DESIGN "Output layout": packs/)."""

from __future__ import annotations

import copy
import io
import json
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formatters.rope import mrope_position_ids
from pipeline.pack_dataset import iter_packs
from pipeline.packing import assemble_pack, pack_tar_bytes

VS, VE, IMG, VID = 151652, 151653, 151655, 151656
PNG = b"\x89PNG\r\n\x1a\n"
JPG = b"\xff\xd8\xff\xe0"
IGNORE = -100


@st.composite
def members(draw, index: int) -> dict:
    """A random sample: text runs and vision blocks (image or video) with matching grids and media."""
    is_video = draw(st.booleans()) and draw(st.booleans())  # about a quarter are video members
    ids: list[int] = []
    images, videos, seconds, media = [], [], [], []
    n_blocks = draw(st.integers(1 if is_video else 0, 2 if is_video else 3))
    for b in range(n_blocks + 1):
        ids += draw(st.lists(st.integers(0, 5000), min_size=0 if b < n_blocks else 1, max_size=12))
        if b == n_blocks:
            break
        gh, gw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        if is_video:
            t = draw(st.integers(1, 3))
            videos.append([t, 2 * gh, 2 * gw])
            seconds.append(draw(st.sampled_from([0.5, 1.0, 2.0, 1.5])))
            media += [JPG + bytes([index, b, k]) for k in range(2 * t)]
            ids += [VS] + [VID] * (t * gh * gw) + [VE]
        else:
            images.append([1, 2 * gh, 2 * gw])
            media.append(draw(st.sampled_from([PNG, JPG])) + bytes([index, b]))
            ids += [VS] + [IMG] * (gh * gw) + [VE]
    labels = [t if draw(st.booleans()) and t not in (VS, VE, IMG, VID) else IGNORE for t in ids]
    return {
        "id": f"{index:016x}",
        "input_ids": ids,
        "labels": labels,
        "image_grid_thw": images,
        "video_grid_thw": videos,
        "second_per_grid_ts": seconds,
        "images": media,
        "is_video": is_video,
    }


@st.composite
def packs(draw) -> list[dict]:
    n = draw(st.integers(1, 5))
    return [draw(members(i)) for i in range(n)]


def _alone(m: dict) -> np.ndarray:
    return mrope_position_ids(
        m["input_ids"], m["image_grid_thw"], m["video_grid_thw"], m["second_per_grid_ts"]
    )


@settings(max_examples=150, deadline=None)
@given(packs())
def test_assemble_properties(ms: list[dict]) -> None:
    pack = assemble_pack(ms)
    lengths = [len(m["input_ids"]) for m in ms]
    total = sum(lengths)
    assert pack["input_ids"].dtype == np.int64 and pack["input_ids"].shape == (total,)
    assert pack["labels"].dtype == np.int64 and pack["labels"].shape == (total,)
    assert pack["position_ids"].dtype == np.int64 and pack["position_ids"].shape == (4, total)
    assert pack["cu_seqlens"].dtype == np.int32
    assert pack["cu_seqlens"].tolist() == np.cumsum([0, *lengths]).tolist()
    assert pack["input_ids"].tolist() == [t for m in ms for t in m["input_ids"]]
    assert pack["labels"].tolist() == [t for m in ms for t in m["labels"]]
    cu = pack["cu_seqlens"]
    for i, m in enumerate(ms):
        pos = pack["position_ids"][:, cu[i] : cu[i + 1]]
        assert pos[0].tolist() == list(range(lengths[i])), "row 0 restarts at 0 for each member"
        np.testing.assert_array_equal(pos[1:], _alone(m))
    doc = pack["json"]
    assert doc["members"] == [m["id"] for m in ms]
    assert doc["lengths"] == lengths and doc["n_tokens"] == total
    assert doc["image_grid_thw"] == [m["image_grid_thw"] for m in ms]
    assert doc["video_grid_thw"] == [m["video_grid_thw"] for m in ms]
    assert doc["second_per_grid_ts"] == [m["second_per_grid_ts"] for m in ms]
    assert doc["is_video"] == [m["is_video"] for m in ms]
    json.dumps(doc)  # plain JSON types only
    names = [s for s, _ in pack["media"]]
    assert len(set(names)) == len(names)
    assert doc["media"] == [[s for s in names if s.startswith(f"m{i}.")] for i in range(len(ms))]
    assert [d for _, d in pack["media"]] == [d for m in ms for d in m["images"]]
    for i, m in enumerate(ms):
        for k, data in enumerate(m["images"]):
            ext = "png" if data.startswith(PNG) else "jpg"
            assert doc["media"][i][k] == f"m{i}.{k}.{ext}"


@settings(max_examples=40, deadline=None)
@given(packs())
def test_row0_gives_transformers_the_member_boundaries(ms: list[dict]) -> None:
    """transformers builds the packed mask from row 0: its detector must find exactly our members."""
    torch = pytest.importorskip("torch")
    from transformers.masking_utils import find_packed_sequence_indices

    pack = assemble_pack(ms)
    found = find_packed_sequence_indices(torch.from_numpy(pack["position_ids"][0])[None])
    owner = np.repeat(np.arange(len(ms)), np.diff(pack["cu_seqlens"]))
    if len(ms) == 1:
        assert found is None
    else:
        assert found[0].tolist() == owner.tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(packs(), min_size=1, max_size=3))
def test_tar_deterministic_and_round_trips(pack_lists: list[list[dict]]) -> None:
    keys = [f"pack{i:05d}" for i in range(len(pack_lists))]
    first = pack_tar_bytes([(k, assemble_pack(ms)) for k, ms in zip(keys, pack_lists, strict=True)])
    again = pack_tar_bytes(
        [(k, assemble_pack(copy.deepcopy(ms))) for k, ms in zip(keys, pack_lists, strict=True)]
    )
    assert first == again
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        infos = tar.getmembers()
    assert all(i.mtime == 0 and i.mode == 0o444 and i.uname == "" and i.gname == "" for i in infos)
    assert {i.name.split(".", 1)[0] for i in infos} == set(keys)


def test_tar_layout_and_read_back(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ms = []
    for i, (gh, gw) in enumerate([(1, 2), (2, 2)]):
        ids = [int(x) for x in rng.integers(0, 5000, 5)] + [VS] + [IMG] * (gh * gw) + [VE, 7, 8]
        ms.append(
            {
                "id": f"{i:016x}",
                "input_ids": ids,
                "labels": [IGNORE] * 5 + [IGNORE] * (gh * gw + 2) + [7, 8],
                "image_grid_thw": [[1, 2 * gh, 2 * gw]],
                "video_grid_thw": [],
                "second_per_grid_ts": [],
                "images": [PNG + bytes([i])],
                "is_video": False,
            }
        )
    ms.append(
        {
            "id": "00000000000000ff",
            "input_ids": [VS] + [VID] * 2 + [VE, 9],
            "labels": [IGNORE] * 4 + [9],
            "image_grid_thw": [],
            "video_grid_thw": [[2, 2, 2]],
            "second_per_grid_ts": [1.0],
            "images": [JPG + bytes([k]) for k in range(4)],
            "is_video": True,
        }
    )
    pack = assemble_pack(ms)
    data = pack_tar_bytes([("p0", pack)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names == sorted(names)  # the tar writer orders a pack's entries by name
    assert set(names) == {
        "p0.json",
        "p0.input_ids.npy",
        "p0.labels.npy",
        "p0.position_ids.npy",
        "p0.cu_seqlens.npy",
        "p0.m0.0.png",
        "p0.m1.0.png",
        "p0.m2.0.jpg",
        "p0.m2.1.jpg",
        "p0.m2.2.jpg",
        "p0.m2.3.jpg",
    }
    path = tmp_path / "pack-00000.tar"
    path.write_bytes(data)
    (back,) = list(iter_packs(str(path)))
    assert back["key"] == "p0" and back["json"] == pack["json"]
    for a in ("input_ids", "labels", "position_ids", "cu_seqlens"):
        assert back[a].dtype == pack[a].dtype
        np.testing.assert_array_equal(back[a], pack[a])
    assert back["media"] == dict(pack["media"])


def _member(**kw) -> dict:
    m = {
        "id": "a",
        "input_ids": [1, VS, IMG, VE, 2],
        "labels": [IGNORE] * 4 + [2],
        "image_grid_thw": [[1, 2, 2]],
        "video_grid_thw": [],
        "second_per_grid_ts": [],
        "images": [PNG],
        "is_video": False,
    }
    m.update(kw)
    return m


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member(labels=[1, 2]), "labels"),
        (_member(images=[]), "images but 1 image grids"),
        (_member(image_grid_thw=[[1, 4, 2]]), "pad tokens"),
        (_member(input_ids=[], labels=[]), "no tokens"),
        (_member(is_video=True), "video member"),
        (_member(images=["not bytes"]), "not encoded bytes"),
        ({"id": "x"}, "lacks"),
    ],
)
def test_assemble_rejects(member: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assemble_pack([member])


def test_assemble_rejects_empty_and_frame_mismatch() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        assemble_pack([])
    video = _member(
        input_ids=[VS, VID, VID, VE],
        labels=[IGNORE] * 4,
        image_grid_thw=[],
        video_grid_thw=[[2, 2, 2]],
        second_per_grid_ts=[1.0],
        images=[JPG] * 3,
        is_video=True,
    )
    with pytest.raises(ValueError, match="3 frames"):
        assemble_pack([video])
    video["images"] = [JPG] * 4
    assert assemble_pack([video])["json"]["media"] == [[f"m0.{k}.jpg" for k in range(4)]]


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "pack 1"])
def test_tar_rejects_bad_keys(key: str) -> None:
    with pytest.raises(ValueError, match="pack key"):
        pack_tar_bytes([(key, assemble_pack([_member()]))])


def test_tar_rejects_repeated_key() -> None:
    pack = assemble_pack([_member()])
    with pytest.raises(ValueError, match="twice"):
        pack_tar_bytes([("k", pack), ("k", pack)])


def _packs_out(tmp_path, with_stats: bool) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.packing import fill_stats, pack_lengths

    lengths = [90, 60, 40, 35, 30, 20, 10, 5, 3]
    groups = pack_lengths(lengths, 100)
    loads = [sum(lengths[m] for m in g) for g in groups]
    table = pa.table(
        {
            "pack": [f"p{i:05d}" for i in range(len(groups))],
            "shard": ["pack-00000.tar"] * len(groups),
            "members": [[f"{m:016x}" for m in g] for g in groups],
            "lengths": [[lengths[m] for m in g] for g in groups],
            "n_tokens": loads,
            "fill": [x / 100 for x in loads],
            "cost": [sum(lengths[m] ** 2 for m in g) for g in groups],
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(table, out / "packs.parquet")
    if with_stats:
        (out / "stats.json").write_text(json.dumps({"pack": fill_stats(groups, lengths, 100)}))
    return str(out)


@pytest.mark.parametrize("with_stats", [True, False])
def test_show_packs(tmp_path, capsys, with_stats: bool) -> None:
    import argparse

    from jobs.inspect_packs import show_packs

    out = _packs_out(tmp_path, with_stats)
    assert show_packs(argparse.Namespace(out=out, json=True, n=2)) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["kind"] for x in lines] == ["pack", "pack", "summary"]
    summary = lines[-1]
    assert summary["n_packs"] == 3 and summary["tokens"] == 293
    assert summary["lower_bound_packs"] == (3 if with_stats else None)
    assert summary["min"] <= summary["p5"] <= summary["p50"] <= summary["p95"] <= summary["max"] <= 1.0
    assert show_packs(argparse.Namespace(out=out, json=False, n=1)) == 0
    text = capsys.readouterr().out
    assert "p00000" in text and "2 more pack(s)" in text and "fill: mean" in text
    assert ("lower bound: 3" in text) == with_stats


def test_show_packs_without_packs(tmp_path, capsys) -> None:
    import argparse

    from jobs.inspect_packs import show_packs

    assert show_packs(argparse.Namespace(out=str(tmp_path), json=False, n=10)) == 2
    err = capsys.readouterr().err
    assert "no packs.parquet" in err and len(err.strip().splitlines()) == 1
