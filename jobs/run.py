"""`python -m jobs.run RECIPE -o OUT` — the same as `vlcurate run` (this is the `ray job submit` entry point)."""

from __future__ import annotations

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
