"""`python -m jobs.mix MIX.yaml -o OUT`: the same as `vlcurate mix` (jobs/cli.py; pipeline/mix.py builds it).
`python -m jobs.run MIX.yaml -o OUT` does the same; either is a `ray job submit` entry point."""

from __future__ import annotations

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["mix", *sys.argv[1:]]))
