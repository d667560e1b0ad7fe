"""Exports of a finished job's shards to other trainers' dataset formats (DESIGN.md, Output layout).

``export(out, trainer)`` reads ``OUT/shards/*.tar`` (webdataset: ``KEY.json`` with messages / meta /
annotations, ``KEY.0.jpg`` ..., ``KEY.input_ids.npy``) and writes ``OUT/exports/<trainer>/``: the records,
the images under ``images/`` (named by content hash: the samples built from one image share one file),
``export.json`` (counts, skipped samples by reason, the settings the trainer needs) and a ready config
fragment; beside each ``NAME.jsonl`` a ``NAME.ids`` holds the shard key of each line. ``export_all(out,
trainers)`` does it for each trainer of ``output.exports``. ``export_jobs(jobs, dest, trainers)`` exports
several finished jobs into one place, ``DEST/<trainer>/``, each key qualified by its job's ``input.name``
(``NAME-ID``, as the mixing step): two datasets with one relative layout have the same ids. Every path in an
export is relative to its folder, so a job folder can be moved or copied.

The rule: a sample the trainer (at the version named) reads with the stated settings into other tokens than
the shard's is never exported; it is skipped with the reason counted in ``export.json``.

- ``llamafactory`` (0.9.5): multimodal sharegpt ``{"messages", "images" | "videos"}`` with one ``<image>`` /
  ``<video>`` tag per medium, ``dataset_info.json`` declaring only the columns the records have, and
  ``llamafactory.yaml`` (template, pixel limits, ``cutoff_len`` >= the longest sample, ``video_fps``,
  ``packing: false``); images its processor would resize other than the format stage did (the recipe's
  pixel limits bound the resize and the image is not pre-resized) are skipped. A video is its planned
  frames (a nested list of images). Its frame lists are read at one ``video_fps`` for the whole dataset:
  videos with another ``sample_fps`` than the first are skipped.
  Its ``pt`` stage tokenizes ``text + tokenizer.eos_token`` only (no image plugin; its collator is
  transformers' ``DataCollatorForLanguageModeling``; the eos is ``<|im_end|>`` after the Qwen templates'
  ``replace_eos``), so pretraining-layout samples (images, ``<|endoftext|>``) are skipped.
- ``swift`` (ms-swift 4.6): ``{"messages", "images" | "videos"}``; grounding samples of the qwen2-vl and
  qwen2.5-vl dialects use its grounding form (``<ref-object>`` / ``<bbox>`` and ``"objects"``), each box
  written so that ms-swift's ``int(round(x / W * N))`` gives back the shard's integer coordinate (N = 1000 for
  qwen2-vl, the resized side for qwen2.5-vl): ``c * W / N``, the shard's integers when the stored image is
  pre-resized. Pretraining-layout samples: one assistant message ``<image>CAPTION<|endoftext|>`` in
  ``data_pt.jsonl`` for ``swift pt`` (no chat template; it masks the vision block as the shard does): ms-swift appends
  the tokenizer's eos (``<|im_end|>``) only to a response that does not already end in a stop word, and
  ``<|endoftext|>`` is one of the Qwen templates' stop words, so the tokens and labels are the shard's.
  ``swift.sh`` holds the flags and environment. Videos: ms-swift passes a frame list to
  qwen-vl-utils 0.0.14's ``fetch_video``, which resizes each frame to a multiple of 56 pixels, and it reads
  frame lists at 2 fps; other videos are skipped.
- ``qwen``: the official Qwen2.5-VL fine-tuning code's ``{"image", "conversations"}``; its loader takes a video
  as one file, which the shards do not hold, so video samples are skipped.
- ``hf``: ``data-NNNNN.parquet`` with Hugging Face ``datasets`` features (``images``: a list of ``Image``, the
  frames for a video; ``messages`` as in the shards; ``input_ids`` / ``labels``; ``meta`` as JSON), which
  ``datasets.load_dataset("parquet", data_files=...)`` reads and ``push_to_hub`` publishes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from formatters.builders import message_text, render_template
from formatters.chatml import ENDOFTEXT
from formatters.qwen import FACTOR, convert_box, smart_resize
from pipeline.storage import Store

TRAINERS = ("llamafactory", "swift", "qwen", "hf")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "bin")
TOKEN_FILES = ("input_ids", "labels")
HF_ROWS_PER_FILE = 1000
SWIFT_FRAME_FACTOR = 56  # qwen-vl-utils 0.0.14 fetch_video(frame list) -> fetch_image(image_patch_size=28)
SWIFT_VIDEO_FPS = 2.0  # ms-swift sets sample_fps = qwen_vl_utils FPS for frame lists


# ----------------------------------------------------------------------------------------------------------
# Reading the shards


def iter_shard_samples(store: Store) -> Iterator[tuple[str, dict[str, Any], list[tuple[str, bytes]]]]:
    """(key, the sample's JSON, [(file name suffix like "0.jpg", bytes)] in image order) for every sample of
    every shard, in shard name order then tar order (sorted by id). The JSON gets the sample's token arrays
    (``input_ids``, ``labels``: lists of ints) when the shard holds them."""
    for name in store.list("shards"):
        if not name.endswith(".tar"):
            continue
        with store.fs.open_input_stream(store.path("shards", name)) as f, tarfile.open(fileobj=f, mode="r|") as tf:
            key: str | None = None
            doc: dict[str, Any] | None = None
            media: list[tuple[int, str, bytes]] = []
            tokens: dict[str, list[int]] = {}
            for member in tf:
                if not member.isfile():
                    continue
                k, _, suffix = member.name.partition(".")
                data = tf.extractfile(member).read()  # type: ignore[union-attr]
                if k != key:
                    if key is not None and doc is not None:
                        yield key, {**doc, **tokens}, [(s, d) for _, s, d in sorted(media)]
                    key, doc, media, tokens = k, None, [], {}
                if suffix == "json":
                    doc = json.loads(data)
                elif suffix.removesuffix(".npy") in TOKEN_FILES:
                    tokens[suffix.removesuffix(".npy")] = np.load(io.BytesIO(data)).astype(int).tolist()
                else:
                    index, _, ext = suffix.partition(".")
                    if index.isdigit() and ext in IMAGE_EXTENSIONS:
                        media.append((int(index), suffix, data))
            if key is not None and doc is not None:
                yield key, {**doc, **tokens}, [(s, d) for _, s, d in sorted(media)]


# ----------------------------------------------------------------------------------------------------------
# Pure conversions: one sample's JSON + its exported media paths -> one record (or a skip reason)


def _is_video(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "video" for p in m["content"])
               for m in messages)


def _is_pretrain(doc: dict[str, Any]) -> bool:
    return (doc.get("meta") or {}).get("layout") == "pretrain" and len(doc.get("messages") or []) == 1


def _content(message: dict[str, Any], image_tag: str = "<image>", video_tag: str = "<video>",
             sep: str = "") -> str:
    """A message as one string: ``<image>`` / ``<video>`` tags where the parts are, then the text."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    tags, texts = [], []
    for part in content or []:
        kind = part.get("type")
        if kind == "image" or "image" in part:
            tags.append(image_tag)
        elif kind == "video" or "video" in part:
            tags.append(video_tag)
        elif "text" in part:
            texts.append(str(part["text"]))
    text = "".join(texts)
    return "".join(tags) + (sep if tags and text else "") + text


def _chat(messages: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages as chat turns; a pretrain sample (one assistant message with the media) becomes user(media)
    + assistant(caption)."""
    if meta.get("layout") == "pretrain" and len(messages) == 1:
        parts = messages[0].get("content") or []
        media = [p for p in parts if p.get("type") in ("image", "video")]
        return [{"role": "user", "content": media}, {"role": "assistant", "content": message_text(messages[0])}]
    return messages


def _with_media(record: dict[str, Any], messages: list[dict[str, Any]], media: list[str]) -> dict[str, Any]:
    """``videos: [[frames]]`` for a video sample, ``images`` for image samples, nothing for text only."""
    if _is_video(messages):
        record["videos"] = [list(media)]
    elif media:
        record["images"] = list(media)
    return record


def _sample_fps(doc: dict[str, Any]) -> float | None:
    plan = (doc.get("meta") or {}).get("video") or {}
    return float(plan["sample_fps"]) if plan.get("sample_fps") is not None else None


def _limits_bind(width: int, height: int, meta: dict[str, Any]) -> bool:
    """Whether the sample's pixel limits changed the smart_resize of this stored image. LLaMA-Factory has no
    setting for the limits its image processor resizes with (the model's own), so it reproduces only images
    the limits leave alone: pre-resized ones, and others within the limits."""
    lo, hi = meta.get("min_pixels"), meta.get("max_pixels")
    if not lo or not hi:
        return False
    return smart_resize(height, width, FACTOR, lo, hi) != smart_resize(height, width, FACTOR, 1, 1 << 62)


def to_llamafactory(doc: dict[str, Any], media: list[str], video_fps: float | None = None) -> dict[str, Any] | str:
    """LLaMA-Factory sharegpt (multimodal): messages with ``<image>`` / ``<video>`` tags, images / videos.
    ``video_fps``: the dataset's fps (LLaMA-Factory reads every frame list at it); another video's is a skip."""
    meta, messages = doc.get("meta") or {}, doc.get("messages") or []
    if _is_pretrain(doc) and media:
        return "llamafactory_pt_stage_has_no_images"
    if _is_video(messages) and video_fps is not None and _sample_fps(doc) not in (None, video_fps):
        return "llamafactory_video_fps_differs"
    if not _is_video(messages) and any(_limits_bind(w, h, meta) for w, h in meta.get("image_sizes") or []):
        return "llamafactory_image_resize_limits_differ"
    return _with_media({"messages": [{"role": m["role"], "content": _content(m)} for m in messages]},
                       messages, media)


SWIFT_DIALECTS = ("qwen2-vl", "qwen2.5-vl")  # the dialects ms-swift's Qwen2-VL templates render


def _exact(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _swift_objects(doc: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ms-swift grounding form (templates + objects) when the sample has boxes and the template renders
    back to its texts; None otherwise (then the dialect text is written as is). Each coordinate c of the shard
    is written as c·W/N in pixels of the exported image (W×H), N = 1000 (qwen2-vl) or the smart-resized side
    (qwen2.5-vl), so that ms-swift's int(round(x / W · N)) is c again."""
    ann = doc.get("annotations") or {}
    g = ann.get("grounding") if isinstance(ann, dict) else None
    meta = doc.get("meta") or {}
    dialect = meta.get("dialect")
    if dialect not in SWIFT_DIALECTS or not g or not g.get("bbox") or any(len(b) != 4 for b in g["bbox"]):
        return None
    if len(g["template"]) != len(messages) or any(not isinstance(m.get("content"), list) for m in messages):
        return None
    if not meta.get("original_sizes") or not meta.get("image_sizes"):
        return None
    (ow, oh), (sw, sh) = meta["original_sizes"][0], meta["image_sizes"][0]
    lo, hi = meta["min_pixels"], meta["max_pixels"]
    coords = [convert_box(b, ow, oh, dialect, lo, hi) for b in g["bbox"]]
    rendered = render_template("\x00".join(g["template"]), g["ref"], coords, dialect).split("\x00")
    if rendered != [message_text(m) for m in messages]:
        return None
    nh, nw = smart_resize(oh, ow, FACTOR, lo, hi) if dialect == "qwen2.5-vl" else (1000, 1000)
    bbox = [[_exact(c * (sw / nw if i % 2 == 0 else sh / nh)) for i, c in enumerate(box)] for box in coords]
    turns = []
    for m, template in zip(messages, g["template"], strict=True):
        turns.append({"role": m["role"], "content": _content({"content": [
            *[p for p in m["content"] if p.get("type") in ("image", "video")], {"type": "text", "text": template}]})})
    return {"messages": turns, "objects": {"ref": list(g["ref"]), "bbox": bbox}}


def to_swift(doc: dict[str, Any], media: list[str]) -> dict[str, Any] | str:
    """ms-swift standard dataset format; grounding with ``<ref-object>`` / ``<bbox>`` and ``objects``."""
    meta, messages = doc.get("meta") or {}, doc.get("messages") or []
    if _is_pretrain(doc):  # `swift pt` appends no eos to a response that already ends in a stop word
        return _with_media({"messages": [{"role": "assistant", "content": _content(messages[0]) + ENDOFTEXT}]},
                           messages, media)
    if _is_video(messages):
        if any(v % SWIFT_FRAME_FACTOR for size in meta.get("image_sizes") or [] for v in size):
            return "swift_video_frames_resized_to_56px_multiples"
        if _sample_fps(doc) not in (None, SWIFT_VIDEO_FPS):
            return "swift_video_frames_read_at_2fps"
    grounded = _swift_objects(doc, messages)
    if grounded is not None:
        record = {"messages": grounded["messages"]}
    else:
        record = {"messages": [{"role": m["role"], "content": _content(m)} for m in messages]}
    record = _with_media(record, messages, media)
    if grounded is not None:
        record["objects"] = grounded["objects"]
    return record


def to_qwen(doc: dict[str, Any], media: list[str]) -> dict[str, Any] | str:
    """The official qwen-vl-finetune format: image (one path or a list) and human/gpt conversations."""
    meta, messages = doc.get("meta") or {}, doc.get("messages") or []
    if _is_video(messages):
        return "video_frames_unsupported"
    record: dict[str, Any] = {}
    if media:
        record["image"] = media[0] if len(media) == 1 else list(media)
    record["conversations"] = [
        {"from": "human" if m["role"] == "user" else "gpt" if m["role"] == "assistant" else m["role"],
         "value": _content(m, sep="\n")}
        for m in _chat(messages, meta)
    ]
    return record


# ----------------------------------------------------------------------------------------------------------
# hf: parquet with datasets features


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


HF_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()),
                                     ("content", pa.list_(pa.struct([("type", pa.string()),
                                                                     ("text", pa.string())])))]))),
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("meta", pa.string()),
])
HF_FEATURES = {
    "id": _value("string"),
    "messages": {"_type": "List", "feature": {
        "role": _value("string"),
        "content": {"_type": "List", "feature": {"type": _value("string"), "text": _value("string")}}}},
    "images": {"_type": "List", "feature": {"_type": "Image"}},
    "input_ids": {"_type": "List", "feature": _value("int32")},
    "labels": {"_type": "List", "feature": _value("int32")},
    "meta": _value("string"),
}


