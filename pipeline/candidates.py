"""Frozen chain-of-thought candidates (filters/cot.py): `OUT/candidates.parquet`, the DPO set in `OUT/dpo/`,
and `regen-sft` taking candidates from an earlier job instead of a model.

GPU sampling is not reproducible, so candidates, once generated, are data: a resumed job never regenerates a
finished partition's (the generate step's partition files are its completion markers, like any step's), and
`regen-sft` re-reads them. `candidates.parquet` holds one row per candidate: `parent_id` (the prompt), the
generation (`cot_sample`, `cot_seed`, `cot_model`, `prompt`, `cot_text`, `cot_finish_reason`, `cot_tokens`),
the verification and quality columns, the verdict (`cot_verdict`, `cot_reason`, `cot_selected`,
`dpo_chosen`) and where it ended (`drop_stage`, `drop_reason`; null when it became an SFT sample).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from filters.base import Stage
from filters.cot import GENERATED, CotGenerate, CotSelect, CotVisual, candidate_row
from pipeline import media
from pipeline.readers import Partition, reader_for
from pipeline.schema import HEAVY_COLUMNS, JSON_COLUMNS, MEDIA_COLUMNS
from pipeline.spec import Recipe, StageSpec
from pipeline.storage import WORK, Store, is_remote
from pipeline.tar import image_extension

CANDIDATES = "candidates.parquet"
DPO = "dpo"
RENAMED = {"text": "prompt", "answer": "cot_text"}


def _spec(recipe: Recipe, cls: type[Stage]) -> StageSpec | None:
    return next((s for s in recipe.stages if issubclass(s.cls, cls)), None)


def _step_of(steps: list[Any], kind: str, key: str) -> str | None:
    return next((s.name for s in steps for o in s.ops if o.kind == kind and o.key == key), None)


# ---------------------------------------------------------------------------------------------- regen-sft


def _same(spec: StageSpec | None, old_stages: dict[str, Any], skip: set[str]) -> bool:
    old = old_stages.get(spec.key) if spec is not None else None
    new = {"use": spec.use, **spec.params.model_dump(mode="json")} if spec is not None else None
    return old is not None and {k: v for k, v in new.items() if k not in skip} == {
        k: v for k, v in old.items() if k not in skip}


def reusable(recipe: Recipe, old_out: str) -> dict[str, dict[str, Any]]:
    """What `regen-sft` takes from the job in `old_out` when it wrote candidates with the same generation
    parameters (apart from `CotGenerate.runtime_params`): {generate stage key: {"candidates": old_out}}, and
    for an unchanged visual stage its scores from the step that scored it (the final step no longer holds the
    selected candidates: the format stage replaced them by their samples)."""
    spec = _spec(recipe, CotGenerate)
    old_store = Store(old_out)
    if spec is None or not old_store.exists(CANDIDATES):
        return {}
    old_stages = json.loads(old_store.read_bytes("job.json"))["recipe"].get("stages", {})
    if not _same(spec, old_stages, set(spec.cls.runtime_params)):
        return {}
    out: dict[str, dict[str, Any]] = {spec.key: {"candidates": old_out}}
    visual = _spec(recipe, CotVisual)
    if visual is not None and _same(visual, old_stages, {*visual.cls.decision_params, "actors"}):
        step = next((n for n in old_store.list(WORK) if n.endswith(f"-{visual.key}") and n[:2].isdigit()), None)
        if step is not None:
            out[visual.key] = {"uri": old_out, "step": step}
    return out


class FrozenCandidates:
    """The generate stage with an earlier job's candidates: a prompt it generated for gets those (same sample
    order, so the same candidate ids); only a prompt it never saw reaches the model, loaded on first need."""

    def __init__(self, stage: CotGenerate, source: dict[str, Any]) -> None:
        self.stage, self.ready, self.reused = stage, False, 0
        table = Store(source["candidates"]).read_parquet(CANDIDATES, columns=[
            "parent_id", *(RENAMED.get(c, c) for c in GENERATED if c not in ("question", "gold_answer"))])
        self.cache: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(table.to_pylist(), key=lambda r: r["cot_sample"]):
            self.cache.setdefault(r["parent_id"], []).append(r)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stage, name)

    def expand(self, row: dict[str, Any]) -> list[dict[str, Any]] | str:
        frozen = self.cache.get(row["id"])
        if frozen is None:
            if not self.ready:
                self.stage.check()
                self.stage.setup()
                self.ready = True
            return self.stage.expand(row)
        self.reused += len(frozen)
        return [candidate_row(row, c["prompt"], c["cot_kind"], c["cot_sample"], c["cot_seed"], c["cot_model"],
                              c["cot_text"], c["cot_finish_reason"], c["cot_tokens"]) for c in frozen]


# ---------------------------------------------------------------------------------------------- outputs


def write(recipe: Recipe, store: Store, steps: list[Any], parts: list[Partition], log: Any = print) -> None:
    """`candidates.parquet` and `dpo/` of a job with a generate stage (nothing otherwise); `parts` are the
    job's input partitions (the DPO images are read from the input again: pipeline/media.py)."""
    gen = _spec(recipe, CotGenerate)
    if gen is None:
        return
    gen_step = _step_of(steps, "expand", gen.key)
    select = _spec(recipe, CotSelect)
    source = (_step_of(steps, "score", select.key) if select else None) or gen_step
    table = store.read_folder(WORK, source, exclude=(*HEAVY_COLUMNS, *JSON_COLUMNS))
    if "cot_sample" not in table.column_names:
        return
    table = table.filter(pc.is_valid(table["cot_sample"]))
    if select is not None and len(table):
        decisions = store.read_parquet(WORK, "decisions", f"{select.key}.parquet")
        decisions = decisions.rename_columns([c if c != "drop_reason" else "_selected_reason"
                                              for c in decisions.column_names])
        table = table.drop_columns([c for c in decisions.column_names if c != "id" and c in table.column_names])
        table = _no_null_types(table)  # Arrow's join refuses columns of type null (all values None)
        decisions = _no_null_types(decisions)
        table = table.join(decisions, "id", join_type="left outer")
        dropped_here = pc.is_valid(table["_selected_reason"])
        table = table.set_column(table.schema.get_field_index("drop_stage"), "drop_stage",
                                 pc.if_else(dropped_here, pa.scalar(select.key), table["drop_stage"]))
        table = table.set_column(table.schema.get_field_index("drop_reason"), "drop_reason",
                                 pc.coalesce(table["_selected_reason"], table["drop_reason"]))
        table = table.drop_columns(["_selected_reason"])
    table = table.rename_columns([RENAMED.get(c, c) for c in table.column_names])
    table = table.drop_columns([c for c in ("source",) if c in table.column_names])
    table = table.sort_by([("parent_id", "ascending"), ("cot_sample", "ascending")])
    store.write_parquet(table, CANDIDATES)
    by_name = {p.name: p for p in parts}

    def read_part(name: str) -> list[dict[str, Any]]:
        return reader_for(recipe.input).read(recipe.input, by_name[name])

    pairs = write_dpo(store, gen_step, table.to_pylist(), read_part) if "dpo_chosen" in table.column_names else 0
    log(f"[vlcurate] {len(table)} candidate(s) in {CANDIDATES}; {pairs} DPO pair(s) in {DPO}/")


