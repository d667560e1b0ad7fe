"""`vlcurate mix` / `python -m jobs.mix` from the command line: a bad key is one line and exit 2; a good mix
prints asked vs achieved shares and a shortfall warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jobs.cli import main
from tests.pipeline.test_mix import make_job

ROOT = Path(__file__).parents[2]


def test_bad_key_is_one_line_exit_2(tmp_path):
    mix = tmp_path / "m.yaml"
    mix.write_text("sources:\n  a: {path: x, weight: 1, cap: -3}\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.mix", str(mix), "-o", str(tmp_path / "o")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("vlcurate: sources.a.cap: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_mix_prints_shares_and_warning(tmp_path, capsys):
    a, b = make_job(tmp_path / "a", 300, seed=1), make_job(tmp_path / "b", 100, seed=2)
    mix = tmp_path / "m.yaml"
    mix.write_text(f"by: samples\ntotal: 400\nsources:\n  a: {{path: {a}, weight: 1}}\n  b: {{path: {b}, weight: 1}}\n")
    assert main(["mix", str(mix), "-o", str(tmp_path / "o"), "--set", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "warning: source b: asked 200 samples" in out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("a "))
    assert row[1:4] == ["50.00%", "66.67%", "200"]  # asked, achieved, samples
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["seed"] == 3 and stats["sources"]["b"]["samples"] == 100
    report = (tmp_path / "o" / "report.html").read_text()  # written at the end, as a job's is
    assert f"report: {tmp_path / 'o' / 'report.html'}" in out and "Sources" in report
    # a mix folder is rebuilt by the next mix; a folder that is not empty and not a job is refused
    assert main(["mix", str(mix), "-o", str(tmp_path / "o"), "--set", "total=200"]) == 0
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["samples"] == 200
    assert main(["mix", str(mix), "-o", str(tmp_path / "a")]) == 2


def test_jobs_run_detects_a_mix_by_its_keys(tmp_path):
    """`python -m jobs.run MIX.yaml -o OUT` (the `ray job submit` entry point) builds the mix as `vlcurate mix`
    does; a recipe still goes to `run`."""
    from jobs.run import command

    a, b = make_job(tmp_path / "a", 60, seed=1), make_job(tmp_path / "b", 40, seed=2)
    mix = tmp_path / "m.yaml"
    mix.write_text(f"by: samples\nsources:\n  a: {{path: {a}, weight: 1}}\n  b: {{path: {b}, weight: 1}}\n")
    assert command([str(mix), "-o", "x"])[0] == "mix"
    assert command([str(ROOT / "jobs/recipes/demo.yaml"), "-o", "x"])[0] == "run"
    assert command(["-o", "x", str(ROOT / "jobs/recipes/stage2_multitask.yaml")])[0] == "mix"
    proc = subprocess.run([sys.executable, "-m", "jobs.run", str(mix), "-o", str(tmp_path / "o"), "--set", "seed=4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vlcurate: mix done" in proc.stdout
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["seed"] == 4 and stats["samples"] == 80  # b (40) binds: 40 + 40
