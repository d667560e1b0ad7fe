"""Chain-of-thought quality checks: each measured value and reason, on made-up and real solutions."""

import json
from pathlib import Path

import pytest

from filters import cot_quality as cq
from filters.cot_quality import (
    GOPHER_DUP_NGRAMS,
    answer_format,
    code_switching,
    cot_checks,
    first_reason,
    line_repetition,
    ngram_repetition,
    over_length,
    truncation,
)

QA = Path(__file__).resolve().parents[1] / "data" / "qa"
GOOD = ("We need the number of eggs sold: 16 - 3 - 4 = 9.\nEach sells for $2, so she makes 9 * 2 = 18 dollars."
        "\n\\boxed{18}")


def test_uses_the_caption_filters_repetition_code():
    import filters.text

    assert cq.word_repetition_ratio is filters.text.word_repetition_ratio  # imported, not copied


def test_a_good_solution_passes_every_check():
    checks = cot_checks(GOOD, "math", n_tokens=40, finish_reason="stop")
    assert first_reason(checks) is None
    assert checks["format"].value == 1 and checks["length"].value == 40


def test_repeated_lines():
    looping = "Let me check again.\n" * 8 + "\\boxed{3}"
    check = line_repetition(looping)
    assert check.reason == "repeated_lines" and check.value == pytest.approx(7 / 9, abs=1e-4)
    assert line_repetition(GOOD).value == 0.0 and line_repetition(GOOD).reason is None


def test_ngram_repetition():
    loop = "so the value of x is two and " * 20
    check = ngram_repetition(loop)
    assert check.reason == "repeated_5grams" and check.value > 0.9
    assert ngram_repetition(GOOD).reason is None
    # thresholds are parameters: Gopher's web limits drop this worked solution, the CoT defaults keep it
    math500 = [json.loads(line)["solution"] for line in (QA / "math500_first10.jsonl").open()]
    assert ngram_repetition(math500[6]).reason is None
    assert ngram_repetition(math500[6], dup_ngrams=GOPHER_DUP_NGRAMS).reason == "repeated_5grams"


def test_every_gold_solution_passes_the_repetition_and_script_checks():
    texts = [json.loads(line)["solution"] for line in (QA / "math500_first10.jsonl").open()]
    texts += [json.loads(line)["answer"] for line in (QA / "gsm8k_test_first10.jsonl").open()]
    for text in texts:
        for check in (line_repetition(text), ngram_repetition(text), code_switching(text)):
            assert check.reason is None, (check, text[:80])


def test_code_switching():
    assert code_switching("The angle α is π/2, so sin α = 1.").value == 0.0  # Greek is maths
    mixed = "First we compute the sum 所以答案是十八 which gives eighteen"
    check = code_switching(mixed)
    assert check.reason == "code_switching" and check.value == pytest.approx(7 / 45, abs=1e-4)  # 7 Han of 45 letters
    assert code_switching(mixed, scripts=("LATIN", "CJK")).reason is None
    assert code_switching("Ответ: сорок два").value == 1.0
    assert code_switching("12 + 30 = 42").value == 0.0  # no letters


def test_over_length_and_truncation():
    assert over_length("a b c", max_tokens=2, count_tokens=lambda t: len(t.split())) == cq.Check(3, "too_long")
    assert over_length("ignored", max_tokens=10, n_tokens=10).reason is None
    assert truncation("length") == cq.Check("length", "truncated")
    assert truncation("stop").reason is None and truncation(None).reason is None


@pytest.mark.parametrize(("text", "kind", "value", "reason"), [
    (GOOD, "math", 1, None),
    ("x = 3, so $\\boxed{3}$.", "math", 1, None),
    ("\\begin{align*}\ny &= \\boxed{p - q}.\n\\end{align*}", "math", 1, None),
    ("so 3", "math", 0, "no_answer"),
    ("\\boxed{2} hmm \\boxed{3}", "math", 2, "multiple_answers"),
    ("\\boxed{3} and that is why.", "math", 1, "text_after_answer"),
    ("\\boxed{3}\n[asy]\ndraw((0,0)--(1,1));\n[/asy]", "math", 1, "text_after_answer"),
    ("\\boxed{\\frac{1}{2}", "math", 1, "unbalanced_boxed"),
    ("<think>so 3\n\\boxed{3}", "math", 0, "unbalanced_tags"),
    ("<think>so 3</think>\n\\boxed{3}", "math", 1, None),
    ("It is red.\nAnswer: red", "vqa", 1, None),
    ("Answer: red\nI think.", "vqa", 1, "text_after_answer"),
    ("Answer: red\nAnswer: blue", "vqa", 2, "multiple_answers"),
    ("It is red.", "mc", 0, "no_answer"),
    ("Code:\n```python\nprint(1)\n```\n", "code", 1, None),
    ("```python\nprint(1)\n```\n```python\nprint(2)\n```", "code", 2, "multiple_answers"),
    ("```python\nprint(1)\n```\nThis prints 1.", "code", 1, "text_after_answer"),
    ("```python\nprint(1)\n", "code", 0, "unbalanced_fences"),
])
def test_answer_format(text, kind, value, reason):
    assert answer_format(text, kind) == cq.Check(value, reason)


def test_math500_gold_solutions_against_the_format_check():
    """The strict rule for generated chains of thought: after the final box only closing delimiters,
    punctuation and \\end{...}. Of the first 10 MATH-500 solutions, 4 end otherwise (3 with prose after the
    box, 1 with an [asy] block); the 2 ending in \\end{align*} pass."""
    rows = [json.loads(line) for line in (QA / "math500_first10.jsonl").open()]
    reasons = [answer_format(r["solution"], "math").reason for r in rows]
    assert [i for i, why in enumerate(reasons) if why] == [3, 4, 5, 9]
    assert set(reasons) == {None, "text_after_answer"}
    assert rows[1]["solution"].rstrip().endswith("\\end{align*}") and reasons[1] is None


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown answer kind"):
        answer_format("x", "essay")
