"""Multiple-choice questions: ``mc_jsonl`` (jsonl, ``.json`` or ``.jsonl.gz``; a file or a folder of them).

One record a line: ``question`` (string), ``options`` (a list of 2-26 option texts or numbers, or an object keyed ``A``,
``B``, ... in order), ``answer`` (the correct option's letter: ``B``, ``b``, ``(B)`` or ``B.``) and an optional
``image`` (a path relative to the file, or a list of them), as ``qa_jsonl`` reads it. ``input.image_column`` /
``text_column`` / ``answer_column`` and ``input.options.choices_column`` (default ``options``) rename the fields.

Row: text = the question, then one line per option (``A. text``), so every prompt built from it shows the
options; answer = the letter (upper case); annotations = {"options": [texts]} (the verifier's option count);
meta.answer_text = the correct option's text, plus the record's other small scalar fields.

Drop reasons (stage ``read``): those of the jsonl reader (``invalid_json``, ``invalid_utf8``, ``empty_line``),
``missing_field`` (no question), ``bad_options`` (not 2-26 non-empty strings or numbers, or keys that are not A, B, ...),
``bad_answer`` (not one letter among the options), ``missing_file`` / ``path_outside_root`` (the image).
"""

from __future__ import annotations

import re
import string
from typing import Any

from pipeline.readers.base import drop, record_to_row
from pipeline.readers.qa import QaJsonlReader, _require

LETTERS = string.ascii_uppercase
_ANSWER = re.compile(r"\s*\(?([A-Za-z])[).]?\s*")


def parse_options(value: Any) -> list[str] | None:
    """The option texts in letter order, or None when ``value`` is not 2-26 non-empty strings or numbers (a list,
    or an object whose keys are exactly A, B, ... in any case)."""
    if isinstance(value, dict):
        keys = [str(k).strip().upper() for k in value]
        if sorted(keys) != list(LETTERS[:len(keys)]):
            return None
        value = [v for _, v in sorted(zip(keys, value.values(), strict=True))]
    if not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS):
        return None
    texts = [str(v).strip() if isinstance(v, str | int | float) and not isinstance(v, bool) else "" for v in value]
    return texts if all(texts) else None


def render(question: str, options: list[str]) -> str:
    """The question followed by its lettered options, one a line."""
    return "\n".join([question.rstrip(), *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))])


class McJsonlReader(QaJsonlReader):
    options = ("choices_column",)

    def convert(self, rec, row, spec, fs, base):
        spec = self._spec(spec)
        if (bad := _require(rec, row, spec.text_column)) is not None:
            return bad
        column = spec.options.get("choices_column", "options")
        options = parse_options(rec.get(column))
        if options is None:
            return drop(row, "bad_options", f"{column}: 2-26 non-empty strings or numbers, a list or keyed A, B, ...")
        m = _ANSWER.fullmatch(str(rec.get(spec.answer_column, "")))
        letter = m.group(1).upper() if m else None
        if letter is None or LETTERS.index(letter) >= len(options):
            return drop(row, "bad_answer", f"{spec.answer_column}: {str(rec.get(spec.answer_column))[:50]!r} is "
                                           f"not one of the letters A-{LETTERS[len(options) - 1]}")
        row = record_to_row(rec, row, spec, fs, base)
        if row["drop_reason"]:
            return row
        row["text"] = render(rec[spec.text_column], options)
        row["answer"] = letter
        row["annotations"] = {"options": options}
        row["meta"]["answer_text"] = options[LETTERS.index(letter)]
        return row
