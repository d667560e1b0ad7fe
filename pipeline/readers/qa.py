"""QA-with-ground-truth readers: GSM8K, MATH / MATH-500, HumanEval, a plain image QA jsonl, VQA v2 (DESIGN.md).

jsonl formats (``.jsonl``, ``.json`` or ``.jsonl.gz``; a file or a folder of them; partitions of
``input.partition_rows`` lines). Ids are make_id(file path relative to the input root, key) where key is
``input.key_column``'s value when set, else the record's own id (HumanEval ``task_id``, MATH-500 ``unique_id``),
else the 1-based line number. Text-only rows have ``images == []``.

- ``gsm8k``: text = question; answer = the number after the last ``####``, normalised (whitespace, thousands
  commas and ``$`` removed, ``12.0`` -> ``12``); meta.solution = the reasoning before ``####`` with its
  calculator annotations ``<<48/2=24>>`` removed (the ``qa`` builder's ``answer_style: solution`` trains on it).
- ``math``: text = problem; answer = MATH-500's ``answer`` field when present, else the content of the last
  ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) of the solution, braces balanced; meta.solution,
  meta.subject (``subject``, or MATH's ``type``), meta.level (int; MATH's "Level 5" -> 5), meta.unique_id.
- ``humaneval``: text = prompt; answer = canonical_solution (None when absent), both exactly as in the file
  (prompt + answer is the program: never stripped);
  annotations = {"test", "entry_point", "task_id"}.
- ``qa_jsonl``: web.py's record logic with image/question/answer as the default image/text/answer columns
  (an ``input.image_column`` / ``text_column`` / ``answer_column`` set in the recipe wins); the image is optional.

Drop reasons: ``invalid_utf8``, ``empty_line``, ``invalid_json`` (as the jsonl reader), ``missing_field`` (a
required field absent or not a string), ``no_final_answer`` (gsm8k without ``####``, math without a boxed answer
or with unbalanced braces), ``missing_file`` / ``no_image`` (qa_jsonl images).

``vqav2``: input.path = the VQA v2 **questions** JSON (``{"questions": [...], "data_subtype": "train2014"}``);
``input.options``: ``annotations`` (the annotations JSON; default: the file beside the questions whose name has
"annotations" for "questions", or the official ``v2_mscoco_{subtype}_annotations.json``; ``null`` = questions
only, no answers), ``image_dir`` (default: the questions file's folder), ``split`` (default ``data_subtype``):
images are ``{image_dir}/COCO_{split}_{image_id:012d}.jpg``. One row per question in file order: images = [bytes],
text = question, answer = the most common of the 10 answers (raw strings; a tie goes to the answer that occurs
first in the annotators' order), annotations = {"answers": [10 strings], "question_id", "answer_type",
"question_type"} (None where the file lacks them), meta = {"image_id", "file_name", "split"} (+
"multiple_choice_answer" when the file has it). id = make_id(questions file, question_id). Drop reasons:
``missing_file``, ``no_answers`` (no annotation for the question), ``missing_field``.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections import Counter
from typing import Any

import pyarrow.fs as pafs

from formatters.builders import last_boxed
from pipeline.readers.base import (
    Partition,
    _files,
    _name,
    cap_text,
    check_options,
    drop,
    load_image,
    record_to_row,
)
from pipeline.readers.grounding import cached, load_json, option_path, slices
from pipeline.readers.web import JsonlReader
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, RecipeError
from pipeline.storage import resolve


def _require(rec: dict[str, Any], row: dict[str, Any], *fields: str) -> dict[str, Any] | None:
    """None when every field is a non-empty string, else the row dropped with `missing_field`."""
    missing = [f for f in fields if not isinstance(rec.get(f), str) or not rec[f].strip()]
    return drop(row, "missing_field", ", ".join(missing)) if missing else None


def _scalars(rec: dict[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in rec.items()
            if k not in skip and isinstance(v, str | int | float | bool) and len(str(v)) <= 1000}


# ---------------------------------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")  # GSM8K's calculator annotations: "48/2 = <<48/2=24>>24"


def normalize_number(s: str) -> str:
    """GSM8K final answer: strip spaces, thousands commas and `$`; integral decimals lose `.0` ('12.50' stays)."""
    s = s.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if _NUMBER.fullmatch(s):
        if "." in s:
            whole, frac = s.split(".")
            return whole if not frac.strip("0") else s
        return str(int(s))
    return s


def split_gsm8k(answer: str) -> tuple[str, str] | None:
    """(reasoning, final answer normalised) from a GSM8K answer ending `#### N`, or None without `####`; the
    reasoning without its calculator annotations (`= <<48/2=24>>24` -> `= 24`)."""
    if "####" not in answer:
        return None
    reasoning, _, final = answer.rpartition("####")
    final = normalize_number(final)
    return (_CALCULATOR.sub("", reasoning).strip(), final) if final else None


class Gsm8kReader(JsonlReader):
    def convert(self, rec, row, spec, fs, base):
        if (bad := _require(rec, row, "question", "answer")) is not None:
            return bad
        row["text"] = rec["question"]
        parsed = split_gsm8k(rec["answer"])
        row["meta"] = {**_scalars(rec, ("question", "answer")), "solution": rec["answer"]}
        if parsed is None:
            return drop(row, "no_final_answer", "answer has no '#### N'")
        row["meta"]["solution"], row["answer"] = parsed
        return row


# ---------------------------------------------------------------------------------------------- MATH


def _level(v: Any) -> Any:
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", v)
        return int(m.group(1)) if m else v
    return v


class MathReader(JsonlReader):
    record_key = "unique_id"

    def convert(self, rec, row, spec, fs, base):
        if (bad := _require(rec, row, "problem")) is not None:
            return bad
        row["text"] = rec["problem"]
        solution = rec.get("solution") if isinstance(rec.get("solution"), str) else None
        meta = _scalars(rec, ("problem", "solution", "answer", "type"))
        meta["solution"] = solution
        meta["subject"] = rec.get("subject", rec.get("type"))
        meta["level"] = _level(rec.get("level"))
        row["meta"] = meta
        answer = rec.get("answer")
        if isinstance(answer, int | float) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            answer = last_boxed(solution) if solution else None
        if answer is None or not answer.strip():
            return drop(row, "no_final_answer", "no answer field and no balanced \\boxed{} in the solution")
        row["answer"] = answer.strip()
        return row


# ---------------------------------------------------------------------------------------------- HumanEval


class HumanEvalReader(JsonlReader):
    record_key = "task_id"

    def convert(self, rec, row, spec, fs, base):
        if (bad := _require(rec, row, "prompt", "test", "entry_point")) is not None:
            return bad
        row["text"] = rec["prompt"]
        sol = rec.get("canonical_solution")
        row["answer"] = sol if isinstance(sol, str) else None
        row["annotations"] = {"test": rec["test"], "entry_point": rec["entry_point"], "task_id": rec.get("task_id")}
        row["meta"] = _scalars(rec, ("prompt", "test", "entry_point", "canonical_solution"))
        return row


# ---------------------------------------------------------------------------------------------- plain QA jsonl


class QaJsonlReader(JsonlReader):
    """image (optional) + question + answer columns; web.py's record_to_row does the work."""

    def _spec(self, spec: InputSpec) -> InputSpec:
        update = {}
        for field, default in (("image_column", "image"), ("text_column", "question"), ("answer_column", "answer")):
            if field not in spec.model_fields_set:
                update[field] = default
        return spec.model_copy(update=update) if update else spec

    def convert(self, rec, row, spec, fs, base):
        return record_to_row(rec, row, self._spec(spec), fs, base)


