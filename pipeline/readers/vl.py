"""Vision-language benchmark sets as distributed: SNLI-VE and NLVR2 jsonl, Visual Genome QA (DESIGN.md, Input
formats). Rows carry images + text + answer, ready for the ``vqa`` / ``qa`` builders.

- ``snli_ve``: SNLI-VE jsonl (SNLI's fields + ``Flickr30K_ID``), one row per line: images = [``{image_dir}/
  {Flickr30K_ID}.jpg``], text = the hypothesis (``sentence2``), answer = ``gold_label`` (entailment / neutral /
  contradiction), annotations = {"premise": sentence1, "annotator_labels"}, meta = {"Flickr30K_ID",
  "captionID", "pairID"}; id key ``pairID``. A ``gold_label`` of ``-`` (no annotator consensus) is
  ``no_label``.
- ``nlvr2``: NLVR2 jsonl (``identifier``, ``sentence``, ``label`` True/False), one row per line with two images,
  left then right: ``{image_dir}[/{directory}]/{pair}-img0.png`` and ``-img1.png`` where pair is the identifier
  without its last ``-N`` (``.jpg`` is tried when the ``.png`` is absent); text = sentence, answer = ``true`` /
  ``false``; meta keeps identifier, synset, query, left_url, right_url; id key ``identifier``.
- ``visual_genome_qa``: ``question_answers.json`` (a list of ``{"id": image_id, "qas": [...]}``), one row per
  QA in file order: images = [``{image_dir}/{image_id}.jpg``, also looked up in ``VG_100K/`` and
  ``VG_100K_2/``], text = question, answer = the answer without its final period (``"Sailboats."`` ->
  ``"Sailboats"``), annotations = {"qa_id", "raw_answer"}, meta = {"image_id", "file_name"}; id =
  make_id(file, qa_id). A file that is not valid JSON is one line naming it (the whole file is unreadable).

``input.options.image_dir`` (all three) defaults to the input file's folder. Drop reasons: ``invalid_json`` /
``invalid_utf8`` / ``empty_line`` (jsonl lines), ``missing_field`` (a required field absent or not a string),
``no_label`` (a label outside the format's set), ``missing_file`` (an image).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from pipeline.readers.base import Partition, cap_text, check_options, drop, load_image
from pipeline.readers.grounding import cached, load_json, option_path, slices
from pipeline.readers.web import JsonlReader
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, RecipeError
from pipeline.storage import resolve

SNLI_LABELS = ("entailment", "neutral", "contradiction")


def load_first(fs: pafs.FileSystem, folder: str, names: list[str], spec: InputSpec
               ) -> tuple[bytes | None, str, str | None]:
    """The first of `names` (relative to `folder`, confined to it) that loads: (bytes, name, None), else
    (None, names[0], the first name's error reason)."""
    first_err = None
    for name in names:
        data, _, err = load_image(fs, folder, name, spec)
        if err is None:
            return data, name, None
        first_err = first_err or err
    return None, names[0], first_err or "no_image"


def attach_image(row: dict[str, Any], fs: pafs.FileSystem, folder: str, names: list[str], spec: InputSpec
                 ) -> dict[str, Any]:
    """The row with the first of `names` that loads appended to its images, or the row dropped with the reason."""
    data, name, err = load_first(fs, folder, names, spec)
    if err:
        return drop(row, err, f"{name} in {folder}")
    row["images"].append(data)
    return row


def one_json_file(spec: InputSpec, options: tuple[str, ...], kind: str, need: str,
                  parse: Callable[[bytes, str], Any]) -> tuple[str, Any]:
    """(path, parse(file bytes, input.path)) of a format that reads one JSON file, parsed once per process."""
    check_options(spec, options)
    fs, path = resolve(spec.path)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise RecipeError(f"input.path: format {spec.format} needs {need}, not found: {spec.path}")
    return path, cached(fs, path, kind, lambda b: parse(b, spec.path))


def _missing(rec: dict[str, Any], row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The row dropped with `missing_field` unless every field is a non-empty string or a number."""
    bad = [f for f in fields
           if not ((isinstance(rec.get(f), str) and rec[f].strip()) or isinstance(rec.get(f), int | float))]
    return drop(row, "missing_field", ", ".join(bad)) if bad else None


def _keep(rec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: rec[k] for k in keys if isinstance(rec.get(k), str | int | float | bool)}


class SnliVeReader(JsonlReader):
    options = ("image_dir",)
    record_key = "pairID"

    def convert(self, rec, row, spec, fs, base):
        if (bad := _missing(rec, row, ("Flickr30K_ID", "sentence2", "gold_label"))) is not None:
            return bad
        row["text"] = rec["sentence2"].strip()
        row["meta"] = _keep(rec, ("Flickr30K_ID", "captionID", "pairID"))
        row["annotations"] = {"premise": rec.get("sentence1"), "annotator_labels": rec.get("annotator_labels")}
        label = str(rec["gold_label"]).strip().lower()
        if label not in SNLI_LABELS:
            return drop(row, "no_label", f"gold_label {rec['gold_label']!r} (expected {', '.join(SNLI_LABELS)})")
        row["answer"] = label
        ifs, image_dir = option_path(spec, "image_dir", base)
        return attach_image(row, ifs, image_dir, [f"{rec['Flickr30K_ID']}.jpg"], spec)


class Nlvr2Reader(JsonlReader):
    options = ("image_dir",)
    record_key = "identifier"

    def convert(self, rec, row, spec, fs, base):
        if (bad := _missing(rec, row, ("identifier", "sentence"))) is not None:
            return bad
        row["text"] = rec["sentence"].strip()
        row["meta"] = _keep(rec, ("identifier", "synset", "query", "left_url", "right_url", "directory"))
        label = str(rec.get("label")).strip().lower()
        if label not in ("true", "false"):
            return drop(row, "no_label", f"label {rec.get('label')!r} (expected True or False)")
        row["answer"] = label
        pair = str(rec["identifier"]).rsplit("-", 1)[0]
        folder = f"{rec['directory']}/" if rec.get("directory") is not None else ""
        ifs, image_dir = option_path(spec, "image_dir", base)
        for side in ("img0", "img1"):
            stem = f"{folder}{pair}-{side}"
            row = attach_image(row, ifs, image_dir, [f"{stem}.png", f"{stem}.jpg"], spec)
            if row["drop_reason"]:
                break
        return row


def _vg_qas(data: bytes, what: str) -> list[dict[str, Any]]:
    doc = load_json(data, what)
    if not isinstance(doc, list):
        raise RecipeError(f"input.path: {what} is not a Visual Genome question_answers.json (a list of images)")
    out = []
    for entry in doc:
        entry = entry if isinstance(entry, dict) else {}
        qas = entry.get("qas") if isinstance(entry.get("qas"), list) else [{}]  # no qas: one missing_field row
        for qa in qas:
            qa = qa if isinstance(qa, dict) else {}
            out.append({**qa, "image_id": qa.get("image_id", entry.get("id"))})
    return out


class VisualGenomeQaReader:
    options = ("image_dir",)

    def _load(self, spec: InputSpec) -> tuple[str, list[dict[str, Any]]]:
        return one_json_file(spec, self.options, "vg_qas", "question_answers.json", _vg_qas)

    def plan(self, spec: InputSpec) -> list[Partition]:
        path, qas = self._load(spec)
        return slices(len(qas), spec.partition_rows, path, posixpath.basename(path))

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        path, qas = self._load(spec)
        ifs, image_dir = option_path(spec, "image_dir", posixpath.dirname(path))
        memo: dict[Any, tuple[bytes | None, str, str | None]] = {}
        rows = []
        for i, qa in enumerate(qas[part.start:part.stop]):
            key = qa.get("qa_id") if qa.get("qa_id") is not None else f"#{part.start + i}"
            row = new_row(make_id(part.relpath, key), f"{part.relpath}#{key}")
            if (bad := _missing(qa, row, ("image_id", "question", "answer"))) is not None:
                rows.append(bad)
                continue
            image_id = qa["image_id"]
            answer = qa["answer"].strip()
            row["text"], row["answer"] = qa["question"].strip(), answer[:-1] if answer.endswith(".") else answer
            row["annotations"] = {"qa_id": qa.get("qa_id"), "raw_answer": qa["answer"]}
            if image_id not in memo:  # the QAs of one image are consecutive: keep the last image only
                name = f"{image_id}.jpg"
                memo = {image_id: load_first(ifs, image_dir, [name, f"VG_100K/{name}", f"VG_100K_2/{name}"], spec)}
            data, name, err = memo[image_id]
            row["meta"] = {"image_id": image_id, "file_name": name}
            if err:
                rows.append(drop(row, err, f"{name} in {image_dir}"))
                continue
            row["images"] = [data]
            rows.append(cap_text(row, spec))
        return rows
