"""`python -m jobs.run RECIPE -o OUT` — the same as `vlcurate run` (this is the `ray job submit` entry point).

A MIX.yaml (a file naming `sources`, as jobs/recipes/stage*.yaml do) runs as `vlcurate mix` does, so
`ray job submit -- python -m jobs.run jobs/recipes/stage2_multitask.yaml -o OUT` builds a training-stage mix."""

from __future__ import annotations

import contextlib
import io
import sys

from jobs.cli import _parser, main
from pipeline.mix import is_mix_file


def command(argv: list[str]) -> list[str]:
    """The vlcurate command line for `python -m jobs.run ARGV`: `mix ...` for a MIX.yaml, else `run ...`."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            recipe = _parser().parse_args(["run", *argv]).recipe
    except SystemExit:  # a bad command line: let `run` print its usage line
        return ["run", *argv]
    return ["mix" if is_mix_file(recipe) else "run", *argv]


if __name__ == "__main__":
    sys.exit(main(command(sys.argv[1:])))
