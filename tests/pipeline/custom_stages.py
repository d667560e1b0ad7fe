"""A global and an expand stage written in the tests, to exercise the runner's machinery."""

from __future__ import annotations

import statistics
import time

from filters.base import Params, Stage


class WideHalf(Stage):
    """Global: keeps the rows at or above the median width of the whole dataset."""

    kind = "global"

    def score(self, batch):
        return {"area": [w * h for w, h in zip(batch["width"], batch["height"], strict=True)]}

    def decide_global(self, table):
        median = statistics.median(table["width"])
        return {"drop_reason": [None if w >= median else "narrow" for w in table["width"]],
                "median_width": [float(median)] * len(table["id"])}

    def score_columns(self):
        return ["area"]


class SplitParams(Params):
    copies: int = 2


class Split(Stage):
    """Expand: one record -> `copies` samples; a record whose caption mentions "good2" yields none."""

    kind = "expand"
    Params = SplitParams

    def expand(self, row):
        if "good2" in (row.get("text") or ""):
            return "unsplittable"
        return [{"text": f"{row['text']} (copy {k})", "copy": k} for k in range(self.params.copies)]


class SlowLogParams(Params):
    log: str
    seconds: float = 0.5


class SlowLog(Stage):
    """Map: sleeps per batch and appends the ids it scored to a log file (to see what a rerun recomputes)."""

    Params = SlowLogParams

    def score(self, batch):
        time.sleep(self.params.seconds)
        with open(self.params.log, "a") as f:
            f.write("".join(f"{i}\n" for i in batch["id"]))
        return {}


class NapParams(Params):
    seconds: float = 1.0


class Nap(Stage):
    """Map: keeps every row after sleeping `seconds` per batch (a job slow enough to interrupt)."""

    kind = "map"
    Params = NapParams

    def score(self, batch):
        time.sleep(self.params.seconds)
        return {}

    def decide(self, batch):
        return [None] * len(batch["id"])
