"""A Ray worker killed with SIGKILL in the middle of a step costs nothing: the job completes in the same run
and its output (manifest, rejects, every shard's members and bytes) equals a clean run's. The same for an
actor holding a model (the scripted relevance backend): its partition is redone and no finished partition is
scored again. The test stage and backend write their process id to a file and then hold still, so the test
kills exactly the worker that is inside a step (never a guess by process name)."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

from filters.base import Batch, Params, Stage
from pipeline.raymap import local_executor
from pipeline.recipe import parse_recipe
from pipeline.runner import plan_steps, run_job
from pipeline.storage import Store
from tests.filters.test_relevance import Scripted
from tests.jobs.test_relevance_job import scripted_recipe

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def hold_once(pid_file: str, hold_s: float) -> None:
    """The first caller (of all processes) writes its process id to `pid_file` and sleeps `hold_s`: the
    window in which the test kills it. Later callers, the retry of the killed work among them, go on."""
    try:
        fd = os.open(pid_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(hold_s)


class ProbeParams(Params):
    pid_file: str = ""
    hold_s: float = 60.0
    node_dir: str = ""  # when set: a file per batch, named by its first id, holding the Ray node id
    sleep_s: float = 0.0  # every batch (keeps tasks in flight long enough to spread over nodes)


class Probe(Stage):
    """A test stage that keeps every row and changes nothing: a place for a kill, and a witness of the node
    each batch ran on."""

    Params = ProbeParams

    def score(self, batch: Batch) -> Batch:
        if self.params.pid_file:  # unset in the clean runs
            hold_once(self.params.pid_file, self.params.hold_s)
        time.sleep(self.params.sleep_s)
        if self.params.node_dir and batch["id"]:
            Path(self.params.node_dir, batch["id"][0]).write_text(ray.get_runtime_context().get_node_id())
        return {}


class HoldingScripted(Scripted):
    """The scripted relevance backend, held still (its pid written) before its first answer."""

    def __init__(self, *args, pid_file: str = "", hold_s: float = 60.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pid_file, self.hold_s = pid_file, hold_s

    def score_yes_no(self, items):
        hold_once(self.pid_file, self.hold_s)
        return super().score_yes_no(items)


def job_output(out: str) -> dict[str, object]:
    """What a job gives its user: manifest and rejects (bytes), every shard's member names and bytes."""
    store = Store(out)
    got: dict[str, object] = {name: store.read_bytes(name) for name in ("manifest.parquet", "rejects.parquet")}
    names = store.list("shards")
    assert names and all(n.startswith("shard-") and n.endswith(".tar") for n in names), names  # no temp left
    for name in names:
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes("shards", name))) as tar:
            got[name] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return got


def demo_recipe(partition_rows: int = 3, **probe) -> dict:
    return {"input": {"path": str(REPO / "jobs/demo_data/captions.jsonl"), "format": "jsonl",
                      "image_column": "image", "text_column": "caption", "partition_rows": partition_rows},
            "stages": {"image_check": {"min_side_px": 64, "max_aspect_ratio": 3.0},
                       "caption_check": {"min_chars": 3},
                       "probe": {"use": "tests.jobs.test_faults:Probe", **probe}}}


def kill_when_held(pid_file: Path, timeout: float = 300) -> int:
    """SIGKILL the process whose id appears in `pid_file`; return that id once it is gone."""
    deadline = time.time() + timeout
    while time.time() < deadline and not (pid_file.exists() and pid_file.read_text()):
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    proc = psutil.Process(pid)
    ray_worker = "ray" in " ".join(proc.cmdline()).lower()
    local_worker = os.getpid() in [p.pid for p in proc.parents()]  # a process of our local executor
    assert proc.pid != os.getpid() and (ray_worker or local_worker)  # a worker, not us
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return pid


def run_with_a_kill(raw: dict, out: Path, pid_file: Path):
    """Run the job in this process while a helper thread kills the held worker; return (result, pid)."""
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.append(kill_when_held(pid_file)))
    killer.start()
    result = run_job(parse_recipe(raw), str(out), log=lambda m: None)
    killer.join()
    return result, killed[0]


