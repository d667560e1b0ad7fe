"""The one adapter onto Ray Data: the runner's steps and the writers' shard and pack tasks all go through
``ray_map`` (tasks for stateless work, an actor pool for model-holding stages).

A small job on one machine does not need Ray: starting it costs 10-15 s on a 2-core machine, more than the
whole job. Inside ``local_executor(workers)`` (the CLI enters it for small inputs, see `jobs/cli.py`)
``ray_map`` runs the same functions on a pool of ``workers`` local processes instead (forked from a server
that has imported the pipeline once), and model-holding steps in this process, one model for all
partitions. A worker process that dies (killed, out of memory) is replaced and its items run again, as Ray
retries a task.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from pipeline.spec import RecipeError

RETRIES = 3  # as Ray's default for a task whose worker died
_pool: dict[str, Any] = {}


@contextmanager
def local_executor(workers: int) -> Iterator[None]:
    """Run every ``ray_map`` inside this block on local processes (see the module docstring)."""
    _pool["workers"] = max(1, workers)
    try:
        yield
    finally:
        executor = _pool.pop("executor", None)
        _pool.clear()
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def _executor(fresh: bool = False) -> ProcessPoolExecutor:
    if fresh and "executor" in _pool:
        _pool.pop("executor").shutdown(wait=False, cancel_futures=True)
    if "executor" not in _pool:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pipeline.runner"])
        _pool["executor"] = ProcessPoolExecutor(max_workers=_pool["workers"], mp_context=ctx)
    return _pool["executor"]


def _rows(result: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(result)
    return [dict(zip(names, values, strict=True)) for values in zip(*result.values(), strict=True)]


def _local_map(items: list[dict[str, Any]], fn: Any, actor: bool, progress: Any,
               kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []

    def finished(rows: list[dict[str, Any]]) -> None:
        done.extend(rows)
        if progress is not None:
            for row in rows:
                progress.update(row.get("rows") or 0)

    batches = [{k: [v] for k, v in item.items()} for item in items]
    if actor:  # a model-holding step: one instance (one model) in this process for all partitions
        worker = fn(**kwargs)
        for batch in batches:
            finished(_rows(worker(batch)))
        return done
    todo, attempts = list(range(len(batches))), 0
    while todo:
        executor = _executor(fresh=attempts > 0)
        futures: dict[Future, int] = {executor.submit(fn, batches[i], **kwargs): i for i in todo}
        broken: list[int] = []
        pending = set(futures)
        while pending:
            ready, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in ready:
                try:
                    finished(_rows(f.result()))
                except BrokenProcessPool:  # a worker died: every item it could not finish runs again
                    broken.append(futures[f])
        todo, attempts = sorted(broken), attempts + 1
        if todo and attempts > RETRIES:
            raise RuntimeError(f"local worker processes died {RETRIES + 1} times running {len(todo)} "
                               "partition(s); rerun the same command to resume")
    return done


def ray_map(items: list[dict[str, Any]], fn: Any, *, actor: bool = False, num_cpus: float = 1.0,
             num_gpus: float = 0.0, actors: int = 1, progress: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The one adapter onto Ray Data: tasks for stateless work, an actor pool for model-holding stages (or
    local processes inside `local_executor`)."""
    if "workers" in _pool:
        return _local_map(items, fn, actor, progress, kwargs)
    import ray.data  # here, not at the top: the CLI checks a recipe before Ray and should not wait for it

    for name in ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor",
                 "ray.data.exceptions"):  # a failing task still raises here, with its traceback
        logging.getLogger(name).setLevel(logging.ERROR)  # our own log says which step runs, and how long
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if actor:
        pool = ray.data.ActorPoolStrategy(size=max(1, min(actors, len(items))))  # no idle actors
        ds = ds.map_batches(fn, batch_size=1, compute=pool, num_cpus=num_cpus, num_gpus=num_gpus or None,
                            fn_constructor_kwargs=kwargs)
    else:
        ds = ds.map_batches(fn, batch_size=1, num_cpus=num_cpus, fn_kwargs=kwargs)
    try:
        if progress is None:
            return ds.take_all()
        done = []
        for row in ds.iter_rows():  # results as partitions finish: one updating line on a terminal
            done.append(row)
            progress.update(row.get("rows") or 0)
        return done
    except Exception as e:
        problem = recipe_error_in(e)
        if problem is not None:  # a recipe problem only a worker could see: one line, not a Ray traceback
            raise RecipeError(str(problem)) from None
        raise


def recipe_error_in(e: BaseException | None, depth: int = 0) -> RecipeError | None:
    """The RecipeError at the root of a Ray task failure, if that is what it is."""
    if e is None or depth > 8:
        return None
    if isinstance(e, RecipeError):
        return e
    # Ray Data re-raises a worker's exception as text inside its own error: read the line back
    match = re.search(r"RecipeError: (.+)", str(e))
    if match:
        return RecipeError(match.group(1).strip())
    for inner in (getattr(e, "cause", None), e.__cause__, e.__context__):
        if isinstance(inner, BaseException):
            found = recipe_error_in(inner, depth + 1)
            if found is not None:
                return found
    return None
