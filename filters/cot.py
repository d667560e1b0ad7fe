"""Chain of thought by rejection sampling (the Qwen2.5-VL report): N candidates per prompt, verified, filtered,
one decision per prompt.

Stages, in recipe order (each row after ``cot_generate`` is one candidate; ``parent_id`` is its prompt):

- ``cot_generate`` (expand, model): a prompt row -> ``n`` candidates from the backend (``generate``), asked
  ``template`` (``{question}`` = the row's text). A child's ``text`` is that prompt, ``answer`` the generated
  text, ``gold_answer`` / ``question`` the row's own; ``cot_kind``, ``cot_sample`` (0..n-1), ``cot_seed`` (the
  candidate's own seed, from ``seed``, the prompt id and the sample index: the backend draws each candidate
  from its seed alone), ``cot_model`` (a fingerprint of the model),
  ``cot_finish_reason``, ``cot_tokens``. The backend is chosen as the relevance stage's is.
- ``cot_verify`` (map, on an actor pool): the final answer (``extract_answer``) checked against the gold one:
  math-verify, VQA accuracy / exact match, the multiple-choice letter, or the HumanEval tests in the sandbox.
  ``cot_answer``, ``cot_correct``, ``cot_verify_reason`` (``wrong_answer``, ``unreadable_answer``,
  ``tests_<status>``). Marks only: it drops nothing.
- ``cot_quality`` (map): ``filters.cot_quality``'s measures with thresholds as parameters; the first failing
  check is ``cot_quality_reason`` (``truncated``, format reasons, ``too_long``, repetition, ``code_switching``).
- ``cot_visual`` (global, model; image prompts only): the relevance backend asks whether the reasoning is
  consistent with the image; P(yes) below ``min_visual_consistency`` -> ``cot_visual_reason`` =
  ``visual_inconsistent``. Scores are reused by ``regen-sft``.
- ``cot_select`` (global): a candidate's verdict is its first failure (quality, then verification, then visual
  consistency); per prompt the ``k`` best passing candidates by ``policy`` are kept, the other passing ones
  dropped ``not_selected``, the failing ones with their reason, and every candidate of a prompt with no passing
  one ``no_verified_candidate``. DPO pairs: each chosen candidate with a failed one of its prompt, verifier
  and visual failures before format ones (``dpo_chosen`` on the rejected row).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from filters.base import Batch, Params, Stage
from filters.cot_quality import (
    answer_format,
    code_switching,
    first_reason,
    line_repetition,
    ngram_repetition,
    over_length,
    truncation,
)
from filters.relevance import Relevance
from filters.verifiers.answer import extract_answer
from filters.verifiers.code import verify_code
from filters.verifiers.math import math_equal
from filters.verifiers.vqa import mc_letter, normalize_vqa_answer, vqa_accuracy
from model.backends import Item

AnswerKind = Literal["math", "vqa", "mc", "code"]
TEMPLATES: dict[str, str] = {
    "math": "{question}\n\nThink step by step, then put the final answer in \\boxed{{}} at the very end.",
    "vqa": "{question}\n\nLook at the image and reason step by step about what it shows, then give the final "
           "answer as the last line in the form \"Answer: <a word or short phrase>\".",
    "mc": "{question}\n\nReason step by step, then give the letter of the correct option as the last line in "
          "the form \"Answer: <letter>\".",
    "code": "{question}\n\nExplain your approach step by step, then give the complete function in one ```python "
            "code block at the very end.",
}
VISUAL_PROMPT = ('Question: "{question}"\nResponse: "{answer}"\n'
                 "Does the response describe only what is actually in the image? Answer yes or no.")
VERIFIER_FAILURES = ("wrong_answer", "visual_inconsistent")  # the DPO rejections preferred (with tests_*)


def sample_seed(seed: int, prompt_id: str, sample: int) -> int:
    """The seed of one candidate: distinct per prompt and sample index, the same on every run and actor."""
    return int(hashlib.sha1(f"{seed}:{prompt_id}:{sample}".encode()).hexdigest()[:8], 16)


def model_fingerprint(backend: str, model: str | None, served_model: str | None = None) -> str:
    """Which model made a candidate: a local directory's name + a hash of its JSON files and of its other
    files' names and sizes; a server's model name and address; a factory's name."""
    if model and os.path.isdir(model):
        h = hashlib.sha1()
        for name in sorted(os.listdir(model)):
            path = os.path.join(model, name)
            if not os.path.isfile(path):
                continue
            h.update(name.encode())
            if name.endswith(".json"):
                h.update(open(path, "rb").read())
            else:
                h.update(str(os.path.getsize(path)).encode())
        return f"{os.path.basename(os.path.normpath(model))}@{h.hexdigest()[:12]}"
    return f"{backend}:{served_model or model or ''}"


