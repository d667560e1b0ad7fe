"""`ray job submit --working-dir .` against a head started on 127.0.0.1, with an absolute output path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit(tmp_path):
    import ray

    if ray.is_initialized():  # this test runs last (conftest); the session's local Ray is no longer needed
        ray.shutdown()
    bindir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    ray_bin = str(bindir / "ray")
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    try:
        out = tmp_path / "out"
        proc = subprocess.run(
            [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".", "--",
             "python", "-m", "jobs.run", "jobs/recipes/demo.yaml", "-o", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in (proc.stdout + proc.stderr).lower()
        stats = json.loads((out / "stats.json").read_text())
        manifest = pq.read_table(out / "manifest.parquet")
        rejects = pq.read_table(out / "rejects.parquet")
        assert stats["records_in"] == manifest.num_rows + rejects.num_rows == 11
        assert manifest.num_rows == 4 and list((out / "shards").glob("shard-*.tar"))
        rel = subprocess.run(
            [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".", "--",
             "python", "-m", "jobs.run", "jobs/recipes/demo.yaml", "-o", "relative_out"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert rel.returncode != 0 and "relative output path" in rel.stdout + rel.stderr
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
