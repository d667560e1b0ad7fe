"""jobs/recipes/relevance.yaml end to end on local Ray: the tiny Qwen2.5-VL (conservation, scores for every
scored row, identical output across partitionings, regen-sft without the model), the scripted backend of
tests/filters/test_relevance.py (true pairs kept, mismatched ones dropped, the true caption of a multi-caption
row chosen) and a killed job that resumes without rescoring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jobs.cli import main
from model.tiny import build_tiny_qwen25vl
from pipeline.recipe import parse_recipe
from pipeline.runner import plan_steps, run_job
from tests.filters.test_relevance import LABELLED, true_caption
from tests.media import DEMO_IMAGES, samples_in

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "jobs" / "recipes" / "relevance.yaml"
SCRIPTED = "tests.filters.test_relevance:Scripted"


def recipe(input_path: Path, **relevance) -> dict:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["input"]["path"] = str(input_path)
    raw["stages"]["relevance"].update({"max_pixels": 50176, "batch_size": 4, **relevance})
    return raw


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist() + pq.read_table(out / "rejects.parquet").to_pylist()


def pairs_jsonl(root: Path) -> Path:
    """The five photos with their true caption, then with their mismatched one (10 lines: dedup merges each
    photo's two lines into one row with both captions)."""
    lines = [{"image": str(DEMO_IMAGES / r["image"]), "caption": true_caption(r)} for r in LABELLED]
    lines += [{"image": str(DEMO_IMAGES / r["image"]), "caption": r["mismatched_caption"]} for r in LABELLED]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return Path(build_tiny_qwen25vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen"))


def test_tiny_model_job_partitionings_and_regen_without_the_model(ray_local, tiny_model, tmp_path, capsys):
    data = pairs_jsonl(tmp_path)
    outs = {}
    for n in (1, 3, 100):
        raw = recipe(data, model=str(tiny_model), min_mass=0.0)
        raw["input"].update({"partition_rows": n, "allow_outside_root": True})
        outs[n] = tmp_path / f"out{n}"
        run_job(parse_recipe(raw), str(outs[n]), log=lambda m: None)
    got = rows(outs[1])
    assert len(got) == 10 and len({r["id"] for r in got}) == 10  # conservation
    scored = [r for r in got if r.get("drop_stage") in (None, "relevance")]
    assert len(scored) == 5 and {r["drop_reason"] for r in got if r.get("drop_stage") == "dedup"} == {"exact_duplicate"}
    for r in scored:
        assert 0.0 <= r["relevance_p_yes"] <= 1.0 and r["relevance_mass"] is not None
        assert len(r["relevance_scores"]) == 2 and r["text"] in r["captions"]
    assert sum(r.get("drop_reason") == "relevance_low" for r in scored) == 2  # top 0.5 of 5: 3 kept
    for n in (3, 100):  # same scores, decisions and samples whatever the partitioning (shards: one a partition)
        assert (outs[n] / "rejects.parquet").read_bytes() == (outs[1] / "rejects.parquet").read_bytes(), n
        m_n, m_1 = (pq.read_table(outs[k] / "manifest.parquet").drop_columns(["shard"]) for k in (n, 1))
        assert m_n.equals(m_1), n
        assert samples_in(sorted((outs[n] / "shards").glob("*.tar"))) == samples_in(
            sorted((outs[1] / "shards").glob("*.tar")))

    # regen-sft on this recipe (stages image_check, caption_text, dedup, relevance: not alphabetical) with the
    # model moved away: the scores are reused, the cut is taken again
    tiny_model.rename(tiny_model.with_name("moved"))
    try:
        regen = tmp_path / "regen"
        assert main(["regen-sft", str(outs[1]), "-o", str(regen), "--set",
                     "stages.relevance.keep_top_fraction=0.2"]) == 0
        assert "relevance: reusing scores" in capsys.readouterr().out
    finally:
        tiny_model.with_name("moved").rename(tiny_model)
    stats = json.loads((regen / "stats.json").read_text())
    assert stats["stages"]["relevance"]["scores_reused"] == 5
    again = {r["id"]: r for r in rows(regen)}
    for r in scored:
        assert (again[r["id"]]["relevance_p_yes"], again[r["id"]]["text"]) == (r["relevance_p_yes"], r["text"])
    order = sorted(scored, key=lambda r: (-r["relevance_p_yes"], r["id"]))
    kept = {r["id"] for r in pq.read_table(regen / "manifest.parquet").to_pylist()}
    assert kept == {order[0]["id"]}


def coco_captions(root: Path) -> Path:
    """Each photo once with its true caption, once with its mismatched one, and the cat once more with both
    (mismatched first): 11 rows, every one a `captions` list."""
    images, anns = [], []
    groups = [[true_caption(r)] for r in LABELLED] + [[r["mismatched_caption"]] for r in LABELLED]
    cat = next(r for r in LABELLED if r["image"] == "chelsea.png")
    groups.append([cat["mismatched_caption"], true_caption(cat)])
    names = [r["image"] for r in LABELLED] * 2 + ["chelsea.png"]
    for image_id, (name, caps) in enumerate(zip(names, groups, strict=True), 1):
        images.append({"id": image_id, "file_name": name})
        anns += [{"id": len(anns) + 1, "image_id": image_id, "caption": c} for c in caps]
    path = root / "captions_scripted.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def scripted_recipe(root: Path, **relevance) -> dict:
    raw = recipe(coco_captions(root), backend=SCRIPTED, model=None, **relevance)
    raw["input"] = {"path": raw["input"]["path"], "format": "coco_captions", "partition_rows": 2,
                    "options": {"image_dir": str(DEMO_IMAGES)}, "allow_outside_root": True}
    raw["stages"]["dedup"]["enabled"] = False  # every photo is here more than once, on purpose
    raw["stages"]["relevance"].pop("keep_top_fraction")
    raw["stages"]["relevance"]["min_p_yes"] = 0.5
    return raw


def test_scripted_backend_keeps_exactly_the_true_pairs(ray_local, tmp_path):
    out = tmp_path / "out"
    run_job(parse_recipe(scripted_recipe(tmp_path)), str(out), log=lambda m: None)
    kept = pq.read_table(out / "manifest.parquet").to_pylist()
    rejected = pq.read_table(out / "rejects.parquet").to_pylist()
    cat = next(r for r in LABELLED if r["image"] == "chelsea.png")
    assert len(kept) + len(rejected) == 11
    assert sorted(r["text"] for r in kept) == sorted([*(true_caption(r) for r in LABELLED), true_caption(cat)])
    assert sorted(r["text"] for r in rejected) == sorted(r["mismatched_caption"] for r in LABELLED)
    assert {(r["drop_stage"], r["drop_reason"]) for r in rejected} == {("relevance", "relevance_low")}
    multi = next(r for r in kept if len(r["captions"]) == 2)
    assert multi["relevance_scores"] == [0.05, 0.95] and multi["text"] == multi["captions"][1]


def test_killed_job_resumes_without_rescoring(ray_local, tmp_path):
    log = tmp_path / "scored.log"
    raw = scripted_recipe(tmp_path, options={"sleep_s": 1.0, "log": str(log)}, batch_size=2)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    step_name = next(s.name for s in plan_steps(parse_recipe(raw)) if s.holds_model)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.run", str(recipe_path), "-o", str(out), "--num-cpus", "1"],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    step = out / "_work" / step_name
    deadline = time.time() + 300
    while time.time() < deadline and not list(step.glob("*.done")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the killed driver's Ray workers die with their raylet a moment later (fate sharing): until then the
    # actor may still finish the partition it was in and write its log lines; wait until the log is quiet
    quiet_since, size = time.time(), -1
    while time.time() - quiet_since < 3 and time.time() < deadline:
        if log.stat().st_size != size:
            quiet_since, size = time.time(), log.stat().st_size
        time.sleep(0.2)
    done_before = sorted(p.stem for p in step.glob("*.done"))
    assert 1 <= len(done_before) < 6, done_before
    log.write_text("")
    result = run_job(parse_recipe(raw), str(out), log=lambda m: None)
    # six partitions of two prompts each (the last: one row with two captions); the rerun asks only those of
    # the partitions the killed run had not finished (one it was inside of is asked again)
    assert len(log.read_text().splitlines()) == 2 * (6 - len(done_before))
    assert result.skipped_partitions >= 6 + len(done_before)  # the first step and the finished ones
    clean = tmp_path / "clean"
    run_job(parse_recipe(raw), str(clean), log=lambda m: None)
    for name in ("manifest.parquet", "rejects.parquet"):
        assert (clean / name).read_bytes() == (out / name).read_bytes(), name
