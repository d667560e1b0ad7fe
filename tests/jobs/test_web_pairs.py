"""The web pairs recipe (jobs/recipes/web_pairs.yaml) end to end on local Ray: near-duplicate groups collapse
whatever the partitioning or line order, the CLIP stage keeps its top fraction, the recipe runs out of the
box with CLIP off, and stops with one line when no checkpoint is named."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageDraw

from pipeline.recipe import load_recipe, parse_recipe
from pipeline.runner import run_job
from tests.media import DEMO_IMAGES, REPO, near_copies

pytestmark = pytest.mark.slow

RECIPE = REPO / "jobs" / "recipes" / "web_pairs.yaml"
DEV_PAIRS = REPO.parent / "shared" / "data" / "dev" / "pairs"
CLIP_OFF = "stages.clip_score.enabled=false"
VARIANTS = ("original", "byte_copy", "resized_50", "jpeg_q40", "crop_2pct", "brighter_10pct")


def photos() -> dict[str, bytes]:
    """The demo photos, plus the other dev photos (astronaut, coffee, Hubble) where ../shared is present."""
    files = {p.name: p for p in sorted(DEMO_IMAGES.iterdir())}
    if DEV_PAIRS.is_dir():
        files.update({p.name: p for p in sorted(DEV_PAIRS.iterdir()) if p.suffix in (".png", ".jpg")})
    return {name: path.read_bytes() for name, path in sorted(files.items())}


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def unrelated(seed: int, w: int = 320, h: int = 240) -> bytes:
    """A random colour field with ellipses: 20+ pHash bits from each other and from the photos."""
    rng = np.random.default_rng(1000 + seed)
    field = rng.uniform(0, 255, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3)).astype(np.uint8)
    im = Image.fromarray(field, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x, y, x + int(rng.integers(20, w // 2)), y + int(rng.integers(20, h // 2)))
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    arr = np.asarray(im, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), quality=85)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """img/ with every photo's variants and 12 unrelated images; returns (folder, image file -> group)."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "img").mkdir()
    group_of: dict[str, str] = {}
    for name, data in photos().items():
        stem = Path(name).stem
        for kind, blob in near_copies(data).items():
            ext = Path(name).suffix if kind in ("original", "byte_copy") else ".jpg"
            file = f"{stem}.{kind}{ext}"
            (root / "img" / file).write_bytes(blob)
            group_of[file] = stem
    for seed in range(12):
        file = f"unrelated_{seed:02d}.jpg"
        (root / "img" / file).write_bytes(unrelated(seed))
        group_of[file] = file
    return root, group_of


def write_jsonl(root: Path, files: list[str], folder: str) -> Path:
    """``root/folder/data.jsonl`` naming the images by absolute path: the same file name in every folder, so
    the same lines get the same ids."""
    caption = "a photo of {}".format
    lines = [
        json.dumps({"image": str(root / "img" / f), "caption": caption(f.split(".")[0].replace("_", " "))})
        for f in files
    ]
    path = root / folder / "data.jsonl"  # the images lie outside its folder: input.allow_outside_root below
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


def web_pairs(sets: list[str], input_path: Path) -> dict:
    """The recipe file as a raw dict with --set overrides applied (what `vlcurate run` parses)."""
    return load_recipe(str(RECIPE), ["input.allow_outside_root=true", *sets], str(input_path)).raw


def run(raw: dict, out: Path):
    return run_job(parse_recipe(raw), str(out), log=lambda m: None)


def image_of(source: str, jsonl: Path) -> str:
    """The image file named on the source's line (`data.jsonl:N`)."""
    line = int(source.split(":")[1].split("#")[0])
    return Path(json.loads(jsonl.read_text().splitlines()[line - 1])["image"]).name


def check_groups(out: Path, jsonl: Path, group_of: dict[str, str], root: Path) -> dict[str, str]:
    """Each group kept exactly once, as one of its largest images; every other member a duplicate of it."""
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    kept = {image_of(r["source"], jsonl): r for r in manifest}
    by_group: dict[str, list[str]] = {}
    for file in group_of:
        by_group.setdefault(group_of[file], []).append(file)
    assert sorted(group_of[f] for f in kept) == sorted(by_group), "one kept row per group, every group kept"
    kept_of_group = {group_of[f]: f for f in kept}
    for group, members in by_group.items():
        sizes = {m: Image.open(root / "img" / m).size for m in members}
        largest = max(w * h for w, h in sizes.values())
        keep = kept_of_group[group]
        assert sizes[keep][0] * sizes[keep][1] == largest, (group, keep)
    id_of_kept = {f: r["id"] for f, r in kept.items()}
    assert len(rejects) == len(group_of) - len(kept)
    for r in rejects:
        file = image_of(r["source"], jsonl)
        assert r["drop_stage"] == "dedup" and r["drop_reason"] in ("exact_duplicate", "near_duplicate"), r
        assert r["duplicate_of"] == id_of_kept[kept_of_group[group_of[file]]]
        same_bytes = (root / "img" / file).read_bytes() == (
            root / "img" / kept_of_group[group_of[file]]
        ).read_bytes()
        assert (r["drop_reason"] == "exact_duplicate") == same_bytes, r
    return kept_of_group


