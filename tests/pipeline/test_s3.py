"""Object storage: `input.path: s3://…` and `-o s3://…` against an S3-compatible server (moto's server mode)
that the test starts on 127.0.0.1. Writes are atomic there too (a writer that fails or is SIGKILLed leaves
no object under the final name), and a job killed mid-step resumes from the finished partitions to the
output of a local run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.recipe import parse_recipe
from pipeline.runner import plan_steps, run_job
from pipeline.storage import WORK, Store
from tests.jobs.test_cluster import free_port
from tests.jobs.test_faults import demo_recipe, job_output

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server of our own on a free port, with a bucket; the AWS variables point this process (and
    the job subprocesses given `env`) at it. Stopped by its process id."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "moto server did not start"
                time.sleep(0.2)
        boto3.client("s3").create_bucket(Bucket="bucket")
        yield env
    finally:
        patch.undo()
        proc.terminate()
        proc.wait(timeout=30)


def test_a_failing_writer_leaves_no_object(s3):
    store = Store("s3://bucket/failing")
    with pytest.raises(RuntimeError), store.open_atomic("shards", "shard-00000.tar") as f:
        f.write(b"x" * 1000)
        raise RuntimeError("disk full")
    assert not store.exists("shards", "shard-00000.tar") and store.list("shards") == []
    store.write_bytes(b"whole", "shards", "shard-00000.tar")
    assert store.read_bytes("shards", "shard-00000.tar") == b"whole"


def test_a_killed_writer_leaves_no_object_under_its_name(s3):
    """A process SIGKILLed inside `open_atomic` after 12 MB (more than one multipart part has gone up)."""
    script = ("import sys, time\nfrom pipeline.storage import Store\n"
              "with Store('s3://bucket/killed').open_atomic('shards', 'shard-00000.tar') as f:\n"
              "    f.write(b'x' * 12_000_000)\n    print('written', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = Store("s3://bucket/killed")
    assert not store.exists("shards", "shard-00000.tar")
    store.remove_temporary()  # what a rerun does first
    assert [n for n in store.list("shards") if not n.startswith("shard-00000.tar.tmp-")] == []


@pytest.mark.slow
def test_s3_input_and_output_a_killed_job_resumes(s3, ray_local, tmp_path):
    pafs.copy_files(str(REPO / "jobs/demo_data"), "s3://bucket/in")
    pid_file = tmp_path / "pid"
    raw = demo_recipe(pid_file=str(pid_file), hold_s=120.0)
    raw["input"]["path"] = "s3://bucket/in/captions.jsonl"
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = "s3://bucket/out"
    store = Store(out)
    command = [sys.executable, "-m", "jobs.run", str(recipe_path), "-o", out, "--num-cpus", "2"]
    env = {**os.environ, **s3, "PYTHONPATH": str(REPO)}
    first = plan_steps(parse_recipe(raw))[0].name
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # one worker holds its partition (the pid file); the other finishes the rest of the first step
    deadline = time.time() + 300
    while time.time() < deadline and len([n for n in store.list(WORK, first) if n.endswith(".done")]) < 3:
        assert proc.poll() is None
        time.sleep(0.5)
    assert pid_file.exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # the killed driver's workers die with their raylet (fate sharing)
    done = [n for n in store.list(WORK, first) if n.endswith(".done")]
    assert len(done) == 3  # of 4 partitions: the held one is not done
    for name in done:  # every partition marked done has its whole result readable
        marker = json.loads(store.read_bytes(WORK, first, name))
        assert pq.read_table(store.path(WORK, first, name.replace(".done", ".parquet")),
                             filesystem=store.fs).num_rows == marker["rows"]
    assert not store.exists("manifest.parquet") and not store.exists("stats.json")

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"step {first}: 1 partition(s), 3 already done" in rerun.stdout
    stats = json.loads(store.read_bytes("stats.json"))
    assert stats["partitions_resumed"] >= 3 and stats["records_in"] == 11
    local = tmp_path / "local"
    run_job(parse_recipe(demo_recipe()), str(local), log=lambda m: None)
    assert job_output(out) == job_output(str(local))
