"""Labelled cases for the verifiers: math answers, the final-answer convention, VQA accuracy, ANLS, MC."""

import json
import threading
import time
from pathlib import Path

import pytest

from filters.verifiers.answer import extract_answer
from filters.verifiers.math import clean_answer, gold_answer, math_equal, prediction_answer
from filters.verifiers.vqa import anls, mc_letter, normalize_vqa_answer, vqa_accuracy

QA = Path(__file__).resolve().parents[1] / "data" / "qa"

EQUAL = [
    ("1/2", "0.5"), ("\\frac{1}{2}", "\\boxed{\\frac12}"), ("0.25", "\\dfrac{1}{4}"),  # fractions vs decimals
    ("1000", "1,000"), ("#### 1,234,567", "\\boxed{1234567}"), ("12,000", "12000.0"),  # thousands separators
    ("18", "\\boxed{\\$18}"), ("18", "Answer: 18 dollars"), ("5", "\\boxed{5\\text{ cm}}"),  # units, currency
    ("90^\\circ", "\\boxed{90}"), ("10\\%", "\\boxed{10}"),
    ("(1,2]", "\\boxed{(1, 2]}"), ("[-3, \\infty)", "\\boxed{[-3,\\infty)}"),  # intervals
    ("\\{1,2,3\\}", "\\boxed{\\{3,2,1\\}}"), ("1, 2", "\\boxed{2, 1}"),  # sets
    ("x^2+2x+1", "\\boxed{(x+1)^2}"), ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),  # expressions
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}"),
    ("3", "First \\boxed{2}, corrected: \\boxed{3}"),  # the last box counts
    ("\\frac{1}{2}", "so \\boxed{} and then \\boxed{0.5}"),
    ("7", "7"), ("-3", "$-3$."),  # a bare one-line answer
]
DIFFERENT = [
    ("1/2", "0.51"), ("1000", "100"), ("1,000", "1"), ("18", "\\boxed{\\$19}"),
    ("(1,2]", "\\boxed{[1,2]}"), ("\\{1,2\\}", "\\boxed{\\{1,3\\}}"), ("x^2+1", "\\boxed{(x+1)^2}"),
    ("3", "\\boxed{3} and later \\boxed{4}"),  # the last box counts
    ("3", "\\boxed{}"), ("3", ""),  # empty box, nothing
    ("3", "We get 3.\nSo the answer is clear."),  # no box, no Answer line, several lines
    ("3", "\\boxed{3"),  # unbalanced box
    ("2 \\pi", "Answer: 2"),  # pi is not a unit
]


@pytest.mark.parametrize(("gold", "pred"), EQUAL)
def test_math_equal(gold, pred):
    assert math_equal(gold, pred)


@pytest.mark.parametrize(("gold", "pred"), DIFFERENT)
def test_math_different(gold, pred):
    assert not math_equal(gold, pred)


def test_gold_answers_of_the_datasets():
    gsm = [json.loads(line) for line in (QA / "gsm8k_test_first10.jsonl").open()]
    assert gold_answer(gsm[0]["answer"]) == "18"
    math500 = [json.loads(line) for line in (QA / "math500_first10.jsonl").open()]
    for row in math500:  # a MATH solution's last box is its answer field
        assert math_equal(row["solution"], row["answer"] if "\n" not in row["answer"] else row["solution"])
        assert math_equal(row["answer"], row["solution"])
    assert not math_equal(math500[0]["answer"], math500[1]["solution"])


def test_clean_answer_and_prediction_answer():
    assert clean_answer("$1,000$.") == "1000"
    assert clean_answer("[1,000, 2]") == "[1,000, 2]"  # commas inside brackets are not thousands
    assert clean_answer("2 pi") == "2 pi"
    assert prediction_answer("reasoning\nAnswer: 42") == "42"
    assert prediction_answer("line one\nline two") is None


