"""Rejection-sampling stages (filters/cot.py) without Ray: the planted backend's candidates get the expected
verdicts, and each selection policy picks the expected candidates and DPO pairs. `Planted` and `PLANTED` are
the scripted backend the job tests (tests/jobs/test_cot_job.py) use."""

from __future__ import annotations

import json
import os
from pathlib import Path

from filters.cot import CotGenerate, CotQuality, CotSelect, CotVerify, model_fingerprint, sample_seed
from model.backends import Candidate, YesNo

REPO = Path(__file__).resolve().parents[2]
HUMANEVAL = REPO / "tests" / "data" / "code" / "HumanEval_first5.jsonl"
PAD = " It stands on green grass in daylight, with its head raised."

# question -> planted candidates (text, finish_reason) and the verdict reason each must get (None: passes)
PLANTED: dict[str, list[tuple[str, str, str | None]]] = {
    "What animal is this?": [
        ("The image shows a brown animal with a mane and hooves." + PAD + " That is a horse.\nAnswer: horse", "stop",
         None),                                                                                  # 0 correct, long
        ("I see a horse on grass.\nAnswer: horse", "stop", None),                                  # 1 correct, short
        ("The animal has four legs and eats grass, so it is a cow.\nAnswer: cow", "stop", "wrong_answer"),  # 2
        ("The animal in the picture is a", "length", "truncated"),                                # 3
        ("The horse is here. " * 30 + "\nAnswer: horse", "stop", "repeated_5grams"),             # 4 repetitive
        ("图片里是一匹马，站在草地上。它有鬃毛和长尾巴。\nAnswer: horse", "stop", "code_switching"),          # 5
        ("Answer: horse\nThat is my reasoning.", "stop", "text_after_answer"),                    # 6 malformed
        ("A giraffe stands next to a horse under a red umbrella.\nAnswer: horse", "stop", "visual_inconsistent"),  # 7
    ],
    "What drink is in the cup?": [
        ("It is a cup of tea with milk.\nAnswer: tea", "stop", "wrong_answer"),
        ("The cup holds", "length", "truncated"),
    ],
    "What is two plus three?": [
        ("Two plus three makes five.\nAnswer: five", "stop", None),
        ("2 + 3 = 5.\nAnswer: 5", "stop", None),
        ("Adding them gives 5 in total.\nAnswer: 5", "stop", None),
    ],
}

# tests/data/mc/mc.jsonl: multiple-choice questions (their prompts show the options), "Answer: <letter>"
MC_PLANTED: dict[str, list[tuple[str, str, str | None]]] = {
    "What animal is shown in the image?": [  # gold B, with horse.png
        ("The silhouette has a mane, hooves and a long tail, so it is a horse.\nAnswer: B", "stop", None),
        ("It has four legs and could be a cow.\nAnswer: A", "stop", "wrong_answer"),
        ("It is a horse.\nAnswer: (B)", "stop", None),
        ("None of these fit.\nAnswer: E", "stop", "unreadable_answer"),  # E is past the four options
        ("A giraffe stands behind the horse.\nAnswer: B", "stop", "visual_inconsistent"),
    ],
    "What colour is the animal in the image?": [  # gold A, with horse.png
        ("The shape is filled in red.\nAnswer: B", "stop", "wrong_answer"),
        ("The animal looks green to me.\nAnswer: C", "stop", "wrong_answer"),
    ],
    "Which planet is closest to the Sun?": [  # gold B, text-only
        ("Venus is the hottest planet, so it must be the closest.\nAnswer: A", "stop", "wrong_answer"),
        ("Mercury orbits closest to the Sun.\nAnswer: B", "stop", None),
        ("Mercury is closest.\nAnswer: Mercury", "stop", "unreadable_answer"),  # a name, not a letter
    ],
    "What is 7 times 8?": [  # gold (b), text-only
        ("7 x 8 = 56, which is option B.\nAnswer: B", "stop", None),
        ("7 x 8 = 56, option B.\nAnswer: B\nDone.", "stop", "text_after_answer"),
    ],
}


def _code_candidates() -> dict[str, list[tuple[str, str, str | None]]]:
    """HumanEval: the canonical solution (passes) and one that returns None (fails its tests)."""
    out = {}
    for line in HUMANEVAL.read_text().splitlines():
        rec = json.loads(line)
        good = f"I follow the docstring.\n```python\n{rec['prompt']}{rec['canonical_solution']}```"
        bad = f"I return nothing.\n```python\n{rec['prompt']}    return None\n```"
        out[rec["prompt"]] = [(good, "stop", None), (bad, "stop", "tests_error")]
    return out


class Planted:
    """A backend that generates the planted candidates of the question it finds in the prompt, and says a
    response mentioning a giraffe is not what the image shows. It refuses to load when `model` (a file
    standing for the weights) is missing, and appends each question it generates for to `log`."""

    def __init__(self, model: str | None = None, min_pixels: int = 0, max_pixels: int = 0,
                 log: str | None = None) -> None:
        if model is not None and not os.path.exists(model):
            raise FileNotFoundError(f"planted model {model} is gone")
        self.log = log
        self.planted = {**PLANTED, **MC_PLANTED, **_code_candidates()}

    def generate(self, items, n=1, temperature=1.0, top_p=1.0, max_new_tokens=512, seed=None, seeds=None):
        assert seeds is not None and len(seeds) == n  # cot_generate seeds every candidate
        out = []
        for it in items:
            question = next(q for q in self.planted if q in it.prompt)
            if self.log:
                with open(self.log, "a") as f:
                    f.write(json.dumps(question) + "\n")
            out.append([Candidate(t, fr, len(t.split())) for t, fr, _ in self.planted[question]][:n])
        return out

    def score_yes_no(self, items):
        return [YesNo(0.1 if "giraffe" in it.prompt else 0.9, 0.99) for it in items]