def test_a_killed_local_worker_costs_nothing(tmp_path):
    """The local executor (small jobs without Ray): a worker process killed mid-step is replaced, its
    partitions run again, and the output equals a clean Ray run's."""
    pid_file = tmp_path / "pid"
    out = tmp_path / "killed"
    with local_executor(2):
        result, pid = run_with_a_kill(demo_recipe(pid_file=str(pid_file)), out, pid_file)
    assert not psutil.pid_exists(pid)
    assert result.skipped_partitions == 0 and result.stats["kept"] == 4
    clean = tmp_path / "clean"
    with local_executor(2):
        run_job(parse_recipe(demo_recipe()), str(clean), log=lambda m: None)
    assert job_output(str(out)) == job_output(str(clean))


def test_each_image_is_written_once_and_ray_and_local_agree(ray_local, tmp_path):
    """With a global stage (dedup) between the read and the shards, no work file holds image bytes: the
    last step reads them from the input again and writes them into the shards, once. The same job on local
    processes gives the same output."""
    raw = demo_recipe()
    raw["stages"]["dedup"] = {}
    on_ray = tmp_path / "ray"
    result = run_job(parse_recipe(raw), str(on_ray), log=lambda m: None, keep_work=True)
    steps = [s.name for s in plan_steps(parse_recipe(raw))]
    assert len(steps) == 2  # read ... dedup scores | dedup decision, write
    work = Store(str(on_ray)).read_folder("_work", steps[0])
    kept = [r for r in work.to_pylist() if r["drop_stage"] is None]
    # an image the image check re-encoded (EXIF rotation, palette ...) is new bytes: that one stays
    made = [r for r in kept if "normalised" in json.loads(r["meta"])]
    assert len(made) < len(kept)
    assert all(r["images"] == [] and r["_image_refs"] == [0] for r in kept if r not in made)
    assert all(len(r["images"]) == 1 and r["_image_refs"] is None for r in made)
    shard_images = [data for name, members in job_output(str(on_ray)).items() if name.startswith("shard-")
                    for member, data in members if member.endswith((".jpg", ".png"))]
    assert len(shard_images) == result.stats["kept"] == 4
    sizes = result.stats["bytes"]
    assert sizes["written"] < 1.3 * sizes["media_read"]
    assert sizes["written"] > sum(len(b) for b in shard_images)  # counted: the shards are part of it
    local = tmp_path / "local"
    with local_executor(2):
        run_job(parse_recipe(raw), str(local), log=lambda m: None, keep_work=True)
    assert job_output(str(local)) == job_output(str(on_ray))


def test_a_killed_task_worker_costs_nothing(ray_local, tmp_path):
    pid_file = tmp_path / "pid"
    out = tmp_path / "killed"
    result, pid = run_with_a_kill(demo_recipe(pid_file=str(pid_file)), out, pid_file)
    assert not psutil.pid_exists(pid)
    assert result.skipped_partitions == 0  # finished in the same run: Ray retried the killed task
    clean = tmp_path / "clean"
    run_job(parse_recipe(demo_recipe()), str(clean), log=lambda m: None)
    got, want = job_output(str(out)), job_output(str(clean))
    assert got == want
    assert result.stats["kept"] == 4 and result.stats["records_in"] == 11


def test_a_killed_model_actor_redoes_only_its_partition(ray_local, tmp_path):
    pid_file, log = tmp_path / "pid", tmp_path / "scored.log"
    raw = scripted_recipe(tmp_path, batch_size=2)
    raw["stages"]["relevance"]["backend"] = "tests.jobs.test_faults:HoldingScripted"
    raw["stages"]["relevance"]["options"] = {"log": str(log), "pid_file": str(pid_file), "hold_s": 60.0}
    out = tmp_path / "killed"
    result, pid = run_with_a_kill(raw, out, pid_file)
    assert not psutil.pid_exists(pid)
    assert result.skipped_partitions == 0
    step = next(s.name for s in plan_steps(parse_recipe(raw)) if s.holds_model)
    assert len(list((out / "_work" / step).glob("*.done"))) == 6
    # the killed call never answered; every prompt was answered exactly once: 6 partitions of two prompts
    # each (the last: one row with two captions), none of a finished partition asked again
    prompts = log.read_text().splitlines()
    assert len(prompts) == 12
    clean_log = tmp_path / "clean.log"
    raw["stages"]["relevance"].update(backend="tests.filters.test_relevance:Scripted", options={"log": str(clean_log)})
    clean = tmp_path / "clean"
    run_job(parse_recipe(raw), str(clean), log=lambda m: None)
    assert sorted(prompts) == sorted(clean_log.read_text().splitlines())
    assert job_output(str(out)) == job_output(str(clean))
