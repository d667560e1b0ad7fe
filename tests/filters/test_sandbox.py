"""The code sandbox against hostile programs, and HumanEval's canonical solutions (pass) and mutants (fail)."""

import gzip
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from filters.verifiers.code import code_program, verify_code
from filters.verifiers.sandbox import STATUSES, SandboxError, run_code

HUMANEVAL = Path(__file__).resolve().parents[1] / "data" / "code" / "HumanEval.jsonl.gz"
UID_BASE = 200_000  # _sandbox_init.UID_BASE: every sandboxed process runs as UID_BASE + a host pid

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


def sandboxed_processes() -> list[int]:
    """Host pids of processes running as a sandbox user id."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            if uid >= UID_BASE:
                pids.append(int(entry))
    return pids


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    assert sandboxed_processes() == []


def check_status(run, limit_s, *statuses):
    assert run.status in STATUSES
    assert run.status in statuses, (run.status, run.stderr[-500:])
    assert run.seconds < limit_s + 3.0  # reported within its limit (+ the kill and reaping)
    assert not run.passed


def test_plain_runs():
    ok = run_code("import sys\nprint('hi')\nprint('warn', file=sys.stderr)", timeout_s=10)
    assert (ok.status, ok.passed, ok.stdout, ok.stderr, ok.returncode) == ("ok", True, "hi\n", "warn\n", 0)
    failed = run_code("assert 1 == 2", timeout_s=10)
    assert failed.status == "error" and "AssertionError" in failed.stderr and failed.returncode == 1


def test_fork_bomb_is_contained():
    run = run_code(FORK_BOMB, timeout_s=4)
    check_status(run, 4, "timeout", "error")


def test_memory_bomb():
    run = run_code("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))", timeout_s=10,
                   memory_mb=256)
    check_status(run, 10, "memory")


def test_infinite_loop():
    run = run_code("while True:\n    pass", timeout_s=2)
    check_status(run, 2, "timeout")
    assert run.seconds >= 2.0


def test_sleeping_forever_is_a_wall_clock_timeout():
    run = run_code("import time\ntime.sleep(3600)", timeout_s=2)
    check_status(run, 2, "timeout")


def test_writes_outside_the_working_folder():
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    home_parent = Path.cwd()
    targets = ["..", "/tmp", "/dev/shm", "/var/tmp", "/root", os.path.expanduser("~"), str(home_parent), "/"]
    program = f"""
import os
for d in {targets!r} + [os.path.expanduser("~")]:
    try:
        with open(os.path.join(d, {name!r}), "w") as f:
            f.write("x")
        print("WROTE", os.path.realpath(os.path.join(d, {name!r})))
    except OSError as e:
        print("refused", d, e.errno)
open("inside.txt", "w").write("fine")
print("inside", open("inside.txt").read())
"""
    run = run_code(program, timeout_s=10)
    assert run.status == "ok", run.stderr
    assert "inside fine" in run.stdout
    # the private /tmp and /dev/shm take writes; they vanish with the run: nothing appears outside
    for d in ["/tmp", "/dev/shm", "/var/tmp", "/root", os.path.expanduser("~"), str(home_parent), "/"]:
        assert not (Path(d) / name).exists(), d
    assert "WROTE /root" not in run.stdout and "WROTE /var/tmp" not in run.stdout


def test_no_network_to_the_host():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        program = f"""
import socket
for host in ("127.0.0.1", "localhost", "::1"):
    try:
        socket.create_connection((host, {port}), timeout=2)
        print("CONNECTED", host)
    except OSError as e:
        print("refused", host, e)
"""
        run = run_code(program, timeout_s=10)
        assert run.status == "ok", run.stderr
        assert "CONNECTED" not in run.stdout
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_parent_environment_is_not_readable(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("VLCURATE_TEST_SECRET", secret)
    program = f"""
