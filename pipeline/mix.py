"""Training-stage mixes: compose finished jobs (and pure-text files) into one stage's data by ratio.

A MIX.yaml names sources, each with a weight; the weights share the mix by samples or by tokens (`by`).
Each source's quota is `weight / sum(weights) * total`; `total` defaults to the largest mix every source
can fill (with its `max_repeat` copies and its `cap`). A source that cannot give its quota gives what it
has, and the mix says so (a warning in the log and in stats.json), never silently.

Selection is deterministic by seed and independent of file order: a source's samples are taken in the order
of make_id(seed, source, id, copy) (copy 0 first; with `max_repeat: N` the copies 1..N-1 follow, each in its
own hash order, which is how a source is up-sampled), up to its quota. Each output sample keeps its
lineage: the key `NAME-ID[-COPY]` and a `mix` entry in its JSON and in the manifest (source name, job folder or
file, source id, copy). NAME qualifies the id, because two jobs whose inputs share a relative layout give the
same ids by design: it is the source's `key_prefix` when set, else the source job's `input.name` (as in a
multi-job export), else the mix's source name; two sources with one NAME are a one-line error.

Sources (`kind`):
- `job`: a finished vlcurate job folder (manifest.parquet + shards/); its samples are copied as they are
  (json, images, input_ids / labels);
- `chat`: jsonl with OpenAI-style `messages` (text only), formatted in ChatML, labels on assistant turns;
- `text`: jsonl with a `text` field, the pretraining layout `TEXT<|endoftext|>`, labels on every token;
both tokenized with `format.tokenizer` (the built-in Qwen2.5-VL tokenizer by default).

Optional `decontam:` drops samples whose question or image matches an eval set (filters/decontam.py), as
rejects `contaminated` with the matching eval item; optional `pack:` packs the mix (pipeline/pack_stage.py's
decision and pipeline/writers.py's pack writer, as in a job).

Output (like a job's): shards/shard-NNNNN.tar (by a hash of the key, sorted by key), packs/ and
packs.parquet when packing, manifest.parquet, rejects.parquet, stats.json, job.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, Field, PositiveInt, ValidationError

from filters.decontam import EvalIndex, Match
from formatters.builders import message_text
from formatters.chatml import part_kind
from formatters.tokens import tokenize_caption, tokenize_chat
from pipeline import outdir
from pipeline.format_stage import load_tokenizer
from pipeline.pack_stage import PackStage
from pipeline.readers.base import Partition, iter_json_lines, read_text_file
from pipeline.schema import bucket_of, make_id, rows_to_table
from pipeline.spec import PackSpec, RecipeError, Section, first_error, set_dotted
from pipeline.storage import WORK, Store, resolve
from pipeline.tar import iter_entries, write_tar
from pipeline.writers import shard_samples, versions, vision_token_ids, write_pack_files

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_IMAGE_FILE = re.compile(r"^(\d+)\.\w+$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
_WRITTEN = ("shards", "packs", "manifest.parquet", "rejects.parquet", "packs.parquet", "stats.json", "job.json")


class SourceSpec(Section):
    path: str
    kind: Literal["job", "chat", "text"] = "job"
    weight: float = Field(gt=0)
    cap: PositiveInt | None = None  # at most this many samples (by: samples) or tokens (by: tokens)
    max_repeat: PositiveInt = 1  # up-sampling: each sample may be taken up to this many times
    column: str | None = None  # chat: the messages field (default messages); text: the text field (default text)
    key_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")  # qualifies keys instead of input.name


class TextFormatSpec(Section):
    """How `chat` and `text` sources are tokenized."""

    tokenizer: str | None = None
    max_tokens: PositiveInt | None = None


class EvalSetSpec(Section):
    path: str  # a jsonl of eval items, or a folder of eval images
    column: str = "question"  # jsonl: the field holding the question


class DecontamSpec(Section):
    eval_sets: dict[str, dict[str, Any]]
    ngram: PositiveInt = 8
    min_overlap: float = Field(0.5, gt=0, le=1)
    max_hamming: int = Field(4, ge=0, le=32)


class MixOutputSpec(Section):
    buckets: PositiveInt = 16


class MixModel(Section):
    seed: int = 0
    by: Literal["samples", "tokens"] = "tokens"
    total: PositiveInt | None = None
    sources: dict[str, dict[str, Any]]
    format: TextFormatSpec = Field(default_factory=TextFormatSpec)
    decontam: DecontamSpec | None = None
    pack: PackSpec | None = None
    output: MixOutputSpec = Field(default_factory=MixOutputSpec)


@dataclass
class Mix:
    model: MixModel
    sources: dict[str, SourceSpec]
    eval_sets: dict[str, EvalSetSpec]

    def resolved(self) -> dict[str, Any]:
        out = self.model.model_dump(mode="json")
        out["sources"] = {k: s.model_dump(mode="json") for k, s in self.sources.items()}
        if out["decontam"]:
            out["decontam"]["eval_sets"] = {k: s.model_dump(mode="json") for k, s in self.eval_sets.items()}
        return out


def _validate(model: type[BaseModel], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: must be a mapping (got {raw!r})")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise first_error(e, where, model) from None


def parse_mix(raw: Any) -> Mix:
    if not isinstance(raw, dict):
        raise RecipeError("mix: the top level must be a mapping (seed, by, total, sources, format, decontam, pack, "
                          "output)")
    try:
        model = MixModel.model_validate(raw)
    except ValidationError as e:
        raise first_error(e, "", MixModel) from None
    if not model.sources:
        raise RecipeError("sources: name at least one source")
    sources = {}
    for name, cfg in model.sources.items():
        if not _NAME.match(name):
            raise RecipeError(f"sources.{name}: a source name is letters, digits and _ only (it prefixes keys)")
        sources[name] = _validate(SourceSpec, cfg, f"sources.{name}")
    eval_sets = {}
    if model.decontam is not None:
        if not model.decontam.eval_sets:
            raise RecipeError("decontam.eval_sets: name at least one eval set")
        eval_sets = {name: _validate(EvalSetSpec, cfg, f"decontam.eval_sets.{name}")
                     for name, cfg in model.decontam.eval_sets.items()}
    return Mix(model, sources, eval_sets)


MIX_KEYS = frozenset(MixModel.model_fields)


def is_mix(raw: Any) -> bool:
    """Whether a parsed YAML document is a MIX.yaml rather than a job recipe: it names `sources` and only
    mix keys (a recipe has `input`)."""
    return isinstance(raw, dict) and "sources" in raw and set(raw) <= MIX_KEYS


def is_mix_file(path: str) -> bool:
    """Whether `path` holds a MIX.yaml (an unreadable or invalid file is not: its own loader says why)."""
    try:
        return is_mix(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def load_mix(path: str, sets: list[str] = ()) -> Mix:
    """A MIX.yaml, validated (one-line RecipeError naming the key), with `--set dotted.key=value` applied."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(f"mix: cannot read {path} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"mix: not valid YAML: {str(e).splitlines()[0]}") from None
    for s in sets if isinstance(raw, dict) else ():
        set_dotted(raw, s)
    return parse_mix(raw)