def to_hf(doc: dict[str, Any], media: list[tuple[str, bytes]]) -> dict[str, Any]:
    """One parquet row: the shard's messages (string contents as one text part), the media bytes in order."""
    messages = []
    for m in doc.get("messages") or []:
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else [
            {"type": p.get("type", "text"), "text": p.get("text")} for p in content or []]
        messages.append({"role": m["role"], "content": parts})
    return {"id": doc["id"], "messages": messages,
            "images": [{"bytes": data, "path": f"{doc['id']}.{suffix}"} for suffix, data in media],
            "input_ids": doc.get("input_ids"), "labels": doc.get("labels"),
            "meta": json.dumps(doc.get("meta") or {}, sort_keys=True, ensure_ascii=False)}


def _export_hf(samples: Iterator[tuple[str, dict[str, Any], list[tuple[str, bytes]]]], store: Store,
               folder: tuple[str, ...]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    files: list[str] = []
    metadata = {b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()}

    def flush() -> None:
        name = f"data-{len(files):05d}.parquet"
        store.write_parquet(pa.Table.from_pylist(rows, schema=HF_SCHEMA.with_metadata(metadata)), *folder, name)
        files.append(name)
        rows.clear()

    n = 0
    for _key, doc, media in samples:
        rows.append(to_hf(doc, media))
        n += 1
        if len(rows) >= HF_ROWS_PER_FILE:
            flush()
    if rows or not files:
        flush()
    return {"trainer": "hf", "samples": n, "skipped": {}, "data": files,
            "how_to_load": 'datasets.load_dataset("parquet", data_files="<this folder>/data-*.parquet")'}


# ----------------------------------------------------------------------------------------------------------
# Settings and config fragments


def _settings(trainer: str, docs: list[dict[str, Any]], video_fps: float | None) -> dict[str, Any]:
    """The trainer settings under which the exported samples encode exactly as the shards."""
    metas = [d.get("meta") or {} for d in docs]
    images = [a[0] * a[1] for d, m in zip(docs, metas, strict=True) if not _is_video(d.get("messages") or [])
              for a in m.get("image_sizes") or []]
    frames = [a[0] * a[1] for d, m in zip(docs, metas, strict=True) if _is_video(d.get("messages") or [])
              for a in m.get("image_sizes") or []]
    longest = max([len(d.get("input_ids") or []) or int((d.get("scores") or {}).get("n_tokens") or 0)
                   for d in docs], default=0)
    max_pixels = max([int(m["max_pixels"]) for m in metas if m.get("max_pixels")], default=None)
    min_pixels = min([int(m["min_pixels"]) for m in metas if m.get("min_pixels")], default=None)
    dialects = sorted({m["dialect"] for m in metas if m.get("dialect")})
    if trainer == "llamafactory":
        s: dict[str, Any] = {"dataset": "vlcurate", "dataset_dir": ".", "template": "qwen2_vl",
                             "cutoff_len": longest, "packing": False}
        if images:  # LLaMA-Factory downsizes an image above image_max_pixels (default 768*768)
            s.update(image_max_pixels=max(images), image_min_pixels=min(images))
        if frames:  # and a video frame above video_max_pixels (default 256*256)
            s.update(video_max_pixels=max(frames), video_min_pixels=min(frames), video_fps=video_fps or 2.0)
        return s
    if trainer == "swift":
        env = {"QWENVL_BBOX_FORMAT": "new" if dialects == ["qwen2.5-vl"] else "legacy"}
        if max_pixels:  # qwen-vl-utils resizes each image with these limits, as the format stage did
            env.update(MAX_PIXELS=str(max_pixels), MIN_PIXELS=str(min_pixels))
        flags = {"--template": "qwen2_5_vl", "--max_length": str(longest), "--packing": "false"}
        if dialects:
            flags["--norm_bbox"] = "none" if dialects == ["qwen2.5-vl"] else "norm1000"
        return {"env": env, "flags": flags}
    return {}


def _llamafactory_info(records: list[dict[str, Any]]) -> dict[str, Any]:
    """dataset_info.json declaring only the media columns the records have (LLaMA-Factory reads every
    declared column of every record)."""
    columns = {"messages": "messages"}
    for col in ("images", "videos"):
        if any(col in r for r in records):
            columns[col] = col
    return {"vlcurate": {
        "file_name": "data.jsonl", "formatting": "sharegpt", "columns": columns,
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}


def _swift_script(settings: dict[str, Any], data_files: dict[str, str]) -> str:
    env = " ".join(f"{k}={v}" for k, v in settings["env"].items())
    flags = " ".join(f"{k} {v}" for k, v in settings["flags"].items())
    lines = ["#!/usr/bin/env bash",
             "# ms-swift 4.6 (+ pip install qwen-vl-utils==0.0.14): the settings under which this export encodes",
             "# exactly as the shards. Run from this folder: image and frame paths are relative to it.",
             'cd "$(dirname "$0")"']
    for command, name in data_files.items():
        extra = " --use_chat_template false" if command == "pt" else ""
        lines.append(f"{env} swift {command} --dataset {name} {flags}{extra} \"$@\"")
    return "\n".join(lines) + "\n"


HOW_TO_LOAD = {
    "llamafactory": "merge llamafactory.yaml into the training YAML (dataset_dir: this folder); media paths are "
                    "relative to it",
    "swift": "run swift.sh from this folder (or copy its environment and flags); paths are relative to it",
    "qwen": "data_list entry: {annotation_path: <this folder>/data.jsonl, data_path: <this folder>}",
}


# ----------------------------------------------------------------------------------------------------------
# Driver


def export(out: str, trainer: str) -> dict[str, Any]:
    """Write ``OUT/exports/<trainer>/`` from the job's shards; returns the summary written to export.json."""
    _check_trainers([trainer])
    store = Store(out)
    return _export(iter_shard_samples(store), store, ("exports", trainer), trainer)


def export_all(store_uri: str, trainers: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Export the job at ``store_uri`` for each trainer (``output.exports``); {trainer: summary}."""
    return {t: export(store_uri, t) for t in dict.fromkeys(trainers)}


def _check_trainers(trainers: list[str] | tuple[str, ...]) -> None:
    for trainer in trainers:
        if trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {trainer!r} (known: {', '.join(TRAINERS)})")


def qualified_key(name: str, key: str) -> str:
    """A sample's key where several jobs meet: the job's ``input.name``, then its id (as the mixing step)."""
    return f"{name}-{key}"


def input_name(job: str) -> str:
    """The ``input.name`` of the finished job at ``job`` (from its job.json); a one-line error without it."""
    store = Store(job)
    if not store.exists("job.json"):
        raise ValueError(f"{job}: not a finished vlcurate job folder (no job.json)")
    name = (json.loads(store.read_bytes("job.json")).get("recipe", {}).get("input") or {}).get("name")
    if not name:
        raise ValueError(f"{job}: set input.name in its recipe (it qualifies the keys of jobs exported together)")
    return name


def export_jobs(jobs: list[str], dest: str, trainers: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Export several finished jobs into one place, ``DEST/<trainer>/``, for each trainer. Two datasets with the
    same relative layout have the same ids (the id hashes the relative path), so every key (the ``.ids`` files,
    the ``hf`` rows' ``id``) is qualified by its job's ``input.name``, which each job must set and which must
    differ; {trainer: summary}."""
    _check_trainers(trainers)
    names = [input_name(j) for j in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"input.name {', '.join(repeated)} names several of the jobs: the names must differ")
    store = Store(dest)

    def samples() -> Iterator[tuple[str, dict[str, Any], list[tuple[str, bytes]]]]:
        for name, job in zip(names, jobs, strict=True):
            for key, doc, media in iter_shard_samples(Store(job)):
                key = qualified_key(name, key)
                yield key, {**doc, "id": key}, media

    return {t: _export(samples(), store, (t,), t) for t in dict.fromkeys(trainers)}


def _export(samples: Iterator[tuple[str, dict[str, Any], list[tuple[str, bytes]]]], store: Store,
            folder: tuple[str, ...], trainer: str) -> dict[str, Any]:
    """Write ``folder`` of ``store`` from the samples (key, JSON, media); returns the summary in export.json."""
    store.delete_dir(*folder)
    if trainer == "hf":
        summary = _export_hf(samples, store, folder)
        store.write_bytes(json.dumps(summary, indent=2).encode(), *folder, "export.json")
        return summary
    files: dict[str, list[str]] = {"data.jsonl": []}
    keys: dict[str, list[str]] = {"data.jsonl": []}
    skipped: dict[str, int] = {}
    written: set[str] = set()
    exported: list[dict[str, Any]] = []
    video_fps: float | None = None
    for key, doc, media in samples:
        # media files are named by content: the many samples built from one image share one file
        names = [f"images/{hashlib.sha1(data).hexdigest()[:20]}.{suffix.partition('.')[2]}"
                 for suffix, data in media]
        if (doc.get("meta") or {}).get("layout") == "interleaved":  # text and images in reading order: no
            record: dict[str, Any] | str = "interleaved_document_not_supported"  # trainer form checked yet
        elif trainer == "llamafactory":
            video_fps = video_fps or (_sample_fps(doc) if _is_video(doc.get("messages") or []) else None)
            record = to_llamafactory(doc, names, video_fps)
        else:
            record = (to_swift if trainer == "swift" else to_qwen)(doc, names)
        if isinstance(record, str):
            skipped[record] = skipped.get(record, 0) + 1
            continue
        for name, (_, data) in zip(names, media, strict=True):
            if name not in written:
                store.write_bytes(data, *folder, name)
                written.add(name)
        target = "data_pt.jsonl" if trainer == "swift" and _is_pretrain(doc) else "data.jsonl"
        files.setdefault(target, []).append(json.dumps(record, ensure_ascii=False))
        keys.setdefault(target, []).append(key)
        exported.append(doc)
    settings = _settings(trainer, exported, video_fps)
    for name, lines in files.items():  # NAME.ids: the shard key of each line of NAME
        store.write_bytes(("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"), *folder, name)
        store.write_bytes("".join(k + "\n" for k in keys[name]).encode(), *folder, name.replace(".jsonl", ".ids"))
    if trainer == "llamafactory":
        records = [json.loads(line) for line in files["data.jsonl"]]
        store.write_bytes(json.dumps(_llamafactory_info(records), indent=2).encode(), *folder, "dataset_info.json")
        store.write_bytes(("# LLaMA-Factory 0.9.5: merge into the training YAML; with these settings every "
                           "exported sample encodes exactly as the shards\n"
                           + yaml.safe_dump(settings, sort_keys=False)).encode(), *folder, "llamafactory.yaml")
    if trainer == "swift":
        commands = {"sft" if name == "data.jsonl" else "pt": name for name, lines in files.items() if lines}
        store.write_bytes(_swift_script(settings, commands).encode(), *folder, "swift.sh")
    summary = {"trainer": trainer, "samples": len(exported), "media_files": len(written),
               "skipped": dict(sorted(skipped.items())),
               "data": [n for n, lines in files.items() if lines or n == "data.jsonl"],
               "settings": settings, "how_to_load": HOW_TO_LOAD[trainer]}
    store.write_bytes(json.dumps(summary, indent=2).encode(), *folder, "export.json")
    return summary
