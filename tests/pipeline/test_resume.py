"""A job killed after some partitions finished, rerun, gives the files of a clean run without redoing them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.recipe import parse_recipe
from pipeline.runner import run_job
from tests import media

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_killed_job_resumes(ray_local, tmp_path):
    data, _ = media.write_mixed_dataset(tmp_path / "data")
    log = tmp_path / "scored.log"
    raw = {
        "input": {"path": str(data), "format": "jsonl", "partition_rows": 2},
        "stages": {"image_check": {}, "slow": {"use": "tests.pipeline.custom_stages:SlowLog", "log": str(log),
                                                "seconds": 1.5},
                   "caption_check": {}},
    }
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.run", str(recipe_path), "-o", str(out), "--num-cpus", "1"],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    step = out / "_work" / "00-image_check"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(step.glob("*.done"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.stem for p in step.glob("*.done"))
    assert 2 <= len(done_before) < 9, done_before
    assert not (out / "manifest.parquet").exists()
    finished_ids = set()
    for name in done_before:
        finished_ids |= set(pq.read_table(step / f"{name}.parquet", columns=["id"])["id"].to_pylist())
    log.write_text("")

    result = run_job(parse_recipe(raw), str(out), log=lambda m: None)
    rescored = set(log.read_text().split())
    assert rescored and rescored.isdisjoint(finished_ids)
    assert result.skipped_partitions == len(done_before)

    clean = tmp_path / "clean"
    run_job(parse_recipe(raw), str(clean), log=lambda m: None)
    shards = sorted(p.name for p in (clean / "shards").glob("*.tar"))
    assert shards == sorted(p.name for p in (out / "shards").glob("*.tar"))
    for name in shards:
        assert (clean / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes()
    for name in ("manifest.parquet", "rejects.parquet", "job.json"):
        assert (clean / name).read_bytes() == (out / name).read_bytes(), name