# ----------------------------------------------------------------------------------------------------------
# Sources


@dataclass
class Item:
    id: str
    n_tokens: int | None
    shard: str | None = None  # job sources: the shard holding it
    files: dict[str, bytes] | None = None  # text sources: the formatted sample's files


@dataclass
class Source:
    name: str
    spec: SourceSpec
    items: list[Item]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""
    qualifier: str = ""  # what prefixes its keys: key_prefix, the job's input.name, or the source name

    def size(self, item: Item, by: str) -> int:
        return 1 if by == "samples" else int(item.n_tokens or 0)


def read_shard(store: Store, name: str) -> dict[str, dict[str, bytes]]:
    """A webdataset shard as {key: {suffix: bytes}}."""
    out: dict[str, dict[str, bytes]] = {}
    for key, suffix, data in iter_entries(store.read_bytes("shards", name)):
        out.setdefault(key, {})[suffix] = data
    return out


def _load_job(name: str, spec: SourceSpec) -> Source:
    store = Store(spec.path)
    if not (store.exists("manifest.parquet") and store.exists("stats.json")):
        raise RecipeError(f"sources.{name}.path: {spec.path} is not a finished vlcurate job folder "
                          "(no manifest.parquet / stats.json)")
    table = store.read_parquet("manifest.parquet", columns=["id", "shard", "n_tokens"])
    ids, shards = table["id"].to_pylist(), table["shard"].to_pylist()
    tokens = table["n_tokens"].to_pylist() if "n_tokens" in table.column_names else [None] * len(ids)
    items = [Item(i, t, s) for i, t, s in zip(ids, tokens, shards, strict=True)]
    digest = hashlib.sha256(store.read_bytes("manifest.parquet")).hexdigest()
    return Source(name, spec, items, fingerprint=digest, qualifier=spec.key_prefix or _input_name(store) or name)