@pytest.fixture(scope="module")
def dedup_runs(ray_local, pairs, tmp_path_factory):
    """The recipe (CLIP off) three times: one partition; 3 rows a partition; lines shuffled, 7 a partition."""
    root, group_of = pairs
    files = sorted(group_of)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    runs = {}
    for label, order, partition_rows in (("one", files, 1000), ("many", files, 3), ("shuffled", shuffled, 7)):
        jsonl = write_jsonl(root, order, label)
        raw = web_pairs([CLIP_OFF, f"input.partition_rows={partition_rows}"], jsonl)
        out = tmp_path_factory.mktemp(label) / "out"
        runs[label] = (out, jsonl, run(raw, out))
    return runs


def test_near_duplicate_groups_collapse_and_distinct_photos_are_kept(dedup_runs, pairs):
    root, group_of = pairs
    out, jsonl, result = dedup_runs["one"]
    n_photos = len(photos())
    assert n_photos >= 5 and len(group_of) == 6 * n_photos + 12
    kept = check_groups(out, jsonl, group_of, root)
    assert len(kept) == n_photos + 12
    dedup = result.stats["stages"]["dedup"]
    assert dedup["in"] == len(group_of) and dedup["kept"] == n_photos + 12
    assert set(dedup["dropped"]) <= {"exact_duplicate", "near_duplicate"}
    assert sum(dedup["dropped"].values()) == 5 * n_photos
    assert result.stats["stages"]["image_check"]["kept"] == len(group_of)  # nothing lost before dedup


