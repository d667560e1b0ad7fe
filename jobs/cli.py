"""The `vlcurate` command line. Heavy imports (ray, pyarrow, torch) happen inside the commands, so
`--help` is fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

# A job whose input plans at most this many records runs on local worker processes instead of a local Ray
# (`--executor auto`): Ray's start (10-15 s on 2 cores) would cost more than such a job. Larger jobs, and
# every job on a cluster (RAY_ADDRESS), run on Ray: its object store, retries and many nodes pay off there.
LOCAL_MAX_ROWS = 10_000
EXECUTOR_HELP = ("where the job runs: auto (default) = local worker processes, no Ray, for an input of at most "
                 f"{LOCAL_MAX_ROWS:,} records (from the plan) without RAY_ADDRESS, else Ray; local; ray")


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
    run.add_argument("--executor", choices=("auto", "local", "ray"), default="auto", help=EXECUTOR_HELP)
    run.add_argument("--overwrite", action="store_true", help="delete OUT's earlier job first, only what a job "
                     "wrote (default: resume a job of the same recipe and input, refuse another)")
    run.add_argument("--keep-work", action="store_true", help="keep all of OUT/_work after success (default: "
                     "drop the image bytes only a resume needs; ids and scores stay for regen-sft)")
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
    ins.add_argument("--candidates", action="store_true", help="a chain-of-thought job: one prompt's candidates "
                     "with their verdicts (--id: a prompt or candidate id)")
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
    regen.add_argument("--executor", choices=("auto", "local", "ray"), default="auto", help=EXECUTOR_HELP)
    regen.add_argument("--overwrite", action="store_true", help="delete NEW_OUT's earlier job first")
    regen.add_argument("--keep-work", action="store_true", help="keep all of NEW_OUT/_work after success")

    mix = sub.add_parser("mix", help="compose finished jobs into one training stage's data by ratio",
                         description="Build MIX.yaml's sources (finished job folders, chat / text jsonl) into OUT "
                         "by weight, deterministic by seed, with lineage; see README, Training-stage mixes.")
    mix.add_argument("mix", help="MIX.yaml")
    mix.add_argument("-o", "--out", required=True, help="output folder (a new one, or an earlier mix: rebuilt)")
    mix.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override any mix key, e.g. --set sources.ocr.weight=0.4")
    mix.add_argument("--overwrite", action="store_true", help="replace a job folder's outputs with the mix")

    rep = sub.add_parser("report", help="write OUT/report.html: funnel, drop reasons, score histograms, packing")
    rep.add_argument("out", help="job output folder")

    tiny = sub.add_parser("make-tiny-model", help="write the tiny random Qwen2.5-VL (real tokenizer) for tests",
                          description="Write a tiny randomly initialised Qwen2.5-VL with the real Qwen2.5-VL "
                          "tokenizer, processor and chat template into DIR, a normal model directory.")
    tiny.add_argument("dir", help="output directory (replaced if present)")
    return p


def safe_environment() -> None:
    """Defaults a user would otherwise export by hand: never reach a model hub (models are local paths), no
    usage reporting, and, for a local Ray, one auth mode for the head and this driver. A value the user set
    wins; under `ray job submit` (RAY_ADDRESS set) the cluster's auth settings are left alone."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(key, value)
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    safe_environment()
    if args.command == "run":
        return _run(args)
    if args.command == "inspect" and args.candidates:
        from pipeline.candidates import show

        return show(args.out, args.row_id, as_json=args.json)
    if args.command == "inspect":
        from jobs.inspect import inspect_job

        return inspect_job(args)
    if args.command == "mix":
        return _mix(args)
    if args.command == "report":
        return _report(args)
    if args.command == "regen-sft":
        return _regen(args)
    if args.command == "make-tiny-model":
        from model.tiny import build_tiny_qwen25vl

        print(f"vlcurate: wrote {build_tiny_qwen25vl(args.dir)}")
        return 0
    return 2


def _mix(args: argparse.Namespace) -> int:
    """Validate, build, print asked vs achieved shares; a mix or source problem is one line and exit 2."""
    from pipeline.mix import format_summary, load_mix, run_mix
    from pipeline.ray_env import RayEnvError, check_output_location
    from pipeline.spec import RecipeError

    try:
        mix = load_mix(args.mix, args.sets)
        check_output_location(args.out)
        stats = run_mix(mix, args.out, overwrite=args.overwrite, log=lambda m: print(m, flush=True))
    except (RecipeError, RayEnvError) as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    print("\n".join(format_summary(args.out, stats)))
    from jobs.report import build_report

    print(f"  report: {build_report(args.out)}")
    return 0


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

    return _execute(lambda: load_recipe(args.recipe, args.sets, args.input), args)


