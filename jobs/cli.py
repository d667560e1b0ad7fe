"""The `vlcurate` command line. Heavy imports (ray, pyarrow, torch) happen inside the commands, so
`--help` is fast."""

from __future__ import annotations

import argparse
import os
import sys


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

    ins = sub.add_parser("inspect", help="show kept or dropped samples of a finished job")
    ins.add_argument("out", help="job output folder")
    ins.add_argument("--n", type=int, default=10, help="how many samples (default 10)")
    ins.add_argument("--rejected", action="store_true", help="show dropped rows with their stage and reason")
    ins.add_argument("--reason", help="only rejects with this reason (implies --rejected)")
    ins.add_argument("--id", dest="row_id", help="show one sample or reject in full")
    ins.add_argument("--packs", action="store_true", help="show fill per pack and the fill distribution")
    ins.add_argument("--render", metavar="DIR", help="also write the shown samples' images to DIR")
    ins.add_argument("--json", action="store_true", help="one JSON object per line")
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
    return 2


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
    from pipeline.ray_env import RayEnvError, start_ray
    from pipeline.readers import reader_for
    from pipeline.recipe import RecipeError, check_stages, load_recipe

    try:
        recipe = load_recipe(args.recipe, args.sets, args.input)
        reader_for(recipe.input).plan(recipe.input)  # a missing input fails here, before Ray starts
        check_stages(recipe)
        started = start_ray(args.out, num_cpus=args.num_cpus)
    except (RecipeError, RayEnvError) as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    try:
        from pipeline.runner import run_job

        result = run_job(recipe, args.out, log=lambda m: print(m, flush=True))
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