def _input_name(store: Store) -> str | None:
    """The job's `input.name` from its job.json (None when it has none)."""
    if not store.exists("job.json"):
        return None
    try:
        recipe = json.loads(store.read_bytes("job.json")).get("recipe") or {}
    except ValueError:
        return None
    name = (recipe.get("input") or {}).get("name")
    return name if isinstance(name, str) and name else None


def _chat_messages(value: Any) -> list[dict[str, Any]] | str:
    """OpenAI-style text messages, or a drop reason."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return "no_messages"
    for m in value:
        if m.get("role") not in ("system", "user", "assistant"):
            return "bad_role"
        content = m.get("content")
        if isinstance(content, list):
            if any(not isinstance(p, dict) or part_kind(p) in ("image", "video") for p in content):
                return "has_media"
        elif not isinstance(content, str):
            return "no_content"
    if not any(m["role"] == "assistant" for m in value):
        return "no_assistant_turn"
    return value


def format_text_record(kind: str, rec: dict[str, Any], column: str | None, tokenizer: Any,
                       max_tokens: int | None) -> dict[str, Any] | str:
    """One `chat` / `text` record as a formatted sample's fields, or a drop reason."""
    if kind == "chat":
        messages = _chat_messages(rec.get(column or "messages"))
        if isinstance(messages, str):
            return messages
        question = "\n".join(message_text(m) for m in messages if m["role"] == "user")
        try:
            ids, labels = tokenize_chat(messages, tokenizer, [], [])
        except ValueError:
            return "control_tokens"
        fields: dict[str, Any] = {"messages": messages, "text": question, "meta": {"layout": "chatml"}}
    else:
        text = rec.get(column or "text")
        if not isinstance(text, str) or not text.strip():
            return "empty_text"
        ids, labels = tokenize_caption(text, tokenizer, [])
        fields = {"text": text, "meta": {"layout": "pretrain"}}
    if max_tokens and len(ids) > max_tokens:
        return "too_many_tokens"
    return {**fields, "input_ids": ids.tolist(), "labels": labels.tolist(), "n_tokens": len(ids)}


