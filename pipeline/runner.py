"""The runner: plans partitions and steps, runs the stage kinds on Ray Data, counts, times and resumes.

A *step* is a run of stages executed per partition in one Ray Data `map_batches` call: stateless stages
fuse into one task per partition; a stage that holds a model gets a step of its own on an actor pool
(`setup()` once per actor, `num_gpus` from the stage). A global stage ends a step: its scores are written
per partition, one decision is taken over the id + score columns of the whole dataset, and the next step
applies it. Each step writes `_work/STEP/PART.parquet` then `_work/STEP/PART.done` (the completion marker,
holding that partition's per-stage counts); a rerun skips the partitions already done. Step files hold no
image bytes the input holds (pipeline/media.py puts them back from the input); the last step writes each
partition's kept samples into its shards (`write`). `ray_map` runs the steps on Ray, or on local processes
for a small job (pipeline/raymap.py).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from filters.base import Stage
from pipeline import candidates, media, outdir, readers, thumbs, writers
from pipeline.progress import Progress, step_rows
from pipeline.raymap import ray_map
from pipeline.recipe import Recipe, check_stages, parse_recipe
from pipeline.schema import (
    HEAVY_COLUMNS,
    JSON_COLUMNS,
    make_id,
    rows_to_table,
    table_to_rows,
)
from pipeline.storage import WORK, Store


@dataclass
class Op:
    kind: str  # read | map | score | apply | expand | write
    key: str
    stage_index: int = -1


@dataclass
class Step:
    name: str
    ops: list[Op] = field(default_factory=list)
    holds_model: bool = False
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 1


def plan_steps(recipe: Recipe) -> list[Step]:
    """Group the recipe's stages into steps (see the module docstring)."""
    steps: list[Step] = []
    ops: list[Op] = [Op("read", "read")]

    def flush(**kw: Any) -> None:
        nonlocal ops
        if ops:
            first = next((o.key for o in ops if o.kind not in ("apply", "read")), ops[0].key)
            steps.append(Step(f"{len(steps):02d}-{first}", ops, **kw))
        ops = []

    for i, spec in enumerate(recipe.stages):
        cls = spec.cls
        if cls.holds_model:
            pending = [o for o in ops if o.kind == "apply"] if all(o.kind == "apply" for o in ops) else []
            if not pending:
                flush()
            kind = {"map": "map", "global": "score", "expand": "expand"}[cls.kind]
            ops = [*pending, Op(kind, spec.key, i)]
            built = spec.build()  # an instance may ask for more than its class (a `device: cuda` parameter)
            flush(holds_model=True, num_cpus=built.num_cpus, num_gpus=built.num_gpus, actors=spec.actors)
            if cls.kind == "global":
                ops = [Op("apply", spec.key, i)]
            continue
        if cls.kind == "global":
            ops.append(Op("score", spec.key, i))
            flush()
            ops = [Op("apply", spec.key, i)]
        else:
            ops.append(Op(cls.kind, spec.key, i))
    # the last step writes each partition's kept rows into its shard(s), after the last decisions
    ops.append(Op("write", "write"))
    flush()
    return steps


# ----------------------------------------------------------------------------------------------------------
# Per-partition execution (runs inside Ray tasks / actors)


def error_text(e: BaseException) -> str:
    """An exception as one short line without object addresses, so rejects are the same on every run."""
    return re.sub(r" ?<[^>]* at 0x[0-9a-f]+>", "", f"{type(e).__name__}: {e}")[:500]


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    return {k: [r.get(k) for r in rows] for k in keys}


def _drop(row: dict[str, Any], stage: str, reason: str) -> None:
    row["drop_stage"], row["drop_reason"] = stage, reason
    thumbs.stash(row)  # a capped sample of dropped rows keeps a thumbnail (pipeline/thumbs.py)
    row["images"] = []


def _stat(n_in: int = 0) -> dict[str, Any]:
    return {"in": n_in, "kept": 0, "dropped": {}, "seconds": 0.0}


