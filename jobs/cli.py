"""The `vlcurate` command line. Heavy imports (ray, pyarrow, torch) happen inside the commands, so
`--help` is fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlcurate", description="Curate vision-language training data on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a curation job", description="Run a recipe into an output folder. "
                         "Without RAY_ADDRESS a local Ray is started and stopped; with it the job joins that cluster.")
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("-o", "--out", required=True, help="output folder (local path or s3://, gs:// URI)")
    run.add_argument("--input", help="override input.path")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override any recipe key, e.g. --set stages.image_check.min_side_px=64")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    run.add_argument("--overwrite", action="store_true", help="delete OUT's earlier job first (default: "
                     "resume a job of the same recipe and input, refuse another)")
    run.add_argument("--allow-empty", action="store_true", help="run even when the input holds no record "
                     "(default: an empty input is an error, exit 2)")

    ins = sub.add_parser("inspect", help="show kept or dropped samples of a finished job")
    ins.add_argument("out", help="job output folder")
    ins.add_argument("--n", type=int, default=10, help="how many samples (default 10)")
    ins.add_argument("--rejected", action="store_true", help="show dropped rows with their stage and reason")
    ins.add_argument("--reason", help="only rejects with this reason (implies --rejected)")
    ins.add_argument("--id", dest="row_id", help="show one sample or reject in full")
    ins.add_argument("--packs", action="store_true", help="show fill per pack and the fill distribution")
    ins.add_argument("--render", metavar="DIR", help="also write the shown samples' images to DIR")
    ins.add_argument("--json", action="store_true", help="one JSON object per line")
    regen = sub.add_parser("regen-sft", help="rerun a finished job with other selection rules, reusing its "
                           "model scores (no GPU needed when only decisions change)",
                           description="Rerun OUT's recipe (job.json) with --set overrides into NEW_OUT. Model "
                           "stages whose parameters are unchanged apart from their decision thresholds take "
                           "OUT's scores instead of loading the model.")
    regen.add_argument("out", help="a finished job folder")
    regen.add_argument("-o", "--out", dest="new_out", required=True, help="the new output folder")
    regen.add_argument("--input", help="override input.path (default: the input OUT read)")
    regen.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override recipe keys, e.g. --set stages.clip_score.keep_top_fraction=0.2")
    regen.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    regen.add_argument("--overwrite", action="store_true", help="delete NEW_OUT's earlier job first")

    rep = sub.add_parser("report", help="write OUT/report.html: funnel, drop reasons, score histograms, packing")
    rep.add_argument("out", help="job output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "run":
        return _run(args)
    if args.command == "inspect":
        from jobs.inspect import inspect_job

        return inspect_job(args)
    if args.command == "report":
        return _report(args)
    if args.command == "regen-sft":
        return _regen(args)
    return 2


def _clear(out: str) -> None:
    """Delete an earlier job's folder; never a folder that is not one."""
    from pipeline.recipe import RecipeError
    from pipeline.storage import Store

    store = Store(out)
    if not store.exists():
        return
    if not store.exists("_work", "job_identity.json") and store.list():
        raise RecipeError(f"--overwrite: {out} is not a vlcurate job folder; not deleting it")
    store.delete_dir()


def _report(args: argparse.Namespace) -> int:
    from jobs.report import build_report

    try:
        path = build_report(args.out)
    except FileNotFoundError as e:
        print(f"vlcurate: {args.out}: not a finished vlcurate job folder ({e.filename or e})", file=sys.stderr)
        return 2
    print(f"vlcurate: wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline.recipe import load_recipe

    return _execute(lambda: load_recipe(args.recipe, args.sets, args.input), args.out, args.num_cpus,
                    overwrite=args.overwrite, allow_empty=args.allow_empty)


def _regen(args: argparse.Namespace) -> int:
    """Rerun a finished job's recipe with overrides into a new folder, reusing its model scores."""
    from pipeline.recipe import RecipeError, parse_recipe, set_dotted
    from pipeline.storage import Store

    def load():  # noqa: ANN202
        store = Store(args.out)
        if not store.exists("job.json"):
            raise RecipeError(f"{args.out}: no job.json (is this a finished vlcurate job folder?)")
        job = json.loads(store.read_bytes("job.json"))
        raw = job["recipe"]
        for section in ("format", "pack"):
            if raw.get(section) is None:
                raw.pop(section, None)
        raw["input"]["path"] = args.input or job.get("input_path") or raw["input"]["path"]
        for assignment in args.sets:
            set_dotted(raw, assignment)
        return parse_recipe(raw)

    return _execute(load, args.new_out, args.num_cpus, reuse_from=args.out, overwrite=args.overwrite)


def _execute(load_recipe: Any, out: str, num_cpus: int | None, reuse_from: str | None = None,
             overwrite: bool = False, allow_empty: bool = False) -> int:
    from pipeline.ray_env import RayEnvError, start_ray
    from pipeline.readers import check_input, reader_for
    from pipeline.recipe import RecipeError, check_stages

    try:
        recipe = load_recipe()
        parts = reader_for(recipe.input).plan(recipe.input)  # a missing input fails here, before Ray starts
        check_input(recipe, parts, allow_empty=allow_empty)
        if reuse_from is None:
            check_stages(recipe)
        if overwrite:
            if os.environ.get("RAY_ADDRESS") and not os.path.isabs(out) and "://" not in out:
                raise RayEnvError(f"-o {out}: a relative output path on a cluster is refused (see --help)")
            _clear(out)
        started = start_ray(out, num_cpus=num_cpus)
    except (RecipeError, RayEnvError) as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    try:
        from pipeline.runner import run_job

        result = run_job(recipe, out, log=lambda m: print(m, flush=True), reuse_from=reuse_from, parts=parts)
    except RecipeError as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    from jobs.summary import print_summary

    print_summary(result.out, result.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