def _load_text(name: str, spec: SourceSpec, fmt: TextFormatSpec) -> Source:
    fs, path = resolve(spec.path)
    try:
        data = read_text_file(fs, path)
    except (FileNotFoundError, IsADirectoryError, OSError) as e:
        raise RecipeError(f"sources.{name}.path: cannot read {spec.path} ({e})") from None
    relpath = path.rsplit("/", 1)[-1]
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    part = Partition(name=relpath, path=path, relpath=relpath, start=0, stop=len(lines))
    tokenizer = load_tokenizer(fmt.tokenizer)
    source = Source(name, spec, [], fingerprint=hashlib.sha256(data).hexdigest(), qualifier=spec.key_prefix or name)
    for row, rec in iter_json_lines(data, part, None):
        if rec is not None:
            sample = format_text_record(spec.kind, rec, spec.column, tokenizer, fmt.max_tokens)
            if isinstance(sample, str):
                row["drop_stage"], row["drop_reason"] = "format", sample
            else:
                row.update(sample)
        if row["drop_reason"]:
            source.rejects.append(_reject(name, spec, row["id"], row["drop_stage"], row["drop_reason"],
                                          {"source": row["source"], **row["meta"]}))
            continue
        row["source"] = f"{spec.path}:{row['source'].rsplit(':', 1)[-1]}"
        files = dict(next(shard_samples([row], []))[1])
        source.items.append(Item(row["id"], row["n_tokens"], files=files))
    return source


def _reject(name: str, spec: SourceSpec, row_id: str, stage: str, reason: str,
            detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": row_id, "source": name, "source_job": spec.path, "drop_stage": stage, "drop_reason": reason,
            "meta": json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)}


def load_source(name: str, spec: SourceSpec, fmt: TextFormatSpec) -> Source:
    return _load_job(name, spec) if spec.kind == "job" else _load_text(name, spec, fmt)


def source_samples(source: Source, items: list[Item]) -> Iterator[tuple[Item, dict[str, bytes]]]:
    """(item, its files) for `items` of a source, reading each job shard once."""
    if source.spec.kind != "job":
        for item in items:
            yield item, dict(item.files or {})
        return
    store = Store(source.spec.path)
    by_shard: dict[str, list[Item]] = {}
    for item in items:
        by_shard.setdefault(item.shard or "", []).append(item)
    for shard in sorted(by_shard):
        samples = read_shard(store, shard)
        for item in by_shard[shard]:
            if item.id not in samples:
                raise RecipeError(f"sources.{source.name}: sample {item.id} is in the manifest but not in "
                                  f"shards/{shard} (is the job folder complete?)")
            yield item, samples[item.id]


