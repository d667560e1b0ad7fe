"""Quality checks for a generated chain of thought (the Qwen2.5-VL report's rejection-sampling filters): no
repetition, no code switching, no excessive length, not truncated, well-formed output with one final answer.

Each check returns a ``Check``: the measured value and a drop reason (None = passes). ``cot_checks`` runs
them all. The repetition measures are the caption filters' (``filters.text``: Gopher's duplicated n-gram
characters) plus Gopher's duplicate lines and top n-grams (Rae et al. 2021, table A1), thresholds as
parameters.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from filters.text import caption_words, word_repetition_ratio
from filters.verifiers.answer import ANSWER_LINE, FENCE, KINDS, code_blocks
from formatters.builders import _BOX_START, _brace_group

# Gopher's limits: duplicated n-grams (share of characters in repeated n-grams) and top n-grams (share of
# characters taken by the most frequent n-gram)
GOPHER_DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
GOPHER_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
# the defaults for chains of thought: worked solutions repeat their formulas, and Gopher's web-page limits
# drop 3 of the first 10 MATH-500 gold solutions (5-grams up to 0.21, 8-grams 0.14); these keep all 20 gold
# GSM8K / MATH-500 solutions of tests/data/qa with a margin and still catch a looping generation (~1.0)
COT_DUP_NGRAMS = ((5, 0.35), (10, 0.25))
COT_TOP_NGRAMS = ((2, 0.30), (3, 0.25), (4, 0.25))
# after the final \boxed{}: closing math delimiters, punctuation and \end{...} of an environment, nothing else
_AFTER_BOX = re.compile(r"^(?:\s|\$|\\\]|\\\)|[.,;:!]|\}|\\end\{[A-Za-z*]+\})*$")
_TAGS = ("think", "answer")


@dataclass(frozen=True)
class Check:
    value: Any  # the measured value
    reason: str | None  # None: passes


def line_repetition(text: str, max_dup_line_frac: float = 0.3, max_dup_line_char_frac: float = 0.2) -> Check:
    """Gopher's duplicate lines: the share of non-empty lines that repeat an earlier line, and the share of
    characters in those lines. Value: the line share; reason ``repeated_lines``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return Check(0.0, None)
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        seen.add(line)
    frac = dup_lines / len(lines)
    char_frac = dup_chars / sum(len(line) for line in lines)
    over = frac > max_dup_line_frac or char_frac > max_dup_line_char_frac
    return Check(round(frac, 4), "repeated_lines" if over else None)


def top_ngram_ratio(words: Sequence[str], n: int) -> float:
    """Share of word characters taken by the most frequent word n-gram (when it occurs more than once)."""
    norm = [w.lower() for w in words]
    total = sum(len(w) for w in norm)
    if total == 0 or len(norm) < n:
        return 0.0
    gram, count = Counter(tuple(norm[i:i + n]) for i in range(len(norm) - n + 1)).most_common(1)[0]
    return count * sum(len(w) for w in gram) / total if count > 1 else 0.0


def ngram_repetition(text: str, dup_ngrams: Sequence[tuple[int, float]] = COT_DUP_NGRAMS,
                     top_ngrams: Sequence[tuple[int, float]] = COT_TOP_NGRAMS) -> Check:
    """Gopher's n-gram repetition: for each (n, limit) of ``dup_ngrams`` the share of characters in repeated
    word n-grams (``filters.text.word_repetition_ratio``), of ``top_ngrams`` the most frequent n-gram's share
    (``GOPHER_DUP_NGRAMS`` / ``GOPHER_TOP_NGRAMS`` are Gopher's web-page limits, stricter than the defaults).
    Value: the measure furthest past (or closest to) its limit; reason ``repeated_{n}grams`` /
    ``top_{n}gram`` for the first that is over."""
    words = caption_words(text)
    measures = [(f"repeated_{n}grams", word_repetition_ratio(words, n), limit) for n, limit in dup_ngrams]
    measures += [(f"top_{n}gram", top_ngram_ratio(words, n), limit) for n, limit in top_ngrams]
    over = [(name, value) for name, value, limit in measures if value > limit]
    if over:
        return Check(round(over[0][1], 4), over[0][0])
    worst = max(measures, key=lambda m: m[1] / m[2] if m[2] else 0.0, default=("", 0.0, 1.0))
    return Check(round(worst[1], 4), None)


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    """The first word of a letter's Unicode name (LATIN, GREEK, CJK, CYRILLIC, HIRAGANA ...)."""
    return unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]