class CotGenerate(Relevance):
    """Expand: one prompt -> ``n`` sampled candidates (see the module docstring). Backend parameters are the
    relevance stage's (``backend``, ``model``, ``options``, ``device``, ``min_pixels`` / ``max_pixels`` ...;
    its scoring and cut parameters do not apply here)."""

    class Params(Relevance.Params):
        kind: AnswerKind = "math"
        template: str | None = None  # default: TEMPLATES[kind]
        n: int = Field(default=8, ge=1)
        temperature: float = Field(default=1.0, ge=0.0)
        top_p: float = Field(default=1.0, gt=0.0, le=1.0)
        max_new_tokens: int = Field(default=2048, ge=1)
        seed: int = 0

    kind = "expand"
    # what changes how candidates are made, not which: a regen-sft with only these changed reuses candidates
    runtime_params = ("actors", "device", "num_gpus", "batch_size", "prefetch", "prompt", "qa_prompt", "min_mass",
                      "min_p_yes", "keep_top_fraction")

    def setup(self) -> None:
        super().setup()
        p = self.params
        self.fingerprint = model_fingerprint(p.backend, p.model, p.served_model)

    def prompt(self, question: str) -> str:
        return (self.params.template or TEMPLATES[self.params.kind]).format(question=question)

    def expand(self, row: dict[str, Any]) -> list[dict[str, Any]] | str:
        if self.backend is None:
            self.setup()
        p = self.params
        question = row.get("text") or ""
        if not question.strip():
            return "no_question"
        if row.get("answer") in (None, ""):
            return "no_answer"
        images = [Image.open(io.BytesIO(bytes(b))) for b in row.get("images") or []]
        prompt = self.prompt(question)
        seeds = [sample_seed(p.seed, row["id"], j) for j in range(p.n)]
        [candidates] = self.backend.generate([Item(images=images, prompt=prompt)], n=p.n, temperature=p.temperature,
                                             top_p=p.top_p, max_new_tokens=p.max_new_tokens, seeds=seeds)
        return [candidate_row(row, prompt, p.kind, j, s, self.fingerprint, c.text, c.finish_reason, c.n_tokens)
                for j, (s, c) in enumerate(zip(seeds, candidates, strict=False))]


def candidate_row(row: dict[str, Any], prompt: str, kind: str, sample: int, seed: int, model: str, text: str,
                  finish_reason: str, n_tokens: int) -> dict[str, Any]:
    """The fields a candidate sets on its copy of the prompt row."""
    return {"text": prompt, "answer": text, "question": row.get("text"), "gold_answer": row.get("answer"),
            "cot_kind": kind, "cot_sample": sample, "cot_seed": seed, "cot_model": model,
            "cot_finish_reason": finish_reason, "cot_tokens": n_tokens}


GENERATED = ("text", "answer", "question", "gold_answer", "cot_kind", "cot_sample", "cot_seed", "cot_model",
             "cot_finish_reason", "cot_tokens")