def sample_parts(files: dict[str, bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """A shard sample's JSON document and its images in order."""
    doc = json.loads(files["json"])
    images = sorted((int(m.group(1)), data) for s, data in files.items() if (m := _IMAGE_FILE.match(s)))
    return doc, [data for _, data in images]


# ----------------------------------------------------------------------------------------------------------
# Decontamination


def build_eval_index(mix: Mix) -> EvalIndex:
    """The eval sets named in `decontam:` (jsonl questions, image folders) as one index."""
    spec = mix.model.decontam
    assert spec is not None
    index = EvalIndex(spec.ngram, spec.min_overlap, spec.max_hamming)
    for name, es in mix.eval_sets.items():
        root = Path(es.path)
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() in _IMAGE_SUFFIXES:
                    try:
                        index.add_image(f"{name}:{p.relative_to(root)}", p.read_bytes())
                    except (OSError, ValueError):
                        continue  # not a readable image: nothing to match against
        elif root.is_file():
            for n, line in enumerate(root.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get(es.column), str):
                    index.add_text(f"{name}:{n}", rec[es.column])
        else:
            raise RecipeError(f"decontam.eval_sets.{name}.path: not found: {es.path}")
    return index


def question_text(doc: dict[str, Any]) -> str | None:
    """What a sample asks: its user turns' text, else its text field."""
    messages = doc.get("messages")
    if messages:
        user = [message_text(m) for m in messages if m.get("role") == "user"]
        if any(user):
            return "\n".join(user)
    return doc.get("text")


def contamination(index: EvalIndex, files: dict[str, bytes]) -> Match | None:
    doc, images = sample_parts(files)
    for data in images:
        match = index.match_image(data)
        if match is not None:
            return match
    return index.match_text(question_text(doc))


def decontaminate(source: Source, index: EvalIndex, log: Callable[[str], Any]) -> None:
    kept = []
    for item, files in source_samples(source, source.items):
        match = contamination(index, files)
        if match is None:
            kept.append(item)
        else:
            source.rejects.append(_reject(source.name, source.spec, item.id, "decontam", "contaminated",
                                          {"eval_item": match.item, "match": match.kind, "score": match.score}))
    if len(kept) < len(source.items):
        log(f"[vlcurate] mix: {source.name}: {len(source.items) - len(kept)} contaminated sample(s) dropped")
    source.items = kept


# ----------------------------------------------------------------------------------------------------------
# Quotas and selection


def select(ids: list[str], sizes: list[int], quota: float, seed: int, name: str,
           max_repeat: int = 1) -> list[tuple[int, int]]:
    """(index, copy) pairs taken from one source: copy 0 of every sample in the order of
    make_id(seed, name, id, 0), then copy 1 in its own order, ... (up to max_repeat copies), until the sizes
    reach `quota`; the last sample is taken only when that brings the total nearer the quota."""
    picked: list[tuple[int, int]] = []
    total = 0
    for copy in range(max_repeat):
        for i in sorted(range(len(ids)), key=lambda i: make_id(seed, name, ids[i], copy)):
            if total >= quota or total + sizes[i] - quota > quota - total:
                return picked
            picked.append((i, copy))
            total += sizes[i]
    return picked


@dataclass
class Plan:
    quotas: dict[str, float]  # what each source gives: its asked share of the total, or less when it cannot
    asked: dict[str, float]
    total: float
    warnings: list[str]


def plan_quotas(mix: Mix, sources: dict[str, Source]) -> Plan:
    by = mix.model.by
    weight_sum = sum(s.weight for s in mix.sources.values())
    share = {n: s.weight / weight_sum for n, s in mix.sources.items()}
    limit, why = {}, {}
    for n, src in sources.items():
        have = sum(src.size(i, by) for i in src.items)
        limit[n], why[n] = have * src.spec.max_repeat, (f"{have:,} available" if src.spec.max_repeat == 1
                                                        else f"{have:,} available x max_repeat {src.spec.max_repeat}")
        if src.spec.cap is not None and src.spec.cap < limit[n]:
            limit[n], why[n] = src.spec.cap, f"cap {src.spec.cap:,}"
    total = float(mix.model.total) if mix.model.total else min(limit[n] / share[n] for n in sources)
    quotas, asked_of, warnings = {}, {}, []
    for n in sources:
        asked_of[n] = asked = share[n] * total
        quotas[n] = min(asked, limit[n])
        if asked > limit[n] * (1 + 1e-9):
            warnings.append(f"source {n}: asked {asked:,.0f} {by} ({share[n]:.1%} of {total:,.0f}) but it can give "
                            f"only {limit[n]:,} ({why[n]}): short by {asked - limit[n]:,.0f}; raise max_repeat, "
                            "lower total or its weight")
    return Plan(quotas, asked_of, total, warnings)


# ----------------------------------------------------------------------------------------------------------
# The job


@dataclass
class Picked:
    key: str
    source: Source
    item: Item
    copy: int


def mix_key(qualifier: str, row_id: str, copy: int) -> str:
    return f"{qualifier}-{row_id}" + (f"-{copy}" if copy else "")


def check_qualifiers(sources: dict[str, Source]) -> None:
    """Two sources whose keys would share a prefix (the same job twice, or two jobs with one input.name) are
    refused: their ids may coincide."""
    seen: dict[str, str] = {}
    for n, src in sources.items():
        if src.qualifier in seen:
            raise RecipeError(f"sources.{n}: its keys would be prefixed {src.qualifier!r} like sources."
                              f"{seen[src.qualifier]}'s (the same job, or jobs with the same input.name), so ids "
                              f"could repeat; set sources.{n}.key_prefix")
        seen[src.qualifier] = n


def _with_lineage(files: dict[str, bytes], pick: Picked) -> dict[str, bytes]:
    doc = json.loads(files["json"])
    doc["mix"] = {"source": pick.source.name, "job": pick.source.spec.path, "id": pick.item.id, "copy": pick.copy,
                  "key_prefix": pick.source.qualifier}
    return {**files, "json": json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8")}


def _local_map(items: list[dict[str, Any]], fn: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [fn({k: [v] for k, v in item.items()}, **kwargs) for item in items]


def _npy(data: bytes | None) -> list[int] | None:
    return None if data is None else np.load(io.BytesIO(data), allow_pickle=False).tolist()


# a mix folder is rebuilt by the next mix into it (whatever changed); a job folder is never mixed into
MIX_IDENTITY = b'{"kind": "mix"}'


def run_mix(mix: Mix, out: str, overwrite: bool = False, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Build the mix into `out`; returns stats.json's document."""
    t0 = time.perf_counter()
    by, m = mix.model.by, mix.model
    sources = {n: load_source(n, spec, m.format) for n, spec in mix.sources.items()}
    check_qualifiers(sources)
    packing = m.pack is not None and m.pack.enabled
    for n, src in sources.items():
        untokenized = sum(1 for i in src.items if not i.n_tokens)
        if untokenized and (by == "tokens" or packing):
            why = "weights by tokens" if by == "tokens" else "packing"
            raise RecipeError(f"sources.{n}.path: {untokenized} sample(s) have no n_tokens (not a formatted job); "
                              f"{why} needs them: format the job, or use by: samples without pack")
    store = Store(out)
    outdir.claim(store, MIX_IDENTITY, overwrite=overwrite)
    for name in (*_WRITTEN, f"{WORK}/mix", f"{WORK}/packbuckets", f"{WORK}/packs"):
        store.delete_entry(*name.split("/"))
    if m.decontam is not None:
        index = build_eval_index(mix)
        log(f"[vlcurate] mix: decontaminating against {len(index)} eval item(s)")
        for src in sources.values():
            decontaminate(src, index, log)
    if packing:
        for src in sources.values():
            long = [i for i in src.items if i.n_tokens > m.pack.max_len]
            src.rejects += [_reject(src.name, src.spec, i.id, "pack", "too_long", {"n_tokens": i.n_tokens})
                            for i in long]
            src.items = [i for i in src.items if i.n_tokens <= m.pack.max_len]
    plan = plan_quotas(mix, sources)
    for w in plan.warnings:
        log(f"vlcurate: warning: {w}")
    picks: list[Picked] = []
    for n, src in sources.items():
        chosen = select([i.id for i in src.items], [src.size(i, by) for i in src.items], plan.quotas[n], m.seed, n,
                        src.spec.max_repeat)
        picks += [Picked(mix_key(src.qualifier, src.items[i].id, c), src, src.items[i], c) for i, c in chosen]
    picks.sort(key=lambda p: p.key)
    packs = {}
    if packing:
        decision = PackStage(m.pack, name="pack").decide_global(
            {"id": [p.key for p in picks], "n_tokens": [p.item.n_tokens for p in picks]})
        packs = {p.key: (decision["pack_id"][k], decision["pack_shard"][k], decision["pack_pos"][k])
                 for k, p in enumerate(picks)}
    log(f"[vlcurate] mix: writing {len(picks)} sample(s) from {len(sources)} source(s)")
    manifest = _write_shards(store, m.output.buckets, picks, packs)
    stats = _stats(mix, sources, picks, plan)
    for w in stats["warnings"][len(plan.warnings):]:
        log(f"vlcurate: warning: {w}")
    if packing:
        summary = write_pack_files(store, m.pack, vision_token_ids(m.format.tokenizer), _local_map, log=log)
        stats["pack"] = summary
    rejects = [r for src in sources.values() for r in src.rejects]
    store.write_parquet(pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), "manifest.parquet")
    store.write_parquet(pa.Table.from_pylist(sorted(rejects, key=lambda r: (r["source"], r["id"])),
                                             schema=REJECTS_SCHEMA), "rejects.parquet")
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["drop_reason"]] = reasons.get(r["drop_reason"], 0) + 1
    stats["rejected_by_reason"] = dict(sorted(reasons.items()))
    store.write_bytes(json.dumps({"mix": mix.resolved(), "inputs": {n: s.fingerprint for n, s in sources.items()},
                                  "versions": versions()}, indent=2).encode(), "job.json")
    store.write_bytes(json.dumps(stats, indent=2, sort_keys=True).encode(), "stats.json")
    for name in ("mix", "packbuckets", "packs"):
        store.delete_dir(WORK, name)
    stats["wall_seconds"] = round(time.perf_counter() - t0, 3)  # printed, not written: stats.json stays identical
    return stats


MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("key", pa.string()), ("shard", pa.string()), ("source", pa.string()),
    ("source_job", pa.string()), ("source_id", pa.string()), ("copy", pa.int64()), ("n_tokens", pa.int64()),
    ("pack_id", pa.string()), ("pack_pos", pa.int64())])
REJECTS_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("source_job", pa.string()), ("drop_stage", pa.string()),
    ("drop_reason", pa.string()), ("meta", pa.string())])


