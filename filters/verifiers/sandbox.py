"""Run an untrusted Python program in a sandboxed child: ``run_code(program, timeout_s, memory_mb)``.

Each run gets its own process, its own mount / pid / network / IPC / UTS namespaces, a read-only view of the
file system with private tmpfs ``/tmp`` and ``/dev/shm``, an empty private working folder (``/tmp/work``),
an empty environment, and runs as a user id of its own (so it can signal neither the caller nor another run,
and its process-count limit is its own) with CPU, address-space, process-count, file-size and open-file
limits; the caller enforces the wall-clock limit and the output cap and kills the whole namespace at the end.
Needs root (as here); see the README's "Verifiers" section for what it does and does not protect against.
Works from any thread (no signals, no ``preexec_fn``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")
INIT = Path(__file__).with_name("_sandbox_init.py")
SETUP_FAILED = 125
HIDDEN = ("/root", "/home", "/run", "/var/tmp")  # empty folders in the sandbox (besides /tmp and /dev/shm)
_SIG = {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "output_limit"}


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not root, no namespaces): not a verdict on the program."""


@dataclass(frozen=True)
class CodeRun:
    status: str  # one of STATUSES
    passed: bool  # exited 0 within every limit
    stdout: str  # the first ``max_output_bytes`` of each stream, decoded leniently
    stderr: str
    seconds: float  # wall time of the run, sandbox set-up included
    returncode: int | None = None  # 128 + signal when killed by one


def run_code(program: str, timeout_s: float = 10.0, memory_mb: int = 512, *, max_output_bytes: int = 1 << 20,
             max_procs: int = 32, file_mb: int = 16, tmp_mb: int = 64) -> CodeRun:
    """Run ``program`` (the candidate plus its tests, as one Python file, stdlib only) in the sandbox.

    ``status``: ``ok`` (exit 0), ``error`` (non-zero exit, e.g. a failed assert), ``timeout`` (wall time over
    ``timeout_s``, set-up included, or CPU time over it), ``memory`` (a MemoryError or a fatal allocation
    failure under the ``memory_mb`` address-space limit), ``output_limit`` (stdout + stderr over
    ``max_output_bytes``, or a file over ``file_mb``), ``killed`` (ended by another signal)."""
    if os.geteuid() != 0:
        raise SandboxError("run_code needs root (namespaces, mounts and a user id of its own per run)")
    cfg = {"cpu_s": max(1, int(timeout_s + 0.999)), "memory_mb": memory_mb, "max_procs": max_procs,
           "file_mb": file_mb, "tmp_mb": tmp_mb, "hide": list(HIDDEN),
           "prefix": os.path.realpath(sys.base_prefix), "python": _interpreter()}
    start = time.monotonic()
    proc = subprocess.Popen([cfg["python"], "-I", "-S", str(INIT), json.dumps(cfg)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={}, cwd="/",
                            start_new_session=True, close_fds=True)
    try:
        try:
            proc.stdin.write(program.encode("utf-8", "surrogatepass"))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        out, err, over, late = _collect(proc, start + timeout_s, max_output_bytes)
    finally:
        _kill(proc)
    seconds = time.monotonic() - start
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    if rc == SETUP_FAILED and err.startswith(b"sandbox setup failed"):
        raise SandboxError(err.decode(errors="replace").strip())
    stderr = err.decode(errors="replace")
    if over:
        status = "output_limit"
    elif late:
        status = "timeout"
    elif rc == 0:
        status = "ok"
    elif "MemoryError" in stderr[-2000:] or "Cannot allocate memory" in stderr[-2000:]:
        status = "memory"
    elif rc > 128:
        status = _SIG.get(rc - 128, "killed")  # type: ignore[call-overload]
    else:
        status = "error"
    return CodeRun(status, status == "ok", out.decode(errors="replace"), stderr, round(seconds, 3), rc)


def _interpreter() -> str:
    """The real interpreter binary behind sys.executable (a venv's python is a symlink into base_prefix)."""
    real = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    if not real.startswith(prefix + os.sep):
        raise SandboxError(f"{real} is not inside {prefix}")
    return real


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes until they close, the deadline passes (late) or together they exceed ``cap`` (over)."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    total = 0
    with selectors.DefaultSelector() as sel:
        for stream in bufs:
            sel.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), False, True
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]  # type: ignore[index]
                buf += chunk[: max(0, cap - len(buf))]
                total += len(chunk)
                if total > cap:
                    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), True, False
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # streams closed, but the run did not end in time
        return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), False, True
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), False, False


def _kill(proc: subprocess.Popen) -> None:
    """Stop the run: SIGTERM makes its first process SIGKILL the namespace's pid 1 and exit once pid 1 is
    reaped, which the kernel allows only when no process is left in the namespace. SIGKILL to the process
    group if that takes over 10 s."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait()