class CotVerify(Stage):
    """Map (actor pool: verifiers warm up once per actor): the candidate's final answer against the gold one.

    - math: ``math_equal(gold, text)`` (math-verify, ``math_timeout_s``);
    - vqa: with 3+ human answers (``annotations.answers``, VQA v2) VQA accuracy >= ``min_vqa_accuracy``, else
      the normalised answer equals the gold one (GQA, QA jsonl);
    - mc: the option letter (``mc_letter``) equals the gold letter;
    - code: the fenced block after the prompt, with the row's tests (``annotations.test`` /
      ``entry_point``), in the sandbox (``code_timeout_s``, ``code_memory_mb``).
    """

    class Params(Params):
        min_vqa_accuracy: float = Field(default=0.6, ge=0.0, le=1.0)
        math_timeout_s: float = Field(default=5.0, gt=0)
        code_timeout_s: float = Field(default=10.0, gt=0)
        code_memory_mb: int = Field(default=512, ge=64)

    holds_model = True  # no model: an actor pool so the math workers and sandbox runs stay warm per actor
    batch_size = 16

    def setup(self) -> None:
        math_equal("1", "\\boxed{1}")  # starts this process's math-verify worker before the first deadline

    def score(self, batch: Batch) -> Batch:
        out: Batch = {"cot_answer": [], "cot_correct": [], "cot_verify_reason": []}
        annotations = batch.get("annotations") or [None] * len(batch["id"])
        for text, gold, kind, question, ann in zip(batch["answer"], batch["gold_answer"], batch["cot_kind"],
                                                   batch["question"], annotations, strict=True):
            answer, correct, reason = self.verify(kind, text or "", gold or "", question or "", ann or {})
            out["cot_answer"].append(answer)
            out["cot_correct"].append(correct)
            out["cot_verify_reason"].append(None if correct else reason)
        return out

    def verify(self, kind: str, text: str, gold: str, question: str, ann: dict[str, Any]) -> tuple[Any, bool, str]:
        p = self.params
        answer = extract_answer(kind, text)
        if kind == "code":
            tests = ann.get("test")
            if not tests:
                return answer, False, "no_tests"
            run = verify_code(text, tests, ann.get("entry_point"), prompt=question, timeout_s=p.code_timeout_s,
                              memory_mb=p.code_memory_mb)
            return answer, run.passed, f"tests_{run.status}"
        if answer is None:
            return None, False, "unreadable_answer"
        if kind == "math":
            return answer, math_equal(gold, text, timeout_s=p.math_timeout_s), "wrong_answer"
        if kind == "mc":
            letter = mc_letter(text, len(ann.get("options") or []) or 26)
            if letter is None:
                return answer, False, "unreadable_answer"
            return letter, letter == gold.strip().upper(), "wrong_answer"
        answers = [a for a in ann.get("answers") or [] if isinstance(a, str)]
        if len(answers) >= 3:
            return answer, vqa_accuracy(answer, answers) >= p.min_vqa_accuracy, "wrong_answer"
        return answer, normalize_vqa_answer(answer) == normalize_vqa_answer(gold), "wrong_answer"

    def score_columns(self) -> list[str]:
        return ["cot_answer", "cot_correct", "cot_verify_reason"]


class CotQuality(Stage):
    """Map: the quality measures of ``filters.cot_quality``, thresholds as parameters (see there)."""

    class Params(Params):
        max_tokens: int = Field(default=4096, ge=1)
        scripts: list[str] = Field(default_factory=lambda: ["LATIN", "GREEK"])
        max_code_switching: float = Field(default=0.02, ge=0.0, le=1.0)
        max_dup_line_frac: float = Field(default=0.3, ge=0.0, le=1.0)
        max_dup_line_char_frac: float = Field(default=0.2, ge=0.0, le=1.0)

    COLUMNS = ("cot_answers_found", "cot_line_repetition", "cot_ngram_repetition", "cot_code_switching",
               "cot_quality_reason")

    def score(self, batch: Batch) -> Batch:
        p = self.params
        out: Batch = {c: [] for c in self.COLUMNS}
        for text, kind, finish, n_tokens in zip(batch["answer"], batch["cot_kind"], batch["cot_finish_reason"],
                                                batch["cot_tokens"], strict=True):
            text = text or ""
            checks = {
                "truncation": truncation(finish),
                "format": answer_format(text, kind),
                "length": over_length(text, p.max_tokens, n_tokens),
                "line_repetition": line_repetition(text, p.max_dup_line_frac, p.max_dup_line_char_frac),
                "ngram_repetition": ngram_repetition(text),
                "code_switching": code_switching(text, p.scripts, p.max_code_switching),
            }
            for col, name in zip(self.COLUMNS, ("format", "line_repetition", "ngram_repetition", "code_switching"),
                                 strict=False):
                out[col].append(checks[name].value)
            out["cot_quality_reason"].append(first_reason(checks))
        return out

    def score_columns(self) -> list[str]:
        return list(self.COLUMNS)


