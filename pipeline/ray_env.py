"""Starting or joining Ray (DESIGN.md: without RAY_ADDRESS a local Ray for the job; with it, the cluster)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.storage import is_remote

# A local Ray on a loaded machine: give the GCS and the raylet longer than Ray's defaults to come up
# (seconds), and run the workers at normal priority: they are the job (Ray's default nice 15 lets any other
# busy process on the machine starve them). Set for the processes Ray starts, unless the user chose others.
LOCAL_RAY = {
    "RAY_gcs_rpc_server_connect_timeout_s": "60",
    "RAY_raylet_start_wait_time_s": "120",
    "RAY_gcs_server_request_timeout_seconds": "120",
    "RAY_worker_niceness": "0",
}


# Normal output is vlcurate's own lines: Ray Data logs its warnings to its session log file only
QUIET = {"RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml"))}


class RayEnvError(ValueError):
    """A one-line problem with where the job runs."""


def check_output_location(out: str) -> None:
    """On a cluster the output must be a place every node sees, never the uploaded working directory."""
    if os.environ.get("RAY_ADDRESS") and not is_remote(out) and not os.path.isabs(out):
        raise RayEnvError(f"-o {out}: a relative output path on a cluster would land inside the job's "
                          "working directory on the head node; pass an absolute path or an s3:// / gs:// URI")


def start_ray(num_cpus: int | None = None) -> bool:
    """Initialise Ray; return True when we started a local instance (the caller shuts it down).

    A local Ray binds 127.0.0.1 (never a public interface, and no lookup of the machine's address), waits
    long enough for a loaded machine, and is tried twice before giving up with one line."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return False
    for key, value in LOCAL_RAY.items():
        os.environ.setdefault(key, value)
    problem: BaseException | None = None
    for _ in range(2):
        try:
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
            return True
        except Exception as e:  # noqa: BLE001 - any failure to start is retried once, then reported
            problem = e
            ray.shutdown()
    first = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
    raise RayEnvError(f"could not start a local Ray twice ({first}); the machine may be overloaded or out of "
                      "memory: rerun the same command (finished work is kept), or start Ray yourself with "
                      "`ray start --head --node-ip-address 127.0.0.1` and set RAY_ADDRESS=127.0.0.1:6379")


@contextmanager
def native_stderr_to(path: str) -> Iterator[None]:
    """While the job runs, what Ray's C++ core worker writes to this process's stderr (file descriptor 2:
    e.g. an error-level note that Ray Data's actor pools keep their constructor arguments in the object
    store, on every run) goes to `path`; Python's `sys.stderr` (vlcurate's lines, tracebacks) still reaches
    the terminal. Ray keeps its own copy of those messages in the session's python-core-driver log. Does
    nothing when stderr is not file descriptor 2 (captured by a test, say)."""
    try:
        redirect = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        redirect = False
    if not redirect:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    terminal, sys.stderr = sys.stderr, os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = terminal
        os.dup2(saved, 2)
        os.close(saved)