def code_switching(text: str, scripts: Sequence[str] = ("LATIN", "GREEK"), max_share: float = 0.02) -> Check:
    """Share of letters outside the expected scripts (first word of their Unicode names; ``MATHEMATICAL``
    alphanumerics always count as expected; Greek is expected by default, it is mathematics' alphabet).
    For a Chinese chain of thought pass ``("CJK", "LATIN", "GREEK")``. Reason ``code_switching``."""
    expected = {s.upper() for s in scripts} | {"MATHEMATICAL"}
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return Check(0.0, None)
    share = sum(1 for c in letters if _script(c) not in expected) / len(letters)
    return Check(round(share, 4), "code_switching" if share > max_share else None)


def over_length(text: str, max_tokens: int, n_tokens: int | None = None,
                count_tokens: Callable[[str], int] | None = None) -> Check:
    """Length in tokens: ``n_tokens`` when the generator reported it, else ``count_tokens(text)``, else the
    Qwen2.5-VL tokenizer (``model.tokenizer``). Reason ``too_long`` over ``max_tokens``."""
    if n_tokens is None:
        if count_tokens is None:
            count_tokens = _qwen_count
        n_tokens = count_tokens(text)
    return Check(n_tokens, "too_long" if n_tokens > max_tokens else None)


@lru_cache(maxsize=1)
def _qwen() -> Any:
    from model.tokenizer import qwen_tokenizer  # loads transformers: only when no count is given

    return qwen_tokenizer()


def _qwen_count(text: str) -> int:
    return len(_qwen()(text, add_special_tokens=False)["input_ids"])


def truncation(finish_reason: str | None) -> Check:
    """The generator stopped at its token limit (``finish_reason == "length"``): reason ``truncated``."""
    return Check(finish_reason, "truncated" if finish_reason == "length" else None)


def _boxes(text: str) -> list[tuple[int, int | None]]:
    """(start, end) of each \\boxed{...}; end None when its braces do not close."""
    out = []
    for m in _BOX_START.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        out.append((m.start(), _brace_group(text, i) if i < len(text) and text[i] == "{" else None))
    return out


def answer_format(text: str, kind: str) -> Check:
    """Well-formed output with exactly one final answer at the end, by the convention of ``kind`` (see
    ``filters.verifiers.answer``). Value: the number of final answers found. Reasons, first that applies:
    ``unbalanced_fences``, ``unbalanced_tags`` (``<think>``/``<answer>``), ``unbalanced_boxed``,
    ``no_answer``, ``multiple_answers``, ``text_after_answer``.

    Math: one ``\\boxed{}``; after it only closing delimiters, punctuation or ``\\end{...}`` (so a MATH
    solution ending ``\\boxed{9}$ divisors of 196.`` or with an ``[asy]`` block after the box fails, one
    ending ``\\boxed{p-q}.\\n\\end{align*}`` passes). VQA / MC: one ``Answer:`` line, the last. Code: one
    fenced block, nothing but whitespace after it."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    fence_lines = [line for line in text.splitlines() if re.match(r"^[ \t]*(`{3,}|~{3,})", line)]
    if len(fence_lines) % 2:
        return Check(0, "unbalanced_fences")
    for tag in _TAGS:
        if len(re.findall(f"<{tag}>", text)) != len(re.findall(f"</{tag}>", text)):
            return Check(0, "unbalanced_tags")
    if kind == "math":
        boxes = _boxes(text)
        if any(end is None for _, end in boxes):
            return Check(len(boxes), "unbalanced_boxed")
        after = text[boxes[-1][1]:] if boxes else ""  # type: ignore[index]
        return _one(len(boxes), _AFTER_BOX.match(after) is not None)
    if kind == "code":
        blocks = list(FENCE.finditer(text))
        return _one(len(code_blocks(text)), bool(blocks) and not text[blocks[-1].end():].strip())
    lines = [line for line in text.splitlines() if line.strip()]
    answers = [i for i, line in enumerate(lines) if ANSWER_LINE.match(line)]
    return _one(len(answers), bool(answers) and answers[-1] == len(lines) - 1)


def _one(n: int, at_end: bool) -> Check:
    if n == 0:
        return Check(0, "no_answer")
    if n > 1:
        return Check(n, "multiple_answers")
    return Check(1, None if at_end else "text_after_answer")


def cot_checks(text: str, kind: str, *, max_tokens: int = 8192, n_tokens: int | None = None,
               finish_reason: str | None = None, scripts: Sequence[str] = ("LATIN", "GREEK"),
               count_tokens: Callable[[str], int] | None = None) -> dict[str, Check]:
    """Every check with default thresholds (cheapest first); ``first_reason`` picks the verdict."""
    return {
        "truncation": truncation(finish_reason),
        "format": answer_format(text, kind),
        "length": over_length(text, max_tokens, n_tokens, count_tokens),
        "line_repetition": line_repetition(text),
        "ngram_repetition": ngram_repetition(text),
        "code_switching": code_switching(text, scripts),
    }


def first_reason(checks: dict[str, Check]) -> str | None:
    """The first drop reason among ``checks`` (None: keep)."""
    return next((c.reason for c in checks.values() if c.reason), None)