class CotVisual(Relevance):
    """Global, model: P(yes) that the response fits the image (``qa_prompt``, ``{question}`` / ``{answer}``), by
    the relevance stage's backend and scoring (``relevance_p_yes``, ``relevance_mass``). Drops nothing: below
    ``min_visual_consistency`` the candidate's ``cot_visual_reason`` is ``visual_inconsistent``, which
    ``cot_select`` reads. Text-only candidates are not asked (``cot_visual_asked`` false; the image ones true),
and need no model. Its cut parameters do not apply here."""

    class Params(Relevance.Params):
        qa_prompt: str = VISUAL_PROMPT
        min_visual_consistency: float = Field(default=0.5, ge=0.0, le=1.0)

    decision_params = (*Relevance.decision_params, "min_visual_consistency")

    def setup(self) -> None:
        """Nothing: the backend loads on the first batch with an image (a regen-sft whose only unscored rows
        are text-only candidates needs no model)."""

    def score(self, batch: Batch) -> Batch:
        asked = [bool(images) for images in batch["images"]]
        if any(asked):
            if self.backend is None:
                super().setup()
            out = super().score(batch)
        else:
            out = {"relevance_p_yes": [None] * len(asked), "relevance_mass": [None] * len(asked)}
        # a text-only candidate has a score too (not asked): regen-sft then reuses it instead of loading the model
        return {**out, "cot_visual_asked": asked}

    def score_columns(self) -> list[str]:
        return [*super().score_columns(), "cot_visual_asked"]

    def _questions(self, batch: Batch) -> list[tuple[int, list[str], bool]]:
        p = self.params
        return [(i, [p.qa_prompt.format(question=q or "", answer=a or "")], False)
                for i, (imgs, q, a) in enumerate(zip(batch["images"], batch["question"], batch["answer"],
                                                     strict=True)) if imgs]

    def decide_global(self, table: Batch) -> Batch:
        low = self.params.min_visual_consistency
        return {"drop_reason": [None] * len(table["id"]),
                "cot_visual_reason": ["visual_inconsistent" if s is not None and s < low else None
                                      for s in table.get("relevance_p_yes") or [None] * len(table["id"])]}


class CotSelect(Stage):
    """Global: the verdict of every candidate and the choice per prompt (see the module docstring).

    ``policy``: ``first`` (smallest sample index), ``shortest`` (fewest tokens, then sample index),
    ``majority_answer`` (the passing candidates whose final answer is the most common among them, ties to the
    answer of the earliest sample; then by sample index); ``k`` candidates per prompt at most.
    ``max_dpo_pairs`` per prompt: chosen candidates in order, each with the next failed candidate of its
    prompt, failures ranked verifier / visual (``wrong_answer``, ``tests_*``, ``visual_inconsistent``) first,
    then the rest, each by sample index."""

    class Params(Params):
        policy: Literal["shortest", "first", "majority_answer"] = "shortest"
        k: int = Field(default=1, ge=1)
        max_dpo_pairs: int = Field(default=1, ge=0)

    kind = "global"

    def decide_global(self, table: Batch) -> Batch:
        n = len(table["id"])
        col = {c: table.get(c) or [None] * n for c in
               ("cot_quality_reason", "cot_verify_reason", "cot_visual_reason", "cot_answer", "cot_tokens")}
        reasons = [col["cot_quality_reason"][i] or col["cot_verify_reason"][i] or col["cot_visual_reason"][i]
                   for i in range(n)]
        by_prompt: dict[str, list[int]] = defaultdict(list)
        for i in range(n):
            by_prompt[table["parent_id"][i]].append(i)
        drop: list[str | None] = list(reasons)
        selected = [False] * n
        pair: list[str | None] = [None] * n
        p = self.params
        for members in by_prompt.values():
            members.sort(key=lambda i: (table["cot_sample"][i], table["id"][i]))
            passing = [i for i in members if reasons[i] is None]
            if not passing:
                for i in members:
                    drop[i] = "no_verified_candidate"
                continue
            chosen = self.order(passing, col)[:p.k]
            for i in passing:
                selected[i] = i in chosen
                drop[i] = None if selected[i] else "not_selected"
            failed = sorted((i for i in members if reasons[i] is not None),
                            key=lambda i: (not is_verifier_failure(reasons[i]), table["cot_sample"][i]))
            for c, r in list(zip(chosen, failed, strict=False))[:p.max_dpo_pairs]:
                pair[r] = table["id"][c]
        return {"drop_reason": drop, "cot_verdict": ["fail" if r else "pass" for r in reasons], "cot_reason": reasons,
                "cot_selected": selected, "dpo_chosen": pair}

    def order(self, passing: list[int], col: dict[str, list[Any]]) -> list[int]:
        """The passing candidates of one prompt (in sample order), best first by the policy."""
        policy = self.params.policy
        if policy == "first":
            return passing
        if policy == "shortest":
            return sorted(passing, key=lambda i: col["cot_tokens"][i] or 0)  # stable: ties keep sample order
        key = [json.dumps(col["cot_answer"][i]) for i in passing]
        counts = Counter(key)
        best = max(counts.values())
        winner = next(k for k in key if counts[k] == best)
        return [i for i, k in zip(passing, key, strict=True) if k == winner]

    def score_columns(self) -> list[str]:
        return []


def is_verifier_failure(reason: str | None) -> bool:
    return reason in VERIFIER_FAILURES or (reason or "").startswith("tests_")


__all__ = ["CotGenerate", "CotQuality", "CotSelect", "CotVerify", "CotVisual"]