def apply_map(stage: Stage, rows: list[dict[str, Any]], decide: bool = True) -> dict[str, Any]:
    """Score (and decide) the kept rows in batches; a batch that raises is retried row by row, and a row that
    still raises is dropped with `stage_error` (its message in meta.error), never failing the partition."""
    alive = [r for r in rows if r.get("drop_stage") is None]
    stat = _stat(len(alive))
    reasons: Counter[str] = Counter()
    for s in range(0, len(alive), stage.batch_size):
        chunk = alive[s:s + stage.batch_size]
        try:
            results = [_score_rows(stage, chunk, decide)]
            groups = [chunk]
        except Exception:
            results, groups = [], []
            for row in chunk:
                try:
                    results.append(_score_rows(stage, [row], decide))
                except Exception as e:  # one bad row is data, not a crash
                    row["meta"] = {**(row.get("meta") or {}), "error": error_text(e)}
                    results.append(({}, ["stage_error"]))
                groups.append([row])
        for group, (cols, why) in zip(groups, results, strict=True):
            for j, row in enumerate(group):
                for name, values in cols.items():
                    if not name.startswith("_"):
                        row[name] = values[j]
                if why[j] is not None:
                    _drop(row, stage.name, why[j])
                    reasons[why[j]] += 1
    stat["dropped"] = dict(sorted(reasons.items()))
    stat["kept"] = stat["in"] - sum(reasons.values())
    return stat


def _score_rows(stage: Stage, rows: list[dict[str, Any]], decide: bool) -> tuple[dict, list[str | None]]:
    batch = _columns(rows)
    cols = stage.score(batch)
    bad = [k for k, v in cols.items() if len(v) != len(rows)]
    if bad:
        raise ValueError(f"stage {stage.name} returned columns of the wrong length: {bad}")
    why = stage.decide({**batch, **cols}) if decide else [None] * len(rows)
    return cols, list(why)