def _regen(args: argparse.Namespace) -> int:
    """Rerun a finished job's recipe with overrides into a new folder, reusing its model scores."""
    from pipeline.recipe import RecipeError, parse_recipe, set_dotted
    from pipeline.storage import Store

    def load():  # noqa: ANN202
        store = Store(args.out)
        if not store.exists("job.json"):
            raise RecipeError(f"{args.out}: no job.json (is this a finished vlcurate job folder?)")
        job = json.loads(store.read_bytes("job.json"))
        raw = job.get("recipe_as_given") or job["recipe"]  # as written: readers choose their own defaults
        for section in ("format", "pack"):
            if raw.get(section) is None:
                raw.pop(section, None)
        raw["input"]["path"] = args.input or job.get("input_path") or raw["input"]["path"]
        for assignment in args.sets:
            set_dotted(raw, assignment)
        return parse_recipe(raw)

    return _execute(load, args, out=args.new_out, reuse_from=args.out)


def _execute(load_recipe: Any, args: argparse.Namespace, out: str | None = None,
             reuse_from: str | None = None) -> int:
    """Everything that can be refused is checked before Ray starts: the recipe, the input, the stages'
    model files and the output folder. Then the job runs; Ctrl-C is one line, and a rerun resumes."""
    from pipeline import outdir
    from pipeline.ray_env import RayEnvError, check_output_location
    from pipeline.readers import check_input, fingerprint, reader_for
    from pipeline.recipe import RecipeError, check_stages
    from pipeline.storage import Store
    from pipeline.writers import job_identity

    out = out or args.out
    try:
        recipe = load_recipe()
        check_output_location(out)
        parts = reader_for(recipe.input).plan(recipe.input)  # a missing input fails here
        check_input(recipe, parts, allow_empty=getattr(args, "allow_empty", False))
        if reuse_from is None:
            check_stages(recipe)
        inputs = fingerprint(recipe.input, parts)
        outdir.claim(Store(out), job_identity(recipe, parts, inputs), overwrite=args.overwrite)
        result = _run_on_ray(recipe, out, args, reuse_from=reuse_from, parts=parts, inputs=inputs)
    except (RecipeError, RayEnvError) as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlcurate: interrupted; rerun the same command to resume (finished work in {out} is kept)",
              file=sys.stderr)
        return 130
    from jobs.summary import print_summary

    print_summary(result.out, result.stats)
    if recipe.model.output.report:
        from jobs.report import build_report

        print(f"  report: {build_report(out)}")
    return 0


def _run_on_ray(recipe: Any, out: str, args: argparse.Namespace, **job: Any) -> Any:
    """Start (or join) Ray, run the job, stop a Ray we started. Ray's native messages go to a file, named
    when the job fails for another reason than a recipe problem or Ctrl-C."""
    from pipeline.ray_env import RayEnvError, native_stderr_to, start_ray
    from pipeline.raymap import local_executor
    from pipeline.recipe import RecipeError

    workers = args.num_cpus or os.cpu_count() or 1
    if _runs_locally(args.executor, recipe, job["parts"]):
        print(f"[vlcurate] small input: running on {workers} local worker process(es), without Ray "
              "(--executor ray to use Ray)", flush=True)
        from pipeline.runner import run_job

        with local_executor(workers):
            return run_job(recipe, out, log=lambda m: print(m, flush=True), keep_work=args.keep_work, **job)
    messages = os.path.join(tempfile.gettempdir(), f"vlcurate-ray-{os.getpid()}.log")
    started = False
    try:
        with native_stderr_to(messages):
            try:
                started = start_ray(num_cpus=args.num_cpus)
                from pipeline.runner import run_job

                result = run_job(recipe, out, log=lambda m: print(m, flush=True), keep_work=args.keep_work, **job)
            finally:
                if started:
                    import ray

                    ray.shutdown()
    except (RecipeError, RayEnvError, KeyboardInterrupt):
        raise
    except BaseException:
        print(f"vlcurate: the job failed; Ray's own messages are in {messages}", file=sys.stderr)
        raise
    if os.path.exists(messages):
        os.remove(messages)
    return result


def _runs_locally(executor: str, recipe: Any, parts: list[Any]) -> bool:
    """`--executor auto`: local processes for a small input when no cluster is named and this process has
    not initialised Ray itself (see LOCAL_MAX_ROWS)."""
    if executor != "auto":
        return executor == "local"
    ray = sys.modules.get("ray")
    if os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):  # a cluster, or a Ray in use
        return False
    rows = sum(p.stop - p.start if p.stop is not None else recipe.input.partition_rows for p in parts)
    return rows <= LOCAL_MAX_ROWS


if __name__ == "__main__":
    sys.exit(main())