# ---------------------------------------------------------------------------------------------- VQA v2


def most_common(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one occurring first in the list."""
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def _questions(data: bytes, what: str) -> dict[str, Any]:
    doc = load_json(data, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("questions"), list):
        raise RecipeError(f"input.path: {what} is not a VQA questions file (no 'questions' list); "
                          "format vqav2 takes the questions JSON as input.path")
    return doc


def _annotations(data: bytes, what: str) -> dict[Any, dict[str, Any]]:
    doc = load_json(data, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise RecipeError(f"input.options.annotations: {what} is not a VQA annotations file")
    return {a.get("question_id"): a for a in doc["annotations"] if isinstance(a, dict)}


class VqaV2Reader:
    options = ("annotations", "image_dir", "split")

    def _load(self, spec: InputSpec) -> tuple[str, dict[str, Any], dict[Any, dict[str, Any]] | None]:
        check_options(spec, self.options)
        fs, path = resolve(spec.path)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise RecipeError(f"input.path: format vqav2 needs the questions JSON file, not found: {spec.path}")
        doc = cached(fs, path, "vqav2_questions", lambda b: _questions(b, spec.path))
        if "annotations" in spec.options and spec.options["annotations"] is None:
            return path, doc, None
        afs, apath = option_path(spec, "annotations", self._default_annotations(fs, path, doc))
        if afs.get_file_info(apath).type != pafs.FileType.File:
            raise RecipeError(f"input.options.annotations: not found: {apath} (name the annotations JSON, "
                              "or null for questions without answers)")
        return path, doc, cached(afs, apath, "vqav2_annotations", lambda b: _annotations(b, apath))

    @staticmethod
    def _default_annotations(fs: pafs.FileSystem, path: str, doc: dict[str, Any]) -> str:
        folder, name = posixpath.split(path)
        candidates = [name.replace("questions", "annotations")]
        if doc.get("data_subtype"):
            candidates.append(f"v2_mscoco_{doc['data_subtype']}_annotations.json")
        for c in candidates:
            if c != name and fs.get_file_info(posixpath.join(folder, c)).type == pafs.FileType.File:
                return posixpath.join(folder, c)
        return posixpath.join(folder, candidates[-1])

    def plan(self, spec: InputSpec) -> list[Partition]:
        path, doc, _ = self._load(spec)
        if not (spec.options.get("split") or doc.get("data_subtype")):
            raise RecipeError("input.options.split: the questions file has no data_subtype; "
                              "name the COCO split of the images (e.g. train2014)")
        return slices(len(doc["questions"]), spec.partition_rows, path, posixpath.basename(path))

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        path, doc, anns = self._load(spec)
        split = str(spec.options.get("split") or doc.get("data_subtype"))
        ifs, image_dir = option_path(spec, "image_dir", posixpath.dirname(path))
        images: dict[Any, tuple[bytes | None, str | None]] = {}
        rows = []
        for i, q in enumerate(doc["questions"][part.start:part.stop]):
            q = q if isinstance(q, dict) else {}
            qid = q.get("question_id")
            key = qid if qid is not None else f"#{part.start + i}"
            row = new_row(make_id(part.relpath, key), f"{part.relpath}#{key}")
            image_id = q.get("image_id")
            if not isinstance(image_id, int) or not isinstance(q.get("question"), str) or qid is None:
                rows.append(drop(row, "missing_field", "question, question_id and an int image_id are required"))
                continue
            file_name = f"COCO_{split}_{image_id:012d}.jpg"
            row["text"] = q["question"]
            row["meta"] = {"image_id": image_id, "file_name": file_name, "split": split}
            if image_id not in images:
                data, _, err = load_image(ifs, image_dir, file_name, spec)
                images = {image_id: (data, err)}  # questions of one image are consecutive: keep the last only
            data, err = images[image_id]
            if err:
                rows.append(drop(row, err, f"{file_name} in {image_dir}"))
                continue
            row["images"] = [data]
            ann = anns.get(qid) if anns is not None else None
            answers = [str(a.get("answer")) for a in (ann or {}).get("answers") or [] if isinstance(a, dict)]
            row["annotations"] = {"answers": answers, "question_id": qid,
                                  "answer_type": (ann or {}).get("answer_type"),
                                  "question_type": (ann or {}).get("question_type")}
            if ann is not None and isinstance(ann.get("multiple_choice_answer"), str):
                row["meta"]["multiple_choice_answer"] = ann["multiple_choice_answer"]
            if anns is not None:
                if not answers:
                    rows.append(drop(row, "no_answers", f"no annotation with answers for question {qid}"))
                    continue
                row["answer"] = most_common(answers)
            rows.append(cap_text(row, spec))
        return rows


def _glob_files(spec: InputSpec, suffix: str) -> tuple[pafs.FileSystem, str, list[str]]:
    """(fs, root, sorted files) for a file, a folder (its `suffix` files, recursively) or a glob pattern
    (``*``, ``?``, ``[...]``; the root is the folder before the first wildcard)."""
    if not any(c in spec.path for c in "*?["):
        return _files(spec, (suffix,))
    fs, pattern = resolve(spec.path)
    parts = pattern.split("/")
    k = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    root = "/".join(parts[:k]) or "/"
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise RecipeError(f"input.path: no files match {spec.path}")
    sel = pafs.FileSelector(root, recursive=True)
    files = sorted(i.path for i in fs.get_file_info(sel)
                   if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern))
    if not files:
        raise RecipeError(f"input.path: no files match {spec.path}")
    return fs, root, files


def _gqa_questions(data: bytes, what: str) -> list[tuple[str, Any]]:
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise RecipeError(f"input.path: {what} is not a GQA questions file (an object of questions)")
    return list(doc.items())


class GqaReader:
    """GQA-style questions: a JSON object {question_id: {"imageId", "question", "answer", "fullAnswer", ...}}
    (GQA's `*_questions.json`); input.path is one such file, a folder of them (``.json``, recursively) or a glob
    (``train_all_questions/train_all_questions_*.json``). Images `{image_dir}/{imageId}.jpg`
    (`input.options.image_dir`, default the `images/` folder beside the file, or beside the folder / the glob's
    base folder, when it exists, else that folder itself). One row per question in file order: images =
    [bytes], text = question, answer = the short answer, annotations = {"question_id", "full_answer", "types"},
    meta = {"image_id", "file_name"}; id = make_id(file path relative to the root, question id). Drop reasons:
    ``missing_field``, ``missing_file``; a file that is not a valid GQA questions JSON is one row
    ``invalid_json`` (the other files are read)."""

    options = ("image_dir",)

    def _layout(self, spec: InputSpec) -> tuple[pafs.FileSystem, str, list[str]]:
        check_options(spec, self.options)
        return _glob_files(spec, ".json")

    def plan(self, spec: InputSpec) -> list[Partition]:
        fs, root, files = self._layout(spec)
        parts = []
        for path in files:
            try:
                n = len(cached(fs, path, "gqa_questions", lambda b, p=path: _gqa_questions(b, p)))
            except RecipeError:
                n = 1  # read() turns the file into one invalid_json row
            for p in slices(n, spec.partition_rows, path, posixpath.relpath(path, root)):
                parts.append(Partition(_name(len(parts)), p.path, p.relpath, p.start, p.stop))
        return parts

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        fs, root, _ = self._layout(spec)
        try:
            items = cached(fs, part.path, "gqa_questions", lambda b: _gqa_questions(b, part.relpath))
        except RecipeError as e:
            row = new_row(make_id(part.relpath, "file"), part.relpath)
            return [drop(row, "invalid_json", str(e).removeprefix("input.path: ").removeprefix("input: "))]
        images_dir = posixpath.join(root, "images")
        default = images_dir if fs.get_file_info(images_dir).type == pafs.FileType.Directory else root
        ifs, image_dir = option_path(spec, "image_dir", default)
        memo: dict[str, tuple[bytes | None, str | None]] = {}
        rows = []
        for qid, q in items[part.start:part.stop]:
            row = new_row(make_id(part.relpath, qid), f"{part.relpath}#{qid}")
            q = q if isinstance(q, dict) else {}
            if not all(isinstance(q.get(k), str) for k in ("imageId", "question", "answer")):
                rows.append(drop(row, "missing_field", "imageId, question and answer are required"))
                continue
            file_name = f"{q['imageId']}.jpg"
            row["text"], row["answer"] = q["question"], q["answer"]
            row["annotations"] = {"question_id": qid, "full_answer": q.get("fullAnswer"), "types": q.get("types")}
            row["meta"] = {"image_id": q["imageId"], "file_name": file_name}
            if file_name not in memo:  # GQA lists many questions per image: keep the last image only
                data, _, err = load_image(ifs, image_dir, file_name, spec)
                memo = {file_name: (data, err)}
            data, err = memo[file_name]
            if err:
                rows.append(drop(row, err, f"{file_name} in {image_dir}"))
                continue
            row["images"] = [data]
            rows.append(cap_text(row, spec))
        return rows
