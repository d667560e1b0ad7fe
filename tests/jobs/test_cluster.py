"""`ray job submit --working-dir .` against a head started on 127.0.0.1, with an absolute output path. The
test stops only the Ray processes it started (found by their own temp folder), never a user's Ray: a
bystander head started before it is still running after it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BINDIR = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BINDIR}:{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def node_ports() -> list[str]:
    """Free ports for a node's own servers: two nodes on one machine would collide on every fixed default."""
    return [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port")]


class Head:
    """A Ray head of our own: its own short temp folder (every process it starts names it on its command
    line), so stopping it signals exactly its processes, by id."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
        self.port, self.dashboard = free_port(), free_port()
        ports = [*node_ports(), f"--ray-client-server-port={free_port()}"]
        subprocess.run([str(BINDIR / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                        "--port", str(self.port), "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(self.dashboard), *ports, "--num-cpus", "2",
                        "--disable-usage-stats", "--temp-dir", self.temp],
                       env=ray_env(), check=True, capture_output=True, timeout=300)

    def submit(self, *command: str) -> subprocess.CompletedProcess:
        """`ray job submit`, again while the head's job agent has not registered yet (a loaded machine)."""
        for _ in range(10):
            proc = subprocess.run([str(BINDIR / "ray"), "job", "submit", "--address",
                                   f"http://127.0.0.1:{self.dashboard}", "--working-dir", ".", "--", *command],
                                  cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600)
            if "No available agent" not in proc.stdout + proc.stderr:
                break
            time.sleep(5)
        return proc

    def processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if any(self.temp in part or f"127.0.0.1:{self.port}" in part for part in p.info["cmdline"] or []):
                found.append(p)
        return found

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=20)


def test_ray_job_submit_and_a_bystander_ray_survives(tmp_path):
    import ray

    if ray.is_initialized():  # this test runs last (conftest); the session's local Ray is no longer needed
        ray.shutdown()
    bystander = Head()  # someone else's cluster, started before ours
    try:
        theirs = [p.pid for p in bystander.processes()]
        assert theirs
        head = Head()
        try:
            job = ["python", "-m", "jobs.run", "jobs/recipes/demo.yaml", "-o"]
            out = tmp_path / "out"
            proc = head.submit(*job, str(out))
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert "succeeded" in (proc.stdout + proc.stderr).lower()
            stats = json.loads((out / "stats.json").read_text())
            manifest = pq.read_table(out / "manifest.parquet")
            rejects = pq.read_table(out / "rejects.parquet")
            assert stats["records_in"] == manifest.num_rows + rejects.num_rows == 11
            assert manifest.num_rows == 4 and list((out / "shards").glob("shard-*.tar"))
            rel = head.submit(*job, "relative_out")
            assert rel.returncode != 0 and "relative output path" in rel.stdout + rel.stderr
        finally:
            head.stop()
        time.sleep(1)
        assert not head.processes()  # ours are gone ...
        assert all(psutil.pid_exists(pid) for pid in theirs)  # ... theirs all still run
    finally:
        bystander.stop()
