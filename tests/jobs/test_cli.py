"""The command line: fast --help, one-line recipe errors, inspect on a finished job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.recipe import load_recipe
from pipeline.runner import run_job

REPO = Path(__file__).resolve().parents[2]


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom jobs.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['inspect', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('ray', 'torch', 'pyarrow', 'transformers', 'open_clip', 'PIL') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "usage: vlcurate run" in out and "usage: vlcurate inspect" in out
    assert out.strip().endswith("HEAVY []")


@pytest.mark.parametrize(
    "recipe,message",
    [
        ("input: {path: jobs/demo_data/captions.jsonl}\nstages: {image_check: {min_side_px: many}}\n",
         "stages.image_check.min_side_px"),
        ("input: {path: jobs/demo_data/captions.jsonl}\nstages: {image_chek: {}}\n", "stages.image_chek.use"),
        ("input: {path: does/not/exist.jsonl}\n", "input.path: not found"),
    ],
)
def test_bad_recipe_is_one_line_exit_2(tmp_path, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    proc = subprocess.run([sys.executable, "-m", "jobs.run", str(path), "-o", str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_relative_output_on_a_cluster_is_an_error(monkeypatch):
    from pipeline.ray_env import RayEnvError, check_output_location

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(RayEnvError, match="relative output path"):
        check_output_location("relative/out")
    check_output_location("/abs/out")


@pytest.fixture(scope="module")
def demo_job(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    recipe = load_recipe(str(REPO / "jobs/recipes/demo.yaml"),
                         [f"input.path={REPO / 'jobs/demo_data/captions.jsonl'}"])
    run_job(recipe, str(out), log=lambda m: None)
    return out


@pytest.mark.slow
def test_inspect(demo_job, capsys):
    assert main(["inspect", str(demo_job), "--json"]) == 0
    kept = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(kept) == 4 and all(k["status"] == "kept" and k["image_sizes"] for k in kept)
    assert main(["inspect", str(demo_job), "--rejected", "--json"]) == 0
    rejected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["drop_reason"] for r in rejected} == {"empty_caption", "decode_error", "empty_file", "invalid_json",
                                                   "missing_file", "truncated"}
    assert main(["inspect", str(demo_job), "--reason", "truncated", "--json"]) == 0
    [trunc] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert trunc["drop_stage"] == "image_check" and "truncated" in trunc["detail"]
    assert main(["inspect", str(demo_job), "--id", kept[0]["id"]]) == 0
    text = capsys.readouterr().out
    assert kept[0]["id"] in text and "images:" in text
    assert main(["inspect", str(demo_job), "--reason", "no_such_reason"]) == 1
    assert "present:" in capsys.readouterr().err


@pytest.mark.slow
def test_report(demo_job, capsys):
    assert main(["report", str(demo_job)]) == 0
    page = (demo_job / "report.html").read_text()
    for stage in ("read", "image_check", "caption_check"):
        assert f"<td>{stage}</td>" in page
    assert "truncated" in page and "<b>width</b>" in page and "<svg" in page
    assert main(["report", str(demo_job / "nope")]) == 2


@pytest.mark.slow
def test_rerun_resumes_other_recipe_refused_overwrite_replaces(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    recipe = str(REPO / "jobs/recipes/demo.yaml")
    data = f"--input={REPO / 'jobs/demo_data/captions.jsonl'}"
    assert main(["run", recipe, "-o", str(out), data]) == 0
    manifest = (out / "manifest.parquet").read_bytes()
    assert main(["run", recipe, "-o", str(out), data]) == 0  # same finished job: nothing redone, same files
    assert "nothing to do" in capsys.readouterr().out and (out / "manifest.parquet").read_bytes() == manifest
    other = ["--set", "stages.image_check.min_side_px=400"]
    assert main(["run", recipe, "-o", str(out), data, *other]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["run", recipe, "-o", str(out), data, *other, "--overwrite"]) == 0
    assert json.loads((out / "stats.json").read_text())["kept"] < 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["run", recipe, "-o", str(tmp_path / "mine"), data, "--overwrite"]) == 2
    assert (tmp_path / "mine" / "notes.txt").exists()


@pytest.mark.slow
def test_recipe_problem_seen_in_a_worker_is_one_line(ray_local, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"input: {{path: {REPO / 'tests/data/grounding_coco/instances.json'}, format: coco, "
                      "options: {image_dir: 5}}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vlcurate:")]
    assert err == ["vlcurate: input.options.image_dir: must be a path (got 5)"]
