"""The final-answer convention shared with the QA builders, read in one place: ``extract_answer(kind, text)``.

- ``math``: the last ``\\boxed{...}`` (``formatters.builders.last_boxed``, as the ``solution`` targets end),
  else an ``Answer: ...`` last line;
- ``vqa`` / ``mc``: ``Answer: ...`` on the last non-empty line;
- ``code``: the content of the fenced block (the last one when there are several; the format check in
  ``filters.cot_quality`` rejects more than one).
None when the text does not follow the convention.
"""

from __future__ import annotations

import re

from formatters.builders import last_boxed

KINDS = ("math", "vqa", "mc", "code")
ANSWER_LINE = re.compile(r"^\s*(?:\*\*)?(?:final answer|answer)(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*?)\s*(?:\*\*)?\s*$",
                         re.IGNORECASE)
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[ \t]*\n(.*?)^[ \t]*\1[ \t]*$", re.DOTALL | re.MULTILINE)


def answer_line(text: str) -> str | None:
    """The text after ``Answer:`` on the last non-empty line (None if that line is not an answer line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    m = ANSWER_LINE.match(lines[-1])
    return m.group(1) if m and m.group(1) else None


def code_blocks(text: str) -> list[str]:
    """The contents of the complete fenced blocks, in order."""
    return [m.group(3) for m in FENCE.finditer(text)]


def extract_answer(kind: str, text: str | None) -> str | None:
    """The final answer of ``text`` by the convention of ``kind`` (one of ``KINDS``), or None."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not text:
        return None
    if kind == "math":
        boxed = last_boxed(text)
        return boxed.strip() if boxed is not None and boxed.strip() else answer_line(text)
    if kind == "code":
        blocks = code_blocks(text)
        return blocks[-1] if blocks else None
    return answer_line(text)