def _write_shards(store: Store, buckets: int, picks: list[Picked],
                  packs: dict[str, tuple[str, int, int]]) -> list[dict[str, Any]]:
    """Stage each picked sample (with its lineage) under _work/mix/BUCKET/, one tar per source shard read,
    then write each bucket's shard sorted by key; pack members go to _work/packbuckets/ for the pack writer."""
    bucket_of_key = {p.key: bucket_of(make_id(p.key), buckets) for p in picks}
    by_source: dict[str, list[Picked]] = {}
    for p in picks:
        by_source.setdefault(p.source.name, []).append(p)
    for name, source_picks in sorted(by_source.items()):
        src = source_picks[0].source
        copies: dict[str, list[Picked]] = {}
        for p in source_picks:
            copies.setdefault(p.item.id, []).append(p)
        unique = [ps[0].item for ps in copies.values()]
        staged: dict[int, list[tuple[str, dict[str, bytes]]]] = {}
        chunk = 0
        for n, (item, files) in enumerate(source_samples(src, unique), 1):
            for p in copies[item.id]:
                staged.setdefault(bucket_of_key[p.key], []).append((p.key, _with_lineage(files, p)))
            if n % 2000 == 0 or n == len(unique):  # bounded memory: flush every 2000 samples
                for b, samples in staged.items():
                    with store.open_atomic(WORK, "mix", f"{b:05d}", f"{name}-{chunk:06d}.tar") as f:
                        write_tar(f, samples)
                staged, chunk = {}, chunk + 1
    manifest = []
    by_key = {p.key: p for p in picks}
    for b in sorted(set(bucket_of_key.values())):
        samples: dict[str, dict[str, bytes]] = {}
        for name in store.list(WORK, "mix", f"{b:05d}"):
            for key, suffix, data in iter_entries(store.read_bytes(WORK, "mix", f"{b:05d}", name)):
                samples.setdefault(key, {})[suffix] = data
        shard = f"shard-{b:05d}.tar"
        ordered = sorted(samples.items())
        with store.open_atomic("shards", shard) as f:
            write_tar(f, ordered)
        members: dict[int, list[dict[str, Any]]] = {}
        for key, files in ordered:
            p = by_key[key]
            pack_id, pack_shard, pack_pos = packs.get(key, (None, None, None))
            manifest.append({"id": key, "key": key, "shard": shard, "source": p.source.name,
                             "source_job": p.source.spec.path, "source_id": p.item.id, "copy": p.copy,
                             "n_tokens": p.item.n_tokens, "pack_id": pack_id, "pack_pos": pack_pos})
            if pack_id is not None:
                doc, images = sample_parts(files)
                members.setdefault(pack_shard, []).append({
                    "id": key, "pack_id": pack_id, "pack_pos": pack_pos, "images": images,
                    "meta": doc.get("meta") or {}, "input_ids": _npy(files.get("input_ids.npy")),
                    "labels": _npy(files.get("labels.npy"))})
        for k, rows in members.items():
            store.write_parquet(rows_to_table(rows), WORK, "packbuckets", f"{k:05d}", f"{b:05d}.parquet", work=True)
    manifest.sort(key=lambda r: r["id"])
    return manifest


