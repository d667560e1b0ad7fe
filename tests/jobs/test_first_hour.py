"""What a new user hits in the first hour (issue 8): the output folder is theirs, regen-sft reruns the same
pipeline, a loaded machine still starts Ray, Ctrl-C is one line, normal output is vlcurate's own, `_work/`
shrinks after success."""

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
from model.clip import build_tiny_clip
from model.tiny import build_tiny_qwen25vl, build_tiny_tokenizer
from pipeline.mix import is_mix_file
from pipeline.recipe import load_recipe
from pipeline.runner import run_job

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "jobs/recipes/demo.yaml")
DEMO_INPUT = f"input.path={REPO / 'jobs/demo_data/captions.jsonl'}"


def bare_env() -> dict[str, str]:
    """What a new user's shell has: no HF_HUB_OFFLINE, no RAY_AUTH_MODE, nothing of ours."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}


def no_ray(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("Ray was started before the output folder was checked")

    monkeypatch.setattr("pipeline.ray_env.start_ray", refuse)


# ---- 1. the output folder belongs to the user unless it holds a job ------------------------------------


def test_a_non_empty_folder_that_is_not_a_job_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    no_ray(monkeypatch)
    for extra in ([], ["--overwrite"]):
        assert main(["run", DEMO, "-o", str(out), "--set", DEMO_INPUT, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not empty and holds no vlcurate job" in err[0]
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]  # nothing written, nothing deleted


@pytest.mark.slow
def test_overwrite_deletes_only_what_a_job_wrote(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", DEMO, "-o", str(out), "--set", DEMO_INPUT]) == 0
    (out / "my_notes.txt").write_text("keep me")
    (out / "shards" / "stray.txt").write_text("inside a job entry: goes with it")
    assert main(["run", DEMO, "-o", str(out), "--set", DEMO_INPUT, "--overwrite"]) == 0
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert not (out / "shards" / "stray.txt").exists()
    assert json.loads((out / "stats.json").read_text())["kept"] == 4
    # another recipe into the same folder: refused, one line
    capsys.readouterr()
    assert main(["run", DEMO, "-o", str(out), "--set", DEMO_INPUT, "--set", "stages.caption_check.min_chars=9"]) == 2
    assert "another recipe or input" in capsys.readouterr().err


# ---- 2. regen-sft runs the recipe's stages in the recipe's order ----------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    arch, ckpt = build_tiny_clip(base / "clip.pt")
    return {"tokenizer": build_tiny_tokenizer(base / "tok"), "arch": arch, "clip": str(ckpt),
            "qwen": build_tiny_qwen25vl(base / "qwen")}


# Every job recipe. The training-stage mixes beside them compose other recipes' finished outputs (out/...), so
# they have no job to regenerate: tests/pipeline/test_mix.py::test_stage_recipes_build_from_their_sources
# builds each of them (the test below keeps the two lists in step).
RECIPES = [name for name in sorted(p.name for p in (REPO / "jobs/recipes").glob("*.yaml"))
           if not is_mix_file(str(REPO / "jobs/recipes" / name))]


def test_every_recipe_is_a_job_here_or_a_mix_built_by_the_mix_tests():
    mixes = {p.stem for p in (REPO / "jobs/recipes").glob("*.yaml") if is_mix_file(str(p))}
    assert mixes == {"stage1_pairs", "stage2_multitask", "stage4_sft"}  # test_mix.py's parametrization
    assert len(RECIPES) + len(mixes) == len(list((REPO / "jobs/recipes").glob("*.yaml"))) > len(mixes)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_regen_with_no_change_gives_the_same_manifest(ray_local, tmp_path, monkeypatch, models, name):
    monkeypatch.chdir(REPO)  # recipe paths are relative to where the command runs
    raw = yaml.safe_load((REPO / "jobs/recipes" / name).read_text())
    sets = []
    if raw.get("format"):
        sets.append(f"format.tokenizer={models['tokenizer']}")
    for key, params in (raw.get("stages") or {}).items():  # the model files a recipe leaves for the user to set
        if "checkpoint" in params:
            sets += [f"stages.{key}.checkpoint={models['clip']}", f"stages.{key}.arch={models['arch']}"]
        if "model" in params and params["model"] is None:
            sets.append(f"stages.{key}.model={models['qwen']}")
        if "max_new_tokens" in params:  # a tiny random model on CPU: a few short candidates suffice
            sets += [f"stages.{key}.max_new_tokens=8", f"stages.{key}.n=2"]
        if "min_mass" in params:  # the tiny model puts almost no mass on yes / no
            sets.append(f"stages.{key}.min_mass=0")
    recipe = load_recipe(str(REPO / "jobs/recipes" / name), sets)
    first, second = tmp_path / "first", tmp_path / "second"
    run_job(recipe, str(first), log=lambda m: None)
    job = json.loads((first / "job.json").read_text())
    assert list(job["recipe"]["stages"]) == [s.key for s in recipe.stages if s.section is None]
    assert main(["regen-sft", str(first), "-o", str(second)]) == 0
    for table in ("manifest.parquet", "rejects.parquet"):
        a, b = (pq.read_table(d / table).to_pylist() for d in (first, second))
        assert [r["id"] for r in a] == [r["id"] for r in b]
        diffs = [(x["id"], k, x[k], y.get(k)) for x, y in zip(a, b, strict=True) for k in x if x[k] != y.get(k)]
        assert not diffs, (name, table, diffs[:5])
    # tiny random models keep nothing in the model recipes (relevance, rejection sampling): rejects count too
    assert sum(pq.read_table(first / t).num_rows for t in ("manifest.parquet", "rejects.parquet")) > 0


# ---- 11. after success `_work/` keeps ids and scores, not image bytes -----------------------------------


@pytest.mark.slow
def test_work_is_stripped_after_success_and_a_rerun_does_nothing(ray_local, tmp_path, capsys):
    out, kept = tmp_path / "out", tmp_path / "kept"
    assert main(["run", DEMO, "-o", str(out), "--set", DEMO_INPUT]) == 0
    assert main(["run", DEMO, "-o", str(kept), "--set", DEMO_INPUT, "--keep-work"]) == 0
    stats = json.loads((out / "stats.json").read_text())["work"]
    assert stats["cleaned"] and not json.loads((kept / "stats.json").read_text())["work"]["cleaned"]
    # bytes: the media the read step loaded (each record's image file, the missing one aside) against what
    # the job wrote: the shards (the kept images) plus _work before its clean-up
    written = json.loads((out / "stats.json").read_text())["bytes"]
    demo = REPO / "jobs" / "demo_data"
    files = []
    for line in (demo / "captions.jsonl").read_text().splitlines():
        try:
            files.append(demo / json.loads(line)["image"])
        except ValueError:  # the line that is not valid JSON is a reject of the read step, loaded nothing
            continue
    assert written["media_read"] == sum(f.stat().st_size for f in files if f.is_file())
    shards = sum(p.stat().st_size for p in (out / "shards").iterdir())
    assert written["written"] >= shards + stats["bytes_at_end_of_job"]
    assert written["written_over_media_read"] == round(written["written"] / written["media_read"], 3)
    assert written["written"] < 1.3 * written["media_read"]  # each kept image once, in its shard (issue 16)
    for job in (out, kept):  # no image bytes in _work, with or without --keep-work (thumbnails aside)
        for f in (job / "_work").rglob("*.parquet"):
            table = pq.read_table(f)
            assert "id" in table.column_names
            assert "images" not in table.column_names or not any(table["images"].to_pylist()), f
    shards = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    capsys.readouterr()
    assert main(["run", DEMO, "-o", str(out), "--set", DEMO_INPUT]) == 0  # the same command again
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == shards


# ---- 7, 9, 10. a loaded machine, a bare environment, and only vlcurate's own lines ----------------------


@pytest.mark.slow
def test_a_loaded_machine_starts_ray_and_prints_only_our_lines(tmp_path, models):
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:  # the web-pairs recipe: map and global stages, and a model stage on an actor pool
        proc = subprocess.run([sys.executable, "-m", "jobs.run", "jobs/recipes/web_pairs.yaml", "-o", str(tmp_path / "o"),
                               "--executor", "ray", "--set", f"stages.clip_score.checkpoint={models['clip']}",
                               "--set", f"stages.clip_score.arch={models['arch']}"],
                              cwd=REPO, env=bare_env(), capture_output=True, text=True, timeout=600)
    finally:
        for b in burners:
            b.kill()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    foreign = [ln for ln in lines if not (ln.startswith(("[vlcurate]", "vlcurate:")) or ln.startswith(" "))]
    assert not foreign, foreign  # no Ray deprecation warnings, no core-worker errors
    assert "records in: 11" in proc.stdout


# ---- 8. Ctrl-C is one line ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(f"input: {{path: {REPO / 'jobs/demo_data/captions.jsonl'}, partition_rows: 4}}\n"
                      "stages:\n  image_check: {}\n  nap: {use: 'tests.pipeline.custom_stages:Nap', seconds: 60}\n")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.run", str(recipe), "-o", str(tmp_path / "o")], cwd=REPO,
                            env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until the job runs its steps
        if line.startswith("[vlcurate] step") or time.time() > deadline:
            break
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and "interrupted; rerun the same command to resume" in lines[-1]
    assert "Traceback" not in err and len(lines) <= 3, err[-2000:]
