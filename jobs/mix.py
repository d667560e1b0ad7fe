"""`vlcurate mix MIX.yaml -o OUT` (and `python -m jobs.mix MIX.yaml -o OUT`, the `ray job submit` entry point):
compose finished jobs into one training stage's data by ratio (pipeline/mix.py)."""

from __future__ import annotations

import argparse
import sys

from jobs.cli import main
from pipeline.mix import format_summary, load_mix, run_mix
from pipeline.ray_env import RayEnvError, check_output_location
from pipeline.recipe import RecipeError


def mix_command(args: argparse.Namespace) -> int:
    """Validate, build, print asked vs achieved shares; a mix or source problem is one line and exit 2."""
    try:
        mix = load_mix(args.mix, args.sets)
        check_output_location(args.out)
        stats = run_mix(mix, args.out, overwrite=args.overwrite, log=lambda m: print(m, flush=True))
    except (RecipeError, RayEnvError) as e:
        print(f"vlcurate: {e}", file=sys.stderr)
        return 2
    print("\n".join(format_summary(args.out, stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main(["mix", *sys.argv[1:]]))