def _stats(mix: Mix, sources: dict[str, Source], picks: list[Picked], plan: Plan) -> dict[str, Any]:
    by = mix.model.by
    weight_sum = sum(s.weight for s in mix.sources.values())
    samples = dict.fromkeys(sources, 0)
    tokens = dict.fromkeys(sources, 0)
    repeats = dict.fromkeys(sources, 0)
    for p in picks:
        samples[p.source.name] += 1
        tokens[p.source.name] += int(p.item.n_tokens or 0)
        repeats[p.source.name] += p.copy > 0
    n_samples, n_tokens = sum(samples.values()), sum(tokens.values())
    achieved = samples if by == "samples" else tokens
    total = n_samples if by == "samples" else n_tokens
    per_source = {}
    for n, src in sources.items():
        per_source[n] = {
            "path": src.spec.path, "kind": src.spec.kind,
            "asked_share": round(src.spec.weight / weight_sum, 6), "asked": round(plan.asked[n], 1),
            "achieved_share": round(achieved[n] / total, 6) if total else 0.0,
            "samples": samples[n], "tokens": tokens[n], "repeated_samples": repeats[n],
            "samples_share": round(samples[n] / n_samples, 6) if n_samples else 0.0,
            "tokens_share": round(tokens[n] / n_tokens, 6) if n_tokens else 0.0,
            "available_samples": len(src.items), "rejected": len(src.rejects),
        }
    return {"by": by, "seed": mix.model.seed, "total_asked": round(plan.total, 1), "total": total,
            "samples": n_samples, "tokens": n_tokens, "sources": per_source,
            "warnings": plan.warnings + _coarse(plan, achieved, per_source, by)}