def expected_reasons() -> dict[str, list[str | None]]:
    return {q: [why for _, _, why in cands] for q, cands in PLANTED.items()}


def candidates_of(question: str, kind: str = "vqa", prompt_id: str = "p") -> list[dict]:
    gen = CotGenerate(CotGenerate.Params(backend="tests.filters.test_cot_select:Planted", kind=kind, n=16))
    children = gen.expand({"id": prompt_id, "text": question, "answer": "unused", "images": []})
    return [{**c, "id": f"{prompt_id}{j}", "parent_id": prompt_id} for j, c in enumerate(children)]


def test_generate_fields_seed_and_fingerprint(tmp_path):
    rows = candidates_of("What animal is this?")
    assert [r["cot_sample"] for r in rows] == list(range(8))
    assert [r["cot_seed"] for r in rows] == [sample_seed(0, "p", j) for j in range(8)]  # its own seed each
    assert len({r["cot_seed"] for r in rows}) == 8 and sample_seed(0, "p", 0) != sample_seed(0, "q", 0)
    assert rows[3]["cot_finish_reason"] == "length" and rows[1]["answer"].endswith("Answer: horse")
    assert rows[0]["text"].startswith("What animal is this?") and "Answer:" in rows[0]["text"]  # the vqa template
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    first = model_fingerprint("transformers", str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text('{"x": 1}')
    assert first.startswith("m@") and model_fingerprint("transformers", str(tmp_path / "m")) != first


def test_verify_and_quality_reasons_of_the_planted_candidates():
    rows = candidates_of("What animal is this?")
    for r in rows:
        r["gold_answer"] = "horse"
    batch = {k: [r.get(k) for r in rows] for k in rows[0]}
    batch["annotations"] = [None] * len(rows)
    verify = CotVerify().score(batch)
    quality = CotQuality().score(batch)
    got = [q or v for q, v in zip(quality["cot_quality_reason"], verify["cot_verify_reason"], strict=True)]
    # the visual inconsistency is the visual stage's to see: verification and quality pass it
    assert got == [*expected_reasons()["What animal is this?"][:7], None]
    assert verify["cot_answer"][2] == "cow" and verify["cot_correct"][:3] == [True, True, False]


def table(reasons_by_prompt: dict[str, list[str | None]], tokens: dict[str, list[int]] | None = None,
          answers: dict[str, list[str]] | None = None) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in ("id", "parent_id", "cot_sample", "cot_tokens", "cot_answer",
                                             "cot_quality_reason", "cot_verify_reason", "cot_visual_reason")}
    for p, reasons in reasons_by_prompt.items():
        for j, why in enumerate(reasons):
            cols["id"].append(f"{p}{j}")
            cols["parent_id"].append(p)
            cols["cot_sample"].append(j)
            cols["cot_tokens"].append((tokens or {}).get(p, [10] * len(reasons))[j])
            cols["cot_answer"].append((answers or {}).get(p, ["x"] * len(reasons))[j])
            cols["cot_quality_reason"].append(why if why not in ("wrong_answer", "visual_inconsistent") else None)
            cols["cot_verify_reason"].append(why if why == "wrong_answer" else None)
            cols["cot_visual_reason"].append(why if why == "visual_inconsistent" else None)
    return cols


def decide(cols, **params):
    out = CotSelect(CotSelect.Params(**params)).decide_global(cols)
    return dict(zip(cols["id"], zip(out["drop_reason"], out["dpo_chosen"], strict=True), strict=True))


def test_policies_k_and_dpo_pairs():
    reasons = {"A": expected_reasons()["What animal is this?"], "B": ["wrong_answer", "truncated"],
               "C": [None, None, None]}
    tokens = {"A": [30, 8, 12, 6, 120, 3, 6, 12], "C": [5, 4, 6]}
    answers = {"C": ["five", "5", "5"]}
    cols = table(reasons, tokens, answers)
    got = decide(cols, policy="shortest")
    assert got["A1"] == (None, None) and got["A0"] == ("not_selected", None)
    assert got["A2"] == ("wrong_answer", "A1")  # the verifier failure is the rejected of the pair
    assert got["A7"] == ("visual_inconsistent", None) and got["A3"] == ("truncated", None)
    assert got["B0"] == got["B1"] == ("no_verified_candidate", None)
    assert [i for i in got if i.startswith("C") and got[i][0] is None] == ["C1"]
    got = decide(cols, policy="first", k=2, max_dpo_pairs=2)
    assert got["A0"] == (None, None) and got["A1"] == (None, None)
    assert got["A2"] == ("wrong_answer", "A0") and got["A7"] == ("visual_inconsistent", "A1")  # hallucination pair
    assert got["A6"] == ("text_after_answer", None)  # format failures only when no verifier failure is left
    got = decide(cols, policy="majority_answer", k=3)
    assert [i for i in got if i.startswith("C") and got[i][0] is None] == ["C1", "C2"]
    out = CotSelect().decide_global(cols)
    assert out["cot_verdict"][:3] == ["pass", "pass", "fail"] and out["cot_reason"][2] == "wrong_answer"
