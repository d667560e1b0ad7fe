"""Inputs nobody prepared (issue 9, items 1-3): a cap on caption bytes, image/video paths confined to the input
root, and one clear line (exit 2, before Ray starts) for an empty input, a JSON array given as JSON Lines and
captionless videos given to a builder."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.readers import check_input, iter_rows, reader_for
from pipeline.readers.base import Partition
from pipeline.recipe import InputSpec, RecipeError, parse_recipe
from tests import media

REPO = Path(__file__).resolve().parents[2]
CAMERA = media.DEMO_IMAGES / "camera.png"
SINTEL = REPO / "tests" / "data" / "video" / "sintel_5s.mp4"
CAP = 64 * 1024


def rows(path, fmt, **kw) -> list[dict]:
    return list(iter_rows(InputSpec(path=str(path), format=fmt, **kw)))


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------- 1. caption cap


def test_caption_over_the_default_cap_is_rejected_at_read_without_its_image(tmp_path):
    shutil.copy(CAMERA, tmp_path / "camera.png")
    huge = "word " * 20_000  # 100,000 bytes
    euros = "€" * 22_000  # 22,000 characters, 66,000 bytes: over the cap only once encoded
    fine = "é" * 30_000  # 60,000 bytes
    path = jsonl(tmp_path / "d.jsonl", [
        {"image": "missing.png", "caption": huge},  # the image is never looked at: not missing_file
        {"image": "camera.png", "caption": euros},
        {"image": "camera.png", "caption": fine},
    ])
    rs = rows(path, "jsonl")
    assert [(r["drop_stage"], r["drop_reason"]) for r in rs] == [
        ("read", "caption_too_long"), ("read", "caption_too_long"), (None, None)]
    assert rs[0]["text"] is None and rs[0]["images"] == [] and rs[1]["images"] == []
    assert rs[0]["meta"]["caption_prefix"] == huge[:200] and rs[0]["meta"]["caption_bytes"] == 100_000
    assert rs[1]["meta"]["caption_bytes"] == 66_000
    assert "over input.max_caption_bytes (65536)" in rs[0]["meta"]["error"]
    assert rs[2]["text"] == fine and rs[2]["images"] == [CAMERA.read_bytes()]
    # the cap is a recipe key: a byte size, or null for none
    assert [r["drop_reason"] for r in rows(path, "jsonl", max_caption_bytes="1MiB")] == ["missing_file", None, None]
    assert [r["drop_reason"] for r in rows(path, "jsonl", max_caption_bytes=None)] == ["missing_file", None, None]
    assert [r["drop_reason"] for r in rows(path, "jsonl", max_caption_bytes=50_000)] == ["caption_too_long"] * 3


def test_caption_cap_in_every_text_reader(tmp_path):
    huge = "x" * (CAP + 1)
    # folder: a sidecar .txt over the cap is not read in full
    (tmp_path / "folder").mkdir()
    shutil.copy(CAMERA, tmp_path / "folder" / "a.png")
    (tmp_path / "folder" / "a.txt").write_text(huge)
    shutil.copy(CAMERA, tmp_path / "folder" / "b.png")
    (tmp_path / "folder" / "b.txt").write_text("x" * CAP)
    (a, b) = rows(tmp_path / "folder", "folder")
    assert (a["drop_reason"], a["meta"]["caption_bytes"], a["meta"]["caption_prefix"]) == (
        "caption_too_long", CAP + 1, "x" * 200)
    assert b["drop_reason"] is None and len(b["text"]) == CAP
    # webdataset
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("k.jpg", CAMERA.read_bytes()), ("k.txt", huge.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "w.tar").write_bytes(buf.getvalue())
    assert [r["drop_reason"] for r in rows(tmp_path / "w.tar", "webdataset")] == ["caption_too_long"]
    # parquet, qa_jsonl, gsm8k (gzip)
    pq.write_table(pa.table({"image": [CAMERA.read_bytes()], "caption": [huge]}), tmp_path / "d.parquet")
    assert [r["drop_reason"] for r in rows(tmp_path / "d.parquet", "parquet")] == ["caption_too_long"]
    qa = jsonl(tmp_path / "qa.jsonl", [{"question": huge, "answer": "a"}])
    assert [r["drop_reason"] for r in rows(qa, "qa_jsonl")] == ["caption_too_long"]
    (tmp_path / "g.jsonl.gz").write_bytes(gzip.compress(
        (json.dumps({"question": huge, "answer": "so #### 4"}) + "\n").encode()))
    assert [r["drop_reason"] for r in rows(tmp_path / "g.jsonl.gz", "gsm8k")] == ["caption_too_long"]


def test_video_caption_over_the_cap_is_rejected_before_decoding(tmp_path):
    pytest.importorskip("decord")
    path = jsonl(tmp_path / "v.jsonl", [{"video": "absent.mp4", "caption": "y" * (CAP + 10)}])
    (row,) = rows(path, "video")
    assert row["drop_reason"] == "caption_too_long" and row["meta"]["caption_bytes"] == CAP + 10


# ---------------------------------------------------------------------------------------------- 2. confinement


@pytest.fixture
def escaping_dataset(tmp_path) -> Path:
    """tmp/ds/d.jsonl with images inside ds, a real image beside ds, and a symlink in ds pointing out."""
    ds = tmp_path / "ds"
    (ds / "imgs").mkdir(parents=True)
    shutil.copy(CAMERA, ds / "imgs" / "ok.png")
    shutil.copy(CAMERA, tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", ds / "imgs" / "link.png")
    os.symlink(ds / "imgs" / "ok.png", ds / "inner_link.png")
    jsonl(ds / "d.jsonl", [
        {"image": "imgs/ok.png", "caption": "inside"},
        {"image": "imgs/../imgs/ok.png", "caption": "inside, with .."},
        {"image": str(ds / "imgs" / "ok.png"), "caption": "absolute inside"},
        {"image": "inner_link.png", "caption": "a symlink that stays inside"},
        {"image": "../secret.png", "caption": "a real image reached by .."},
        {"image": "../../../../../../etc/passwd", "caption": "passwd"},
        {"image": "/etc/passwd", "caption": "absolute outside"},
        {"image": "../nowhere.png", "caption": "outside and absent: not even looked up"},
        {"image": "imgs/link.png", "caption": "a symlink out"},
    ])
    return ds


def test_paths_outside_the_input_root_are_rejected_unread(escaping_dataset):
    rs = rows(escaping_dataset / "d.jsonl", "jsonl")
    assert [r["drop_reason"] for r in rs] == [None] * 4 + ["path_outside_root"] * 5
    assert all(r["drop_stage"] == "read" and r["images"] == [] for r in rs[4:])
    assert all(r["images"] == [CAMERA.read_bytes()] for r in rs[:4])
    # a folder input is the root: a jsonl in a subfolder may name images beside it in the dataset folder
    sub = escaping_dataset / "sub"
    sub.mkdir()
    jsonl(sub / "s.jsonl", [{"image": "../imgs/ok.png", "caption": "c"}])
    by_source = {r["source"]: r["drop_reason"] for r in rows(escaping_dataset, "jsonl")}
    assert by_source["sub/s.jsonl:1"] is None and by_source["d.jsonl:5"] == "path_outside_root"


def test_allow_outside_root_reads_them(escaping_dataset):
    rs = rows(escaping_dataset / "d.jsonl", "jsonl", allow_outside_root=True)
    assert rs[4]["drop_reason"] is None and rs[4]["images"] == [CAMERA.read_bytes()]
    assert rs[6]["drop_reason"] is None and rs[6]["images"] == [Path("/etc/passwd").read_bytes()]
    assert rs[7]["drop_reason"] == "missing_file"
    assert rs[8]["drop_reason"] is None


def test_confinement_in_parquet_folder_coco_and_video(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    shutil.copy(CAMERA, tmp_path / "secret.png")
    pq.write_table(pa.table({"image": ["../secret.png"], "caption": ["c"]}), ds / "d.parquet")
    assert [r["drop_reason"] for r in rows(ds / "d.parquet", "parquet")] == ["path_outside_root"]
    # folder: an image symlinked out of the folder
    (tmp_path / "f").mkdir()
    shutil.copy(CAMERA, tmp_path / "f" / "a.png")
    os.symlink(tmp_path / "secret.png", tmp_path / "f" / "b.png")
    assert [r["drop_reason"] for r in rows(tmp_path / "f", "folder")] == [None, "path_outside_root"]
    assert [r["drop_reason"] for r in rows(tmp_path / "f", "folder", allow_outside_root=True)] == [None, None]
    # coco: file names resolve under image_dir
    coco = {"images": [{"id": 1, "file_name": "../secret.png", "width": 10, "height": 10},
                       {"id": 2, "file_name": "/etc/passwd", "width": 10, "height": 10}],
            "annotations": [], "categories": []}
    (ds / "instances.json").write_text(json.dumps(coco))
    assert [r["drop_reason"] for r in rows(ds / "instances.json", "coco")] == ["path_outside_root"] * 2
    # video jsonl and a folder of videos
    pytest.importorskip("decord")
    jsonl(ds / "v.jsonl", [{"video": "../clip.mp4", "caption": "c"}])
    assert [r["drop_reason"] for r in rows(ds / "v.jsonl", "video")] == ["path_outside_root"]
    (tmp_path / "videos").mkdir()
    os.symlink(SINTEL, tmp_path / "videos" / "s.mp4")
    assert [r["drop_reason"] for r in rows(tmp_path / "videos", "video")] == ["path_outside_root"]


# ---------------------------------------------------------------------------------------------- 3. clear lines


def vlcurate_run(tmp_path: Path, recipe: str, *extra: str) -> tuple[int, list[str]]:
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    proc = subprocess.run([sys.executable, "-m", "jobs.run", str(path), "-o", str(tmp_path / "out"), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, [ln for ln in proc.stderr.splitlines() if ln.strip()]


def test_empty_input_is_an_error_unless_allowed(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    recipe = f"input: {{path: {tmp_path / 'empty.jsonl'}}}\n"
    rc, err = vlcurate_run(tmp_path, recipe)
    assert rc == 2 and len(err) == 1, err
    assert err[0] == f"vlcurate: input.path: no records in {tmp_path / 'empty.jsonl'} (empty input); " \
                     "pass --allow-empty to run the job anyway"
    # --allow-empty passes that check: the next one before Ray (the CLIP checkpoint) is what stops it here
    rc, err = vlcurate_run(tmp_path, recipe + "stages: {clip_score: {}}\n", "--allow-empty")
    assert rc == 2 and len(err) == 1 and err[0].startswith("vlcurate: stages.clip_score.checkpoint"), err


def test_empty_input_check_on_plans():
    recipe = parse_recipe({"input": {"path": "x.jsonl"}})
    with pytest.raises(RecipeError, match="no records"):
        check_input(recipe, [Partition("p0", "a", "a", 0, 0), Partition("p1", "b", "b", 0, 0)])
    check_input(recipe, [Partition("p0", "a", "a", 0, 0)], allow_empty=True)
    check_input(recipe, [Partition("p0", "a", "a", 0, 0), Partition("p1", "b", "b", 0, 3)])
    check_input(recipe, [Partition("p0", "a.tar", "a.tar")])  # tars: the count is unknown before reading


def test_empty_webdataset_tars_are_an_error_unless_allowed(tmp_path):
    """Tars do not know their record count, but an input whose every tar holds no member is refused before
    Ray, in one line; one member in the last tar is enough."""
    (tmp_path / "wds").mkdir()
    for name in ("a.tar", "b.tar"):
        tarfile.open(tmp_path / "wds" / name, "w").close()
    recipe = parse_recipe({"input": {"path": str(tmp_path / "wds"), "format": "webdataset"}})
    parts = reader_for(recipe.input).plan(recipe.input)
    with pytest.raises(RecipeError, match="no records"):
        check_input(recipe, parts)
    # the same tar read as JSON Lines (the recipe's default format) is one line, not an invalid_json row
    rc, err = vlcurate_run(tmp_path, f"input: {{path: {tmp_path / 'wds' / 'b.tar'}}}\n")
    assert rc == 2 and err == ["vlcurate: input.path: b.tar is a tar archive, not JSON Lines as format "
                               "'jsonl' reads; for webdataset tars set input.format: webdataset"], err
    check_input(recipe, parts, allow_empty=True)
    with tarfile.open(tmp_path / "wds" / "b.tar", "w") as tar:
        info = tarfile.TarInfo("k0.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    check_input(recipe, parts)


@pytest.mark.parametrize("content", [
    b'[\n  {"question": "q1", "answer": "a1"},\n  {"question": "q2", "answer": "a2"}\n]\n',
    b'\xef\xbb\xbf  [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]',
])
def test_json_array_given_as_json_lines_is_one_line(tmp_path, content):
    (tmp_path / "qa.json").write_bytes(content)
    rc, err = vlcurate_run(tmp_path, f"input: {{path: {tmp_path / 'qa.json'}, format: qa_jsonl}}\n")
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("vlcurate: input.path: qa.json is a JSON array, not JSON Lines (one object per line) as "
                      "format 'qa_jsonl' reads; convert it, e.g. jq -c '.[]' qa.json > qa.jsonl")


def test_captionless_videos_given_to_a_builder_are_one_line(tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "videos").mkdir()
    shutil.copy(SINTEL, tmp_path / "videos" / "a.mp4")
    recipe = f"input: {{path: {tmp_path / 'videos'}, format: video}}\nformat: {{builder: video}}\n"
    rc, err = vlcurate_run(tmp_path, recipe)
    assert rc == 2 and len(err) == 1, err
    assert "no builder takes captionless video" in err[0]
    assert "a jsonl with `video` + `caption` (or `question` + `answer`) per line" in err[0]
    # the same videos without a format section are fine (checked and planned), and a jsonl with captions too
    check_input(parse_recipe({"input": {"path": str(tmp_path / "videos"), "format": "video"}}),
                [Partition("p0", "v", ".", 0, 1)])
    check_input(parse_recipe({"input": {"path": str(REPO / "tests/data/video/captions.jsonl"), "format": "video"},
                              "format": {"builder": "video"}}), [Partition("p0", "v", ".", 0, 1)])


@pytest.mark.slow
def test_job_keeps_escaping_images_and_huge_captions_out_of_the_shards(ray_local, escaping_dataset, tmp_path):
    from pipeline.runner import run_job

    with (escaping_dataset / "d.jsonl").open("a") as f:
        f.write(json.dumps({"image": "imgs/ok.png", "caption": "big " * 20_000}) + "\n")
    raw = {"input": {"path": str(escaping_dataset / "d.jsonl"), "partition_rows": 3},
           "stages": {"image_check": {"min_side_px": 16}}}
    out = tmp_path / "out"
    run_job(parse_recipe(raw), str(out), log=lambda m: None)
    kept = pq.read_table(out / "manifest.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted(int(r["source"].split(":")[1]) for r in kept) == [1, 2, 3, 4]
    assert sorted((r["source"], r["drop_stage"], r["drop_reason"]) for r in rejects) == sorted([
        *[(f"d.jsonl:{n}", "read", "path_outside_root") for n in range(5, 10)],
        ("d.jsonl:10", "read", "caption_too_long")])
    shards = b"".join(p.read_bytes() for p in out.rglob("*.tar"))
    assert b"root:" not in shards and b"big big big big" not in shards
    assert shards.count(CAMERA.read_bytes()) == 4