def apply_expand(stage: Stage, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One record -> its samples. Children get `parent_id`, an id from (parent id, stage, index) and a source;
    a record with no sample is dropped with the stage's reason (`no_samples` if it gave none)."""
    out: list[dict[str, Any]] = []
    stat = _stat()
    reasons: Counter[str] = Counter()
    child_reasons: Counter[str] = Counter()
    samples = 0
    for row in rows:
        if row.get("drop_stage") is not None:
            out.append(row)
            continue
        stat["in"] += 1
        try:
            result = stage.expand(row)
        except Exception as e:
            row["meta"] = {**(row.get("meta") or {}), "error": error_text(e)}
            result = "stage_error"
        if isinstance(result, str) or not result:
            reason = result if isinstance(result, str) else "no_samples"
            _drop(row, stage.name, reason)
            reasons[reason] += 1
            out.append(row)
            continue
        for j, child in enumerate(result):
            sample = {k: copy.deepcopy(v) if k in JSON_COLUMNS else v for k, v in row.items()}
            sample.update(child)
            if child.get("drop_reason"):
                child_reasons[child["drop_reason"]] += 1
                sample["drop_stage"] = child.get("drop_stage") or stage.name
                sample["images"] = []
            sample["parent_id"] = row["id"]
            sample["id"] = make_id(row["id"], stage.name, j)
            sample["source"] = f"{row['source']}#{stage.name}[{j}]"
            out.append(sample)
        samples += len(result)
    stat["dropped"] = dict(sorted(reasons.items()))
    stat["kept"] = stat["in"] - sum(reasons.values())
    stat["samples"] = samples
    stat["samples_dropped"] = dict(sorted(child_reasons.items()))
    return out, stat


def apply_decisions(key: str, rows: list[dict[str, Any]], decisions: dict[str, dict[str, Any]]) -> dict:
    alive = [r for r in rows if r.get("drop_stage") is None]
    stat = _stat(len(alive))
    reasons: Counter[str] = Counter()
    for row in alive:
        dec = decisions.get(row["id"])
        if dec is None:
            continue
        for name, value in dec.items():
            if name != "drop_reason":
                row[name] = value
        if dec.get("drop_reason"):
            _drop(row, key, dec["drop_reason"])
            reasons[dec["drop_reason"]] += 1
    stat["dropped"] = dict(sorted(reasons.items()))
    stat["kept"] = stat["in"] - sum(reasons.values())
    return stat


class StepWorker:
    """Runs one step over partitions: built once per task or actor (stage `setup()` here)."""

    def __init__(self, raw_recipe: dict[str, Any], out: str, step: dict[str, Any], prev: str | None,
                 reuse: dict[str, Any] | None = None) -> None:
        self.recipe = parse_recipe(raw_recipe)
        self.store = Store(out)
        self.step = Step(step["name"], [Op(**o) for o in step["ops"]])
        self.last = bool(step.get("last"))
        self.prev = prev
        self.stages: dict[str, Any] = {}
        reuse = reuse or {}
        for op in self.step.ops:
            if op.kind in ("map", "score", "expand"):
                stage = self.recipe.stages[op.stage_index].build()
                if op.key in reuse and op.kind == "expand":  # frozen chain-of-thought candidates
                    stage = candidates.FrozenCandidates(stage, reuse[op.key])
                elif op.key in reuse:
                    stage = ReusedScores(stage, load_scores(reuse[op.key], stage.score_columns()))
                else:
                    stage.setup()
                self.stages[op.key] = stage
        self.decisions: dict[str, dict[str, dict[str, Any]]] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        names, rows = [], []
        for part_json in batch["part"]:
            part = readers.Partition(**json.loads(str(part_json)))
            rows.append(self.run_partition(part))
            names.append(part.name)
        return {"part": names, "rows": rows}

    def _decisions(self, key: str) -> dict[str, dict[str, Any]]:
        if key not in self.decisions:
            rows = self.store.read_parquet(WORK, "decisions", f"{key}.parquet").to_pylist()
            self.decisions[key] = {r.pop("id"): r for r in rows}
        return self.decisions[key]

    def run_partition(self, part: readers.Partition) -> None:
        stats: dict[str, Any] = {}
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        reader = readers.reader_for(self.recipe.input)
        roots: media.Roots = {}
        if self.prev is not None:
            rows = table_to_rows(self.store.read_parquet(WORK, self.prev, f"{part.name}.parquet"))
            roots = media.restore(rows, lambda: reader.read(self.recipe.input, part), part.name)
        n_in = len(rows)  # the rows this partition brought to the step (its progress)
        for op in self.step.ops:
            t = time.perf_counter()
            if op.kind == "read":
                rows = reader.read(self.recipe.input, part)
                if media.rereadable(reader):
                    roots = media.mark_roots(rows)
                n_in = len(rows)
                dropped = Counter(r["drop_reason"] for r in rows if r.get("drop_stage") is not None)
                stat = {"in": len(rows), "kept": len(rows) - sum(dropped.values()),
                        "dropped": dict(sorted(dropped.items())),
                        "media_bytes": sum(len(b) for r in rows for b in r.get("images") or [])}
            elif op.kind in ("map", "score"):
                stat = apply_map(self.stages[op.key], rows, decide=op.kind == "map")
                if isinstance(self.stages[op.key], ReusedScores):
                    stat["scores_reused"] = self.stages[op.key].take_reused()
            elif op.kind == "expand":
                rows, stat = apply_expand(self.stages[op.key], rows)
            elif op.kind == "apply":
                stat = apply_decisions(op.key, rows, self._decisions(op.key))
            elif op.kind == "write":
                stat = self.write(part, rows)
            else:
                raise ValueError(f"unknown op {op.kind}")
            stat["seconds"] = round(time.perf_counter() - t, 4)
            if op.kind == "score":  # counted when the decision is applied, in the next step
                stat = {k: stat[k] for k in ("seconds", "scores_reused") if k in stat}
            stats[op.key] = stat
        thumbs.save(self.store, self.step.name, part.name, rows)
        if self.last:  # the shards hold the bytes and tokens now: nothing reads them from here
            rows = [{k: v for k, v in r.items() if k not in HEAVY_COLUMNS} for r in rows]
        else:
            media.to_refs(rows, roots)
        self.store.write_parquet(rows_to_table(rows), WORK, self.step.name, f"{part.name}.parquet", work=True)
        marker = {"partition": part.name, "rows": len(rows), "seconds": round(time.perf_counter() - t0, 4),
                  "stages": stats}
        self.store.write_bytes(json.dumps(marker).encode(), WORK, self.step.name, f"{part.name}.done")
        return n_in

    def write(self, part: readers.Partition, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The partition's kept rows into its shard(s), sorted by id; pack members to the pack writers."""
        kept = [r for r in rows if r.get("drop_stage") is None]
        names = writers.write_partition_shards(self.store, part.name, kept, self.recipe.model.output.shard_bytes)
        by_pack: dict[int, list[dict[str, Any]]] = {}
        for r in kept:
            if r.get("pack_shard") is not None:
                by_pack.setdefault(int(r["pack_shard"]), []).append(r)
        for k, members in sorted(by_pack.items()):
            cols = ("id", "pack_id", "pack_pos", "input_ids", "labels", "images", "meta")
            table = rows_to_table([{c: m.get(c) for c in cols} for m in members]).select(list(cols))
            self.store.write_parquet(table, WORK, "packbuckets", f"{k:05d}", f"{part.name}.parquet",
                                     work=True)
        return {"in": len(kept), "kept": len(kept), "dropped": {}, "shards": len(names),
                "bytes": sum(len(b) for r in kept for b in r.get("images") or [])}


class ReusedScores:
    """A model stage whose scores an earlier job already computed (same parameters but `decision_params`):
    rows it scored get those scores; only the others reach the model, which is loaded on first need."""

    def __init__(self, stage: Stage, cache: dict[str, dict[str, Any]]) -> None:
        self.stage, self.cache, self.ready, self.reused = stage, cache, False, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stage, name)

    def take_reused(self) -> int:
        n, self.reused = self.reused, 0
        return n

    def score(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        ids = batch["id"]
        cols: dict[str, list[Any]] = {c: [None] * len(ids) for c in self.stage.score_columns()}
        missing = []
        for i, row_id in enumerate(ids):
            cached = self.cache.get(row_id)
            if cached is None:
                missing.append(i)
                continue
            for c, v in cached.items():
                cols[c][i] = v
            self.reused += 1
        if missing:
            if not self.ready:
                self.stage.check()
                self.stage.setup()
                self.ready = True
            got = self.stage.score({k: [v[i] for i in missing] for k, v in batch.items()})
            for c, values in got.items():
                cols.setdefault(c, [None] * len(ids))
                for i, v in zip(missing, values, strict=True):
                    cols[c][i] = v
        return cols

    def decide(self, batch: dict[str, list[Any]]) -> list[str | None]:
        return self.stage.decide(batch)


def load_scores(source: dict[str, Any], columns: list[str]) -> dict[str, dict[str, Any]]:
    """id -> score columns, from an earlier job's final step (rows it never scored are left out)."""
    table = Store(source["uri"]).read_folder(WORK, source["step"], columns=["id", *columns])
    present = [c for c in columns if c in table.column_names]
    out = {}
    for row in table.select(["id", *present]).to_pylist():
        scores = {c: row[c] for c in present}
        if any(v is not None for v in scores.values()):
            out[row.pop("id")] = scores
    return out


def reusable_scores(recipe: Recipe, old_out: str) -> dict[str, dict[str, Any]]:
    """The global model stages of `recipe` whose scores the job in `old_out` computed with the same
    parameters (apart from the stage's `decision_params`)."""
    old_store = Store(old_out)
    job = json.loads(old_store.read_bytes("job.json"))
    old_stages = job["recipe"].get("stages", {})
    out = {}
    for spec in recipe.stages:
        old = old_stages.get(spec.key)
        # global stages decide from the stored score columns alone, so their scores can stand in for the model
        if not spec.cls.holds_model or spec.cls.kind != "global" or old is None or old.get("use") != spec.use:
            continue
        new = {"use": spec.use, **spec.params.model_dump(mode="json")}
        drop = set(spec.cls.decision_params) | {"actors"}
        if {k: v for k, v in new.items() if k not in drop} == {k: v for k, v in old.items() if k not in drop}:
            # the step that scored it: later steps may hold other ids (formatted samples replace records)
            step = job.get("score_steps", {}).get(spec.key, job["final_step"])
            out[spec.key] = {"uri": old_out, "step": step}
    return out


def run_step_task(batch: dict[str, Any], raw_recipe: dict[str, Any], out: str, step: dict[str, Any],
                  prev: str | None, reuse: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """Stateless steps run as plain Ray tasks: build the stages, run the partitions of this batch."""
    return StepWorker(raw_recipe, out, step, prev, reuse)(batch)


# ----------------------------------------------------------------------------------------------------------
# Driver side


def _merge_stats(total: dict[str, Any], stat: dict[str, Any]) -> None:
    for k, v in stat.items():
        if isinstance(v, dict):
            d = total.setdefault(k, {})
            for reason, n in v.items():
                d[reason] = d.get(reason, 0) + n
        elif isinstance(v, int | float):
            total[k] = round(total.get(k, 0) + v, 4)


@dataclass
class JobResult:
    out: str
    stats: dict[str, Any]
    skipped_partitions: int


def run_job(recipe: Recipe, out: str, log: Any = print, reuse_from: str | None = None,
            parts: list[readers.Partition] | None = None, inputs: list[dict[str, Any]] | None = None,
            keep_work: bool = False) -> JobResult:
    """Run a whole job into OUT; Ray must be initialised (jobs.run does that). With `reuse_from` (an earlier
    job's folder), model stages take the scores that job computed instead of running the model. `parts` and
    `inputs` (the plan and the input fingerprint) are passed by the CLI, which computes them before Ray
    starts. A job that already finished in OUT is not run again."""

    t_start = time.perf_counter()
    store = Store(out)
    spec = recipe.input
    if parts is None:
        parts = readers.reader_for(spec).plan(spec)
    if inputs is None:
        inputs = readers.fingerprint(spec, parts)  # read once: resume identity and job.json
    outdir.claim(store, writers.job_identity(recipe, parts, inputs))
    removed = store.remove_temporary()
    if removed:
        log(f"[vlcurate] removed {removed} half-written file(s) of an interrupted run")
    if outdir.is_complete(store):
        log(f"[vlcurate] {out} already holds this finished job: nothing to do")
        return JobResult(out, json.loads(store.read_bytes("stats.json")), len(parts))
    reuse = {**reusable_scores(recipe, reuse_from), **candidates.reusable(recipe, reuse_from)} if reuse_from else {}
    for key in reuse:
        log(f"[vlcurate] {key}: reusing {'candidates' if 'candidates' in reuse[key] else 'scores'} from {reuse_from}")
    check_stages(recipe, skip=set(reuse))
    steps = plan_steps(recipe)
    stats: dict[str, dict[str, Any]] = {"read": {}}
    for spec_ in recipe.stages:
        stats[spec_.key] = {}
    stats["write"] = {}
    skipped = 0
    prev: str | None = None
    for step in steps:
        done = set(store.list(WORK, step.name))
        todo = [p for p in parts if f"{p.name}.done" not in done]
        skipped += len(parts) - len(todo)
        if todo:
            log(f"[vlcurate] step {step.name}: {len(todo)} partition(s)"
                + (f", {len(parts) - len(todo)} already done" if len(todo) < len(parts) else ""))
            items = [{"part": json.dumps(asdict(p))} for p in todo]
            kwargs = dict(raw_recipe=recipe.raw, out=out, prev=prev, reuse=reuse,
                          step={"name": step.name, "ops": [asdict(o) for o in step.ops],
                                "last": step is steps[-1]})
            t = time.perf_counter()
            bar = Progress(f"[vlcurate] step {step.name}", step_rows(store, prev, todo), len(todo))
            try:
                if step.holds_model:
                    ray_map(items, StepWorker, actor=True, num_cpus=step.num_cpus, num_gpus=step.num_gpus,
                             actors=step.actors, progress=bar, **kwargs)
                else:
                    ray_map(items, run_step_task, progress=bar, **kwargs)
            finally:
                bar.close()
            log(f"[vlcurate] step {step.name}: done in {time.perf_counter() - t:.1f} s")
        for p in parts:
            marker = json.loads(store.read_bytes(WORK, step.name, f"{p.name}.done"))
            for key, stat in marker["stages"].items():
                if key in stats:
                    _merge_stats(stats[key], stat)
        for last in [o for o in step.ops if o.kind == "score"]:  # a global stage ends its step
            t = time.perf_counter()
            n = decide_global(recipe, last.stage_index, store, step.name)
            stats[last.key]["decide_seconds"] = round(time.perf_counter() - t, 4)
            log(f"[vlcurate] {last.key}: global decision over {n} row(s)")
        prev = step.name
    assert prev is not None
    writers.write_outputs(recipe, store, parts, inputs, prev, stats, log=log,
                          score_steps={o.key: s.name for s in steps for o in s.ops if o.kind == "score"})
    candidates.write(recipe, store, steps, parts, log=log)
    stats_doc = writers.write_stats(store, recipe, stats, parts, skipped, time.perf_counter() - t_start)
    stats_doc = outdir.finish(store, [s.name for s in steps], keep_work, stats_doc)
    return JobResult(out, stats_doc, skipped)


def decide_global(recipe: Recipe, index: int, store: Store, step: str) -> int:
    """One decision over the id + score columns of every partition (never image bytes)."""
    spec = recipe.stages[index]
    stage = spec.build()
    table = store.read_folder(WORK, step, exclude=(*HEAVY_COLUMNS, *JSON_COLUMNS))
    if "drop_stage" in table.schema.names:
        table = table.filter(pc.is_null(table["drop_stage"]))
    # a stage that reads Arrow columns itself (dedup over millions of rows) gets them without Python objects
    arrow = getattr(stage, "arrow_columns", False)
    cols = {n: table[n] for n in table.column_names} if arrow else table.to_pydict()
    decision = stage.decide_global(cols) if len(table) else {"drop_reason": []}
    out = {"id": table["id"] if len(table) else [], **decision}
    store.write_parquet(pa.table(out) if len(table) else rows_to_table([]).select(["id", "drop_reason"]),
                        WORK, "decisions", f"{spec.key}.parquet")
    return len(table)
