"""The one adapter onto Ray Data: the runner's steps and the writers' shard and pack tasks all go through
``ray_map`` (tasks for stateless work, an actor pool for model-holding stages)."""

from __future__ import annotations

import logging
import re
from typing import Any

from pipeline.spec import RecipeError


def ray_map(items: list[dict[str, Any]], fn: Any, *, actor: bool = False, num_cpus: float = 1.0,
             num_gpus: float = 0.0, actors: int = 1, progress: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The one adapter onto Ray Data: tasks for stateless work, an actor pool for model-holding stages."""
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
