"""Two Ray nodes on this machine: a head (2 CPUs) and a second node joined with `ray start --address`
(1 CPU, its own temp folder and ports). A job sent with `ray job submit` runs its tasks on both nodes (the
test stage records the node of every batch) and writes the same output as the same job on the head alone.
Only the processes this test started are stopped, by id."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest
import ray
import yaml

from tests.jobs.test_cluster import BINDIR, Head, node_ports, ray_env
from tests.jobs.test_faults import demo_recipe, job_output

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


class Node(Head):
    """A second node of `head` on this machine: 1 CPU, its own temp folder (found and stopped by it)."""

    def __init__(self, head: Head) -> None:  # not Head.__init__: that starts a head
        self.temp = tempfile.mkdtemp(prefix="vn", dir="/tmp")
        subprocess.run([str(BINDIR / "ray"), "start", "--address", f"127.0.0.1:{head.port}",
                        "--node-ip-address", "127.0.0.1", *node_ports(), "--num-cpus", "1",
                        "--disable-usage-stats", "--temp-dir", self.temp],
                       env=ray_env(), check=True, capture_output=True, timeout=300)

    def processes(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if any(self.temp in part for part in p.info["cmdline"] or [])]


def run_submitted(head: Head, root: Path, name: str) -> tuple[Path, set[str]]:
    """The demo job in six partitions, each batch held 2 s: its output folder and the nodes its batches ran on."""
    nodes = root / f"{name}-nodes"
    nodes.mkdir()
    recipe = root / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe(partition_rows=2, node_dir=str(nodes), sleep_s=2.0)))
    out = root / name
    proc = head.submit("python", "-m", "jobs.run", str(recipe), "-o", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, {p.read_text() for p in nodes.iterdir()}


def test_a_job_on_two_nodes_equals_one_node(tmp_path):
    if ray.is_initialized():  # cluster tests run last (conftest); the session's local Ray is not needed
        ray.shutdown()
    head = Head()
    node = None
    try:
        one, one_nodes = run_submitted(head, tmp_path, "one")
        assert len(one_nodes) == 1
        node = Node(head)
        two, two_nodes = run_submitted(head, tmp_path, "two")
        assert len(two_nodes) == 2 and one_nodes < two_nodes  # the head and the new node both ran batches
        assert job_output(str(two)) == job_output(str(one))
    finally:
        for ours in (node, head):
            if ours is not None:
                ours.stop()
                shutil.rmtree(ours.temp, ignore_errors=True)
    assert not head.processes() and not node.processes()