def _no_null_types(table: pa.Table) -> pa.Table:
    return table.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type)
                                 for f in table.schema]))


def write_dpo(store: Store, gen_step: str, candidates: list[dict[str, Any]],
              read_part: Callable[[str], list[dict[str, Any]]] | None = None) -> int:
    """`dpo/data.jsonl` (LLaMA-Factory's sharegpt preference form, with `dataset_info.json`), `dpo/trl.jsonl`
    (TRL's conversational preference form: prompt / chosen / rejected / images; the prompt's content a list of
    image and text parts when any pair has an image, else a string) and `dpo/images/` (named by content hash,
    paths relative to `dpo/` in data.jsonl, absolute in trl.jsonl for a local job folder). `read_part(PART)`
    reads an input partition again, for images the step files hold by reference."""
    by_id = {c["id"]: c for c in candidates}
    pairs = [(by_id[c["dpo_chosen"]], c) for c in candidates if c.get("dpo_chosen")]
    images = _images(store, gen_step, {chosen["id"] for chosen, _ in pairs}, read_part)
    store.delete_dir(DPO)
    lf, trl, written = [], [], set()
    base = "" if is_remote(store.uri) else store.path(DPO) + "/"
    # one content type per file: a text-only prompt beside image ones is a list of parts too (Arrow's JSON
    # reader, and so `datasets` before its Json feature, refuses a column that is a string here, a list there)
    parts = any(images.get(chosen["id"]) for chosen, _ in pairs)
    for chosen, rejected in pairs:
        names = []
        for data in images.get(chosen["id"], []):
            name = f"{hashlib.sha1(data).hexdigest()[:20]}.{image_extension(data)}"
            if name not in written:
                store.write_bytes(data, DPO, "images", name)
                written.add(name)
            names.append(f"images/{name}")
        prompt = chosen["prompt"]
        lf.append({"conversations": [{"from": "human", "value": "<image>" * len(names) + prompt}],
                   "chosen": {"from": "gpt", "value": chosen["cot_text"]},
                   "rejected": {"from": "gpt", "value": rejected["cot_text"]},
                   "images": names, "prompt_id": chosen["parent_id"], "chosen_id": chosen["id"],
                   "rejected_id": rejected["id"], "rejected_reason": rejected["cot_reason"]})
        user = [*({"type": "image"} for _ in names), {"type": "text", "text": prompt}] if parts else prompt
        trl.append({"prompt": [{"role": "user", "content": user}],
                    "chosen": [{"role": "assistant", "content": chosen["cot_text"]}],
                    "rejected": [{"role": "assistant", "content": rejected["cot_text"]}],
                    "images": [base + n for n in names]})
    store.write_bytes("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lf).encode(), DPO, "data.jsonl")
    store.write_bytes("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in trl).encode(), DPO, "trl.jsonl")
    info = {"vlcurate_dpo": {"file_name": "data.jsonl", "formatting": "sharegpt", "ranking": True,
                             "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                                         "images": "images"}}}
    store.write_bytes(json.dumps(info, indent=2).encode(), DPO, "dataset_info.json")
    summary = {"pairs": len(pairs), "prompts": len({c["parent_id"] for c, _ in pairs}), "images": len(written),
               "rejected_reasons": dict(sorted(Counter(r["cot_reason"] for _, r in pairs).items())),
               "llamafactory": "dataset_dir: OUT/dpo, dataset: vlcurate_dpo, stage: dpo",
               "trl": "datasets.load_dataset('json', data_files='OUT/dpo/trl.jsonl')"
                      ".cast_column('images', datasets.Sequence(datasets.Image()))"}
    store.write_bytes(json.dumps(summary, indent=2).encode(), DPO, "dpo.json")
    return len(pairs)


def _images(store: Store, step: str, ids: set[str],
            read_part: Callable[[str], list[dict[str, Any]]] | None) -> dict[str, list[bytes]]:
    """The image bytes of these candidates, from the generate step's partition files (or, where those hold
    them by reference, from the input)."""
    out: dict[str, list[bytes]] = {}
    for name in store.list(WORK, step):
        if ids and name.endswith(".parquet"):
            part = store.read_parquet(WORK, step, name, columns=["id", "images", *MEDIA_COLUMNS])
            if "images" not in part.column_names:
                continue
            rows = part.filter(pc.is_in(part["id"], pa.array(sorted(ids), pa.string()))).to_pylist()
            part_name = name.removesuffix(".parquet")
            if read_part is not None:
                media.restore(rows, lambda part_name=part_name: read_part(part_name), part_name)
            for row in rows:
                out[row["id"]] = [bytes(b) for b in row["images"] or []]
    return out


# ---------------------------------------------------------------------------------------------- inspect


def show(out: str, row_id: str | None, as_json: bool = False, file: Any = None) -> int:
    """`vlcurate inspect OUT --candidates [--id ID]`: one prompt's candidates (ID a prompt or a candidate id;
    default the first prompt) with their verdicts."""
    file = file or sys.stdout
    store = Store(out)
    if not store.exists(CANDIDATES):
        print(f"vlcurate: {out}: no {CANDIDATES} (not a chain-of-thought job)", file=sys.stderr)
        return 2
    rows = store.read_parquet(CANDIDATES).to_pylist()
    if row_id is None and rows:
        row_id = rows[0]["parent_id"]
    prompt = next((r["parent_id"] for r in rows if row_id in (r["id"], r["parent_id"])), None)
    if prompt is None:
        print(f"vlcurate: {out}: no candidate or prompt with id {row_id}", file=sys.stderr)
        return 2
    mine = [r for r in rows if r["parent_id"] == prompt]
    if as_json:
        for r in mine:
            print(json.dumps(r, ensure_ascii=False, default=str), file=file)
        return 0
    print(f"prompt {prompt}: {len(mine)} candidate(s); gold answer: {mine[0].get('gold_answer')!r}", file=file)
    print(mine[0]["prompt"], file=file)
    for r in mine:
        where = "SELECTED" if r.get("cot_selected") else f"{r.get('drop_reason')}"
        print(f"\n--- [{r['cot_sample']}] {r['id']}  {r.get('cot_verdict')} ({r.get('cot_reason') or 'ok'}) -> {where}"
              f"  answer={r.get('cot_answer')!r} tokens={r.get('cot_tokens')} finish={r.get('cot_finish_reason')}"
              + (f" p_yes={r['relevance_p_yes']:.2f}" if r.get("relevance_p_yes") is not None else ""), file=file)
        print(r["cot_text"], file=file)
    return 0