def _coarse(plan: Plan, achieved: dict[str, int], per_source: dict[str, Any], by: str) -> list[str]:
    """Sources whose selection missed their quota by over 1%: samples large next to a small quota (a small mix
    by tokens) cannot hit it, and the shares drift; said, never silent."""
    out = []
    for n, quota in plan.quotas.items():
        if abs(achieved[n] - quota) > 0.01 * quota:
            s = per_source[n]
            out.append(f"source {n}: gave {achieved[n]:,} {by} for a quota of {quota:,.0f} ({s['achieved_share']:.1%}"
                       f" of the mix, {s['asked_share']:.1%} asked): its samples are large next to its quota, "
                       "a mix this small cannot meet the share")
    return out


def format_summary(out: str, stats: dict[str, Any]) -> list[str]:
    """The lines `vlcurate mix` prints: asked vs achieved per source."""
    lines = [f"vlcurate: mix done in {stats.get('wall_seconds', 0):.1f} s -> {out}",
             f"  {stats['samples']:,} samples, {stats['tokens']:,} tokens (shares by {stats['by']})",
             f"  {'source':<16} {'asked':>8} {'achieved':>9} {'samples':>9} {'tokens':>12} {'repeated':>9}"]
    for n, s in stats["sources"].items():
        lines.append(f"  {n:<16} {s['asked_share']:>8.2%} {s['achieved_share']:>9.2%} {s['samples']:>9,} "
                     f"{s['tokens']:>12,} {s['repeated_samples']:>9,}")
    for reason, k in stats.get("rejected_by_reason", {}).items():
        lines.append(f"  rejected {k:,} {reason}")
    if "pack" in stats and stats["pack"].get("packs"):
        lines.append(f"  packs: {stats['pack']['packs']:,} of max_len {stats['pack']['max_len']:,}, "
                     f"fill {stats['pack']['fill']:.2%}")
    lines += [f"  warning: {w}" for w in stats["warnings"]]
    return lines