import os
print(dict(os.environ))
for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["{os.getpid()}", "self"]:
    try:
        print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError as e:
        print(pid, "refused", e.errno)
"""
    run = run_code(program, timeout_s=10)
    assert run.status == "ok", run.stderr
    assert secret not in run.stdout and "VLCURATE_TEST_SECRET" not in run.stdout
    assert "HOME" not in run.stdout.splitlines()[0]  # an empty environment


def test_a_gigabyte_of_output():
    run = run_code("import sys\nblock = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(block)",
                   timeout_s=20, max_output_bytes=1 << 20)
    check_status(run, 20, "output_limit")
    assert len(run.stdout) <= 1 << 20


def test_a_gigabyte_file():
    run = run_code("with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * 2**20)",
                   timeout_s=20, file_mb=16)
    check_status(run, 20, "output_limit", "error")


def test_killing_the_parent_or_everything():
    parent = run_code("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", timeout_s=10)
    check_status(parent, 10, "error")
    assert "PermissionError" in parent.stderr
    everything = run_code("import os, signal, time\nos.kill(-1, signal.SIGKILL)\ntime.sleep(5)", timeout_s=10)
    check_status(everything, 10, "error")  # kill(-1) spares the caller: nothing else it may signal exists
    assert "ProcessLookupError" in everything.stderr
    itself = run_code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", timeout_s=10)
    check_status(itself, 10, "killed")
    assert itself.returncode == 128 + 9


def test_four_concurrent_runs_one_a_fork_bomb():
    programs = [FORK_BOMB] + [f"import os\nprint(sum(range(10**5)) + {i}, len(os.listdir('.')))" for i in range(3)]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda p: run_code(p, timeout_s=8), programs))
    check_status(runs[0], 8, "timeout", "error")
    for i, run in enumerate(runs[1:]):
        assert (run.status, run.stdout) == ("ok", f"{4999950000 + i} 1\n"), run.stderr


def test_not_root_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="needs root"):
        run_code("print(1)")


def test_verify_code_reads_the_fenced_block():
    response = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    tests = "def check(f):\n    assert f(2, 3) == 5\n"
    assert verify_code(response, tests, "add").passed
    assert not verify_code(response.replace("a + b", "a - b"), tests, "add").passed
    assert code_program("x = 1", "assert x == 1") == "x = 1\n\n\nassert x == 1\n"


def _humaneval():
    with gzip.open(HUMANEVAL, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_mutants_fail():
    rows = _humaneval()
    assert len(rows) == 164
    jobs = [(r, r["canonical_solution"]) for r in rows] + [(r, "    return None\n") for r in rows]
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda j: verify_code(j[1], j[0]["test"], j[0]["entry_point"], prompt=j[0]["prompt"],
                                                   timeout_s=30), jobs))
    elapsed = time.monotonic() - start
    canonical, mutants = runs[:164], runs[164:]
    failed = [(r["task_id"], run.status, run.stderr[-300:]) for r, run in zip(rows, canonical, strict=True) if not run.passed]
    assert failed == []
    survived = [r["task_id"] for r, run in zip(rows, mutants, strict=True) if run.passed]
    assert survived == []
    print(f"HumanEval: 328 sandboxed runs in {elapsed:.1f}s")


def test_every_visible_mount_is_read_only_but_tmp_and_shm():
    program = "for line in open('/proc/self/mountinfo'):\n    f = line.split()\n    print(f[4], f[5].split(',')[0])"
    run = run_code(program, timeout_s=10)
    assert run.status == "ok", run.stderr
    top = dict(line.split() for line in run.stdout.splitlines())  # the last mount on a path is the visible one
    assert {path for path, mode in top.items() if mode == "rw"} == {"/tmp", "/dev/shm"}
    assert top["/"] == "ro"


def test_closing_its_output_and_sleeping_is_still_a_timeout():
    run = run_code("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(3600)", timeout_s=2)
    check_status(run, 2, "timeout")
