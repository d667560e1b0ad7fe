"""Starting or joining Ray (DESIGN.md: without RAY_ADDRESS a local Ray for the job; with it, the cluster)."""

from __future__ import annotations

import logging
import os

from pipeline.storage import is_remote


class RayEnvError(ValueError):
    """A one-line problem with where the job runs."""


def start_ray(out: str, num_cpus: int | None = None) -> bool:
    """Initialise Ray; return True when we started a local instance (the caller shuts it down)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address and not is_remote(out) and not os.path.isabs(out):
        raise RayEnvError(f"-o {out}: a relative output path on a cluster would land inside the job's "
                          "working directory on the head node; pass an absolute path or an s3:// / gs:// URI")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, configure_logging=True)
    return True
