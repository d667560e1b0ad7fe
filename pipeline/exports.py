"""Exports of a finished job's shards to other trainers' dataset formats (DESIGN.md, Output layout).

``export(out, trainer)`` reads ``OUT/shards/*.tar`` (webdataset: ``KEY.json`` with messages / meta /
annotations, ``KEY.0.jpg`` ...) and writes ``OUT/exports/<trainer>/data.jsonl``, the images under
``OUT/exports/<trainer>/images/`` (named by content hash: the samples built from one image share
one file) and ``export.json`` (counts, skipped samples by reason, how to load it).
``export_all(out, trainers)`` does it for each trainer of ``output.exports``.

Formats (checked against the projects' documentation and code, see each converter):

- ``llamafactory``: LLaMA-Factory's multimodal sharegpt form, ``{"messages": [{"role", "content"}],
  "images": [...], "videos": [[frames...]]}`` with one ``<image>`` / ``<video>`` tag per medium in the
  content, plus ``dataset_info.json`` (formatting sharegpt, role/content tags). Paths are relative to the
  export folder, LLaMA-Factory's default ``media_dir`` (= ``dataset_dir``). A video is its planned frames, a
  nested list of images, which LLaMA-Factory's mm_plugin accepts in place of a video file.
- ``swift``: ms-swift's standard form ``{"messages", "images", "videos"}``; grounding samples use its
  grounding form: ``<ref-object>`` / ``<bbox>`` placeholders and ``"objects": {"ref": [...], "bbox": [...]}``
  (bbox_type "real": pixel corners of the exported image, which is the original image scaled by
  W'/W, H'/H when it was pre-resized; ms-swift scales real boxes with the size of the image it loads).
  Paths are absolute for a local job folder (ms-swift resolves relative paths against its working
  directory), relative otherwise. A video is its list of frames (qwen-vl-utils' frame-list form).
- ``qwen``: the official Qwen2.5-VL fine-tuning code's form, ``{"image": path | [paths], "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}]}``; paths relative to the
  export folder (set it as the dataset's ``data_path``). Its loader takes a video as one file path, which the
  shards do not hold (they hold the planned frames), so video samples are skipped (counted in export.json).

Stage-1 caption samples (``meta.layout == "pretrain"``) become ms-swift's pretraining form (one assistant
message ``<image>CAPTION``) and, for the chat-only formats, a user turn with the image and the caption as
the answer.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from typing import Any

from formatters.builders import message_text, render_template
from formatters.qwen import convert_box
from pipeline.storage import Store, is_remote

TRAINERS = ("llamafactory", "swift", "qwen")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "bin")


# ----------------------------------------------------------------------------------------------------------
# Reading the shards


def iter_shard_samples(store: Store) -> Iterator[tuple[str, dict[str, Any], list[tuple[str, bytes]]]]:
    """(key, the sample's JSON, [(file name suffix like "0.jpg", bytes)] in image order) for every sample of
    every shard, in shard name order then tar order (sorted by id)."""
    for name in store.list("shards"):
        if not name.endswith(".tar"):
            continue
        with store.fs.open_input_stream(store.path("shards", name)) as f, tarfile.open(fileobj=f, mode="r|") as tf:
            key: str | None = None
            doc: dict[str, Any] | None = None
            media: list[tuple[int, str, bytes]] = []
            for member in tf:
                if not member.isfile():
                    continue
                k, _, suffix = member.name.partition(".")
                data = tf.extractfile(member).read()  # type: ignore[union-attr]
                if k != key:
                    if key is not None and doc is not None:
                        yield key, doc, [(s, d) for _, s, d in sorted(media)]
                    key, doc, media = k, None, []
                if suffix == "json":
                    doc = json.loads(data)
                else:
                    index, _, ext = suffix.partition(".")
                    if index.isdigit() and ext in IMAGE_EXTENSIONS:
                        media.append((int(index), suffix, data))
            if key is not None and doc is not None:
                yield key, doc, [(s, d) for _, s, d in sorted(media)]


# ----------------------------------------------------------------------------------------------------------
# Pure conversions: one sample's JSON + its exported media paths -> one jsonl record (or a skip reason)


def _is_video(meta: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "video" for p in m["content"])
               for m in messages)


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


def to_llamafactory(doc: dict[str, Any], media: list[str]) -> dict[str, Any] | str:
    """LLaMA-Factory sharegpt (multimodal): messages with ``<image>`` / ``<video>`` tags, images / videos."""
    meta, messages = doc.get("meta") or {}, doc.get("messages") or []
    record: dict[str, Any] = {"messages": [{"role": m["role"], "content": _content(m)}
                                           for m in _chat(messages, meta)]}
    if _is_video(meta, messages):
        record["videos"] = [list(media)]
    elif media:
        record["images"] = list(media)
    return record


def _swift_objects(doc: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """ms-swift grounding form (templates + objects) when the sample has boxes and the template renders
    back to its texts; None otherwise (then the dialect text is written as is)."""
    ann = doc.get("annotations") or {}
    g = ann.get("grounding") if isinstance(ann, dict) else None
    meta = doc.get("meta") or {}
    if not g or not g.get("bbox") or any(len(b) != 4 for b in g["bbox"]) or len(g["template"]) != len(messages):
        return None
    if any(not isinstance(m.get("content"), list) for m in messages):
        return None
    if not meta.get("original_sizes") or not meta.get("image_sizes"):
        return None
    (ow, oh), (sw, sh) = meta["original_sizes"][0], meta["image_sizes"][0]
    dialect, lo, hi = meta["dialect"], meta["min_pixels"], meta["max_pixels"]
    coords = [convert_box(b, ow, oh, dialect, lo, hi) for b in g["bbox"]]
    rendered = render_template("\x00".join(g["template"]), g["ref"], coords, dialect).split("\x00")
    if rendered != [message_text(m) for m in messages]:
        return None
    turns = []
    for m, template in zip(messages, g["template"], strict=True):
        turns.append({"role": m["role"], "content": _content({"content": [
            *[p for p in m["content"] if p.get("type") in ("image", "video")], {"type": "text", "text": template}]})})
    bbox = [[round(v * (sw / ow if i % 2 == 0 else sh / oh), 2) for i, v in enumerate(b)] for b in g["bbox"]]
    return {"messages": turns, "objects": {"ref": list(g["ref"]), "bbox": bbox}}


def to_swift(doc: dict[str, Any], media: list[str]) -> dict[str, Any] | str:
    """ms-swift standard dataset format; grounding with ``<ref-object>`` / ``<bbox>`` and ``objects``."""
    meta, messages = doc.get("meta") or {}, doc.get("messages") or []
    grounded = _swift_objects(doc, messages)
    if grounded is not None:
        record = {"messages": grounded["messages"]}
    else:
        record = {"messages": [{"role": m["role"], "content": _content(m)} for m in messages]}
    if _is_video(meta, messages):
        record["videos"] = [list(media)]
    elif media:
        record["images"] = list(media)
    if grounded is not None:
        record["objects"] = grounded["objects"]
    return record


def to_qwen(doc: dict[str, Any], media: list[str]) -> dict[str, Any] | str:
    """The official qwen-vl-finetune format: image (one path or a list) and human/gpt conversations."""
    meta, messages = doc.get("meta") or {}, doc.get("messages") or []
    if _is_video(meta, messages):
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


CONVERTERS = {"llamafactory": to_llamafactory, "swift": to_swift, "qwen": to_qwen}

LLAMAFACTORY_INFO = {
    "vlcurate": {
        "file_name": "data.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "videos": "videos"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"},
    }
}
HOW_TO_LOAD = {
    "llamafactory": "dataset_dir: this folder; dataset: vlcurate (dataset_info.json); media paths are relative "
                    "to it (media_dir defaults to dataset_dir). Set image_max_pixels >= the recipe's "
                    "format.max_pixels and video_max_pixels >= the frame area, or LLaMA-Factory resizes the "
                    "images again (its defaults are 768*768 and 256*256) and qwen2.5-vl coordinates no longer "
                    "match; video frames are read at 2 fps, so samples whose sample_fps is not 2 get other "
                    "temporal positions than the shards",
    "swift": "--dataset data.jsonl; image paths are absolute for a local job folder. For qwen2.5-vl grounding "
             "set QWENVL_BBOX_FORMAT=new (ms-swift's default 'legacy' renders the JSON boxes as "
             "<|box_start|> text); ms-swift recomputes box coordinates from `objects` with its own rounding "
             "(no clamp at the right/bottom edge, round instead of floor for qwen-vl), so a few coordinates "
             "can differ by one from the shards; video frames are read at 2 fps",
    "qwen": "data_list entry: {annotation_path: <this folder>/data.jsonl, data_path: <this folder>}",
}


# ----------------------------------------------------------------------------------------------------------
# Driver


def export(out: str, trainer: str) -> dict[str, Any]:
    """Write ``OUT/exports/<trainer>/`` from the job's shards; returns the summary written to export.json."""
    if trainer not in CONVERTERS:
        raise ValueError(f"unknown trainer {trainer!r} (known: {', '.join(TRAINERS)})")
    store = Store(out)
    folder = ("exports", trainer)
    store.delete_dir(*folder)
    convert = CONVERTERS[trainer]
    absolute = trainer == "swift" and not is_remote(out)
    lines: list[str] = []
    skipped: dict[str, int] = {}
    written: set[str] = set()
    for _key, doc, media in iter_shard_samples(store):
        # media files are named by content: the many samples built from one image share one file
        names = [f"images/{hashlib.sha1(data).hexdigest()[:20]}.{suffix.partition('.')[2]}"
                 for suffix, data in media]
        paths = [store.path(*folder, n) if absolute else n for n in names]
        record = convert(doc, paths)
        if isinstance(record, str):
            skipped[record] = skipped.get(record, 0) + 1
            continue
        for name, (_, data) in zip(names, media, strict=True):
            if name not in written:
                store.write_bytes(data, *folder, name)
                written.add(name)
        lines.append(json.dumps(record, ensure_ascii=False))
    n_media = len(written)
    if trainer == "llamafactory":
        store.write_bytes(json.dumps(LLAMAFACTORY_INFO, indent=2).encode(), *folder, "dataset_info.json")
    summary = {"trainer": trainer, "samples": len(lines), "media_files": n_media,
               "skipped": dict(sorted(skipped.items())), "data": "data.jsonl", "how_to_load": HOW_TO_LOAD[trainer]}
    store.write_bytes(("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"), *folder, "data.jsonl")
    store.write_bytes(json.dumps(summary, indent=2).encode(), *folder, "export.json")
    return summary


def export_all(store_uri: str, trainers: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Export the job at ``store_uri`` for each trainer (``output.exports``); {trainer: summary}."""
    return {t: export(store_uri, t) for t in dict.fromkeys(trainers)}