def test_pathological_expression_costs_at_most_the_limit_on_a_thread():
    out = {}

    def run():
        start = time.monotonic()
        out["verdict"] = math_equal("2", "\\boxed{9^{9^{9^{9}}}}", timeout_s=2.0)
        out["seconds"] = time.monotonic() - start

    math_equal("1", "1")  # a warm worker: the limit is the verification's, not the worker's start
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert out["verdict"] is False
    assert out["seconds"] < 2.0 + 1.5
    assert math_equal("4", "\\boxed{2+2}")  # the replaced worker still verifies


def test_extract_answer_convention():
    assert extract_answer("math", "so $x=2$.\n\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("math", "no box here\nAnswer: 7") == "7"
    assert extract_answer("math", "nothing") is None
    assert extract_answer("vqa", "It is red.\nAnswer: red") == "red"
    assert extract_answer("vqa", "Answer: red\nor maybe blue") is None  # the answer line must be last
    assert extract_answer("mc", "**Answer:** (B)") == "(B)"
    assert extract_answer("code", "Here:\n```python\ndef f():\n    return 1\n```\n") == "def f():\n    return 1\n"
    assert extract_answer("code", "```python\nunclosed\n") is None
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract_answer("poem", "x")


@pytest.mark.parametrize(("raw", "norm"), [
    ("Two", "2"), ("none", "0"), ("The dog.", "dog"), ("a red car", "red car"),  # number words, articles
    ("dont", "don't"), ("isnt it", "isn't it"), ("couldntve", "couldn't've"),  # contractions
    ("yes!", "yes"), ("3.5", "3.5"), ("1,000", "1000"), ("t-shirt", "t shirt"),  # punctuation
    ("hot - dog", "hot dog"), ("  Tennis\tracket\n", "tennis racket"),
])
def test_vqa_normalisation(raw, norm):
    assert normalize_vqa_answer(raw) == norm


def test_vqa_accuracy_formula():
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    # 3 of 10 said dog: the 3 leave-one-out subsets that drop a "dog" have 2 matches (2/3), the other 7 have 3
    assert vqa_accuracy("Dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("yes", ["yes"] + ["no"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("bird", ["dog"] * 10) == 0.0
    assert vqa_accuracy("x", []) == 0.0


def test_vqa_accuracy_on_the_real_annotations():
    ann = json.loads((QA / "vqav2" / "annotations.json").read_text())["annotations"][0]
    answers = [a["answer"] for a in ann["answers"]]  # 6 x net, netting, mesh, pitcher, orange
    assert vqa_accuracy("The net.", answers) == 1.0
    assert vqa_accuracy("mesh", answers) == pytest.approx(0.3)  # 9 subsets with it: 1/3; without: 0
    assert vqa_accuracy("fence", answers) == 0.0


def test_anls():
    assert anls("Hello World", ["hello world"]) == 1.0  # case and spaces
    assert anls("Hello Wrld", ["hello world"]) == pytest.approx(1 - 1 / 11)
    assert anls("abc", ["xyz", "abd"]) == pytest.approx(1 - 1 / 3)  # the best answer counts
    assert anls("abcdef", ["abcxyz"]) == 0.0  # normalised distance 0.5: at the threshold -> 0
    assert anls("abcdefg", ["abcdxyz"]) == pytest.approx(4 / 7)  # 3/7 < 0.5
    assert anls("", [""]) == 1.0
    assert anls("x" * 3000, ["x" * 3000]) == 0.0  # over max_chars: not compared


@pytest.mark.parametrize(("text", "n", "letter"), [
    ("B", 4, "B"), ("(C)", 4, "C"), ("Answer: B. The dog", 4, "B"), ("**D**", 4, "D"),
    ("Let me think.\nAnswer: (A)", 4, "A"), ("Answer: option c", 4, "C"), ("B) red", 4, "B"),
    ("E", 4, None),  # past the options
    ("A cat", 4, None), ("I think A or B", 4, None), ("Answer: the dog", 4, None),  # not a letter
    ("Maybe B.\nMaybe C.", 4, None), ("", 4, None), ("A", 0, None),  # never a guess
])
def test_mc_letter(text, n, letter):
    assert mc_letter(text, n) == letter