def test_same_result_across_partitionings(dedup_runs):
    one, _, _ = dedup_runs["one"]
    many, _, result = dedup_runs["many"]
    n_rows = len(dedup_runs["many"][1].read_text().splitlines())
    assert result.stats["partitions"] == -(-n_rows // 3)
    assert pq.read_table(one / "rejects.parquet").equals(pq.read_table(many / "rejects.parquet"))
    # the shards follow the partitions (one shard per partition); the samples and their rows do not
    m1, m2 = (pq.read_table(d / "manifest.parquet") for d in (one, many))
    assert m1.drop_columns(["shard"]).equals(m2.drop_columns(["shard"]))
    assert len(set(m2["shard"].to_pylist())) > len(set(m1["shard"].to_pylist()))


def test_same_groups_when_lines_are_shuffled(dedup_runs, pairs):
    """Shuffled lines get other ids, so a tie (same size: original, byte copy, q40, brighter) may go to another
    member; which groups are kept, at which size, and the unrelated images kept do not change."""
    root, group_of = pairs
    out1, jsonl1, r1 = dedup_runs["one"]
    out2, jsonl2, r2 = dedup_runs["shuffled"]
    kept1 = check_groups(out1, jsonl1, group_of, root)
    kept2 = check_groups(out2, jsonl2, group_of, root)
    assert sorted(kept1) == sorted(kept2)
    for group in kept1:
        assert Image.open(root / "img" / kept1[group]).size == Image.open(root / "img" / kept2[group]).size
    singles = [g for g in kept1 if g.startswith("unrelated_")]
    assert all(kept1[g] == kept2[g] for g in singles)
    assert r1.stats["kept"] == r2.stats["kept"] and r1.stats["rejected"] == r2.stats["rejected"]


def test_clip_stage_end_to_end_keeps_top_fraction(ray_local, pairs, tmp_path):
    from model.clip import build_tiny_clip

    root, group_of = pairs
    arch, checkpoint = build_tiny_clip(tmp_path / "tiny-clip.pt")
    jsonl = write_jsonl(root, sorted(group_of), "clip")
    raw = web_pairs([f"stages.clip_score.arch={arch}", f"stages.clip_score.checkpoint={checkpoint}"], jsonl)
    assert raw["stages"]["clip_score"]["keep_top_fraction"] == 0.3
    out = tmp_path / "out"
    result = run(raw, out)
    clip = result.stats["stages"]["clip_score"]
    scored = clip["in"]
    assert scored == result.stats["stages"]["dedup"]["kept"] > 10
    assert abs(clip["kept"] - 0.3 * scored) <= 1
    assert clip["dropped"] == {"clip_score_low": scored - clip["kept"]}
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(manifest) == clip["kept"]
    assert all(-1.0 <= r["clip_score"] <= 1.0 for r in manifest)
    low = [r["clip_score"] for r in rejects if r["drop_reason"] == "clip_score_low"]
    assert len(low) == scored - clip["kept"] and max(low) <= min(r["clip_score"] for r in manifest)


def test_recipe_runs_out_of_the_box_with_clip_off(ray_local, tmp_path):
    raw = yaml.safe_load(RECIPE.read_text())
    bundled = REPO / raw["input"]["path"]
    assert bundled.is_file()  # relative to the repository root, where `vlcurate run` is started
    out = tmp_path / "out"
    result = run(web_pairs([CLIP_OFF], bundled), out)
    assert "clip_score" not in result.stats["stages"]
    rejects = {r["source"]: r["drop_reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert sorted(rejects.values()) == sorted(
        [
            "empty_caption",
            "empty_caption",
            "truncated",
            "empty_file",
            "decode_error",
            "missing_file",
            "invalid_json",
        ]
    )
    kept = {r["source"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    # horse.png is listed twice, the second time with a blank caption: the caption filter drops that copy
    # before dedup, so the horse with its caption is kept
    assert kept == {"captions.jsonl:1", "captions.jsonl:2", "captions.jsonl:3", "captions.jsonl:4"}


@pytest.mark.parametrize("problem", ["no checkpoint", "another architecture's checkpoint"])
def test_clip_checkpoint_problem_stops_before_the_job_with_one_line(tmp_path, problem):
    """No checkpoint, or one that does not fit the architecture (it printed 295 lines of Ray traceback after
    the earlier steps had run): one line, exit 2, before anything runs."""
    from model.clip import build_tiny_clip

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sets, expected = [], "stages.clip_score.checkpoint: "
    if problem != "no checkpoint":
        _, checkpoint = build_tiny_clip(tmp_path / "tiny-clip.pt")  # tiny weights under ViT-B-32
        sets = ["--set", "stages.clip_score.arch=ViT-B-32", "--set", f"stages.clip_score.checkpoint={checkpoint}"]
        expected = "stages.clip_score.arch: checkpoint 'tiny-clip.pt' does not fit architecture 'ViT-B-32': "
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.run", str(RECIPE.relative_to(REPO)), "-o", str(out), *sets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"vlcurate: {expected}"), lines[0]
    assert not out.exists()  # nothing ran


def test_captions_of_exact_copies_meet_on_the_kept_row_and_clip_picks_one(ray_local, tmp_path):
    """Three byte copies of one photo with three captions (one boilerplate), in different partitions: the
    caption filter drops the boilerplate row, dedup keeps one copy with both remaining captions, CLIP scores
    both against the image and makes the best one the text, in the manifest and the shards."""
    import tarfile

    from model.clip import build_tiny_clip

    arch, checkpoint = build_tiny_clip(tmp_path / "tiny-clip.pt")
    rocket = str(DEMO_IMAGES / "rocket.jpg")
    lines = [
        {"image": rocket, "caption": "a tabby cat asleep on a sofa"},
        {"image": str(DEMO_IMAGES / "coins.png"), "caption": "Greek coins from Pompeii"},
        {"image": rocket, "caption": "a rocket standing on a launchpad"},
        {"image": rocket, "caption": "IMG_1234.jpg"},
        {"image": str(DEMO_IMAGES / "horse.png"), "caption": "a black-and-white silhouette of a horse"},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    raw = web_pairs([f"stages.clip_score.arch={arch}", f"stages.clip_score.checkpoint={checkpoint}",
                     "stages.clip_score.keep_top_fraction=1.0", "input.partition_rows=2"], data)
    out = tmp_path / "out"
    result = run(raw, out)
    assert result.stats["stages"]["dedup"]["dropped"] == {"exact_duplicate": 1}
    rejects = {r["source"]: r["drop_reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects == {"data.jsonl:4": "boilerplate_caption", "data.jsonl:3": "exact_duplicate"} or \
        rejects == {"data.jsonl:4": "boilerplate_caption", "data.jsonl:1": "exact_duplicate"}
    manifest = {r["source"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert len(manifest) == 3
    kept = next(r for r in manifest.values() if r["captions"])
    assert sorted(kept["captions"]) == ["a rocket standing on a launchpad", "a tabby cat asleep on a sofa"]
    assert len(kept["clip_scores"]) == 2 and kept["clip_score"] == max(kept["clip_scores"])
    assert kept["text"] == kept["captions"][kept["clip_scores"].index(kept["clip_score"])]
    others = [r for r in manifest.values() if r is not kept]
    assert all(r["captions"] is None and r["clip_scores"] is None and r["clip_score"] is not None for r in others)
    with tarfile.open(out / "shards" / kept["shard"]) as tar:
        sample = json.load(tar.extractfile(f"{kept['id']}.json"))
    assert sample["text"] == kept["text"] and sample["scores"]["captions"] == kept["captions"]
    # regen-sft takes every caption's stored score (the other partitions have no clip_scores column) and
    # picks the same caption without the model
    raw["stages"]["clip_score"]["keep_top_fraction"] = 0.99
    regen = run_job(parse_recipe(raw), str(tmp_path / "regen"), log=lambda m: None, reuse_from=str(out))
    assert regen.stats["stages"]["clip_score"]["scores_reused"] == 3
    again = {r["source"]: r for r in pq.read_table(tmp_path / "regen" / "manifest.parquet").to_pylist()}
    assert again == {k: {**r, "shard": again[k]["shard"]} for k, r in manifest.items()}
