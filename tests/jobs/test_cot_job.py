"""Chain-of-thought jobs (jobs/recipes/cot_*.yaml) on local Ray: planted candidates give exactly the expected
SFT and DPO sets with every verdict in candidates.parquet; regen-sft re-selects with no model; a resumed job
keeps its frozen candidates; the tiny model runs end to end; HumanEval tests run in the sandbox on actors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from filters.verifiers.code import verify_code
from jobs.cli import main
from model.tiny import build_tiny_qwen25vl
from pipeline.recipe import parse_recipe
from pipeline.runner import plan_steps, run_job
from pipeline.schema import make_id
from tests.filters.test_cot_select import MC_PLANTED, PLANTED, expected_reasons

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO / "jobs" / "demo_data" / "images"
PLANTED_BACKEND = "tests.filters.test_cot_select:Planted"
QUESTIONS = {"What animal is this?": ("horse.png", "horse"), "What drink is in the cup?": ("camera.png", "coffee"),
             "What is two plus three?": (None, "5")}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "jobs" / "recipes" / name).read_text())


def rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def vqa_job(tmp_path: Path) -> tuple[dict, dict[str, str]]:
    """cot_vqa.yaml on three planted prompts (two with an image, one text-only) and a line whose image is
    missing; the backend is the planted one, its 'weights' a file in tmp_path."""
    (tmp_path / "data").mkdir()
    lines, ids = [], {}
    for k, (question, (image, answer)) in enumerate(QUESTIONS.items()):
        line = {"question": question, "answer": answer}
        if image:
            shutil.copy(PAIRS / image, tmp_path / "data" / image)
            line["image"] = image
        lines.append(line)
        ids[question] = make_id("qa.jsonl", k + 1)
    lines.append({"question": "What is missing?", "answer": "x", "image": "missing.png"})
    (tmp_path / "data" / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "weights").write_text("planted")
    raw = load("cot_vqa.yaml")
    del raw["stages"]["image_check"]  # it rejects the text-only prompt (no_image)
    raw["input"] = {"path": str(tmp_path / "data" / "qa.jsonl"), "format": "qa_jsonl", "partition_rows": 2,
                    # explicit: regen-sft reads job.json, whose resolved input has the jsonl defaults (caption)
                    "image_column": "image", "text_column": "question", "answer_column": "answer"}
    backend = {"backend": PLANTED_BACKEND, "model": str(tmp_path / "weights")}
    raw["stages"]["cot_generate"].update(backend, options={"log": str(tmp_path / "generated.log")})
    raw["stages"]["cot_visual"].update(backend)
    raw["format"].update(max_pixels=200_704)
    return raw, ids


def cand_id(prompt_id: str, j: int) -> str:
    return make_id(prompt_id, "cot_generate", j)


def dpo_pairs(out: Path) -> set[tuple[str, str, str]]:
    lines = [json.loads(x) for x in (out / "dpo" / "data.jsonl").read_text().splitlines()]
    return {(x["chosen_id"], x["rejected_id"], x["rejected_reason"]) for x in lines}


def test_planted_candidates_sft_dpo_regen_and_resume(ray_local, tmp_path, capsys):
    raw, ids = vqa_job(tmp_path)
    recipe = parse_recipe(raw)
    assert list(raw["stages"]) != sorted(raw["stages"])  # the stages do not run in alphabetical order
    first = tmp_path / "first"
    run_job(recipe, str(first), log=lambda m: None, keep_work=True)
    a, b, c = (ids[q] for q in QUESTIONS)

    cands = rows(first, "candidates.parquet")
    assert len(cands) == sum(len(v) for v in PLANTED.values()) == 13
    for question, reasons in expected_reasons().items():
        mine = sorted((r for r in cands if r["parent_id"] == ids[question]), key=lambda r: r["cot_sample"])
        assert [r["cot_reason"] for r in mine] == reasons, question
        assert [r["cot_verdict"] for r in mine] == ["fail" if x else "pass" for x in reasons]
        assert [r["cot_text"] for r in mine] == [t for t, _, _ in PLANTED[question]]
        assert all(r["cot_model"] == f"{PLANTED_BACKEND}:{tmp_path / 'weights'}" for r in mine)
    by_id = {r["id"]: r for r in cands}
    assert [by_id[cand_id(a, j)]["drop_reason"] for j in (0, 1, 2)] == ["not_selected", None, "wrong_answer"]
    assert {by_id[cand_id(b, j)]["drop_reason"] for j in (0, 1)} == {"no_verified_candidate"}
    assert by_id[cand_id(a, 7)]["relevance_p_yes"] == pytest.approx(0.1)
    assert by_id[cand_id(c, 0)]["relevance_p_yes"] is None  # text-only: not asked
    assert by_id[cand_id(c, 0)]["cot_visual_asked"] is False and by_id[cand_id(a, 0)]["cot_visual_asked"] is True

    # SFT: the shortest passing candidate of each prompt that has one
    manifest = rows(first, "manifest.parquet")
    assert {r["parent_id"] for r in manifest} == {cand_id(a, 1), cand_id(c, 0)}
    rejects = rows(first, "rejects.parquet")
    assert [r["drop_reason"] for r in rejects if r["drop_stage"] == "read"] == ["missing_file"]
    assert len(manifest) + len(rejects) == 1 + 13  # conservation: the read reject, every candidate once
    assert {r["drop_reason"] for r in rejects if r["parent_id"] == b} == {"no_verified_candidate"}
    assert dpo_pairs(first) == {(cand_id(a, 1), cand_id(a, 2), "wrong_answer")}
    lf = json.loads((first / "dpo" / "data.jsonl").read_text().splitlines()[0])
    assert lf["conversations"][0]["value"].startswith("<image>What animal is this?") and len(lf["images"]) == 1
    assert (first / "dpo" / lf["images"][0]).read_bytes()[:4] == b"\x89PNG"
    trl = json.loads((first / "dpo" / "trl.jsonl").read_text().splitlines()[0])
    assert trl["chosen"][0]["content"] == PLANTED["What animal is this?"][1][0] and Path(trl["images"][0]).is_file()
    assert main(["inspect", str(first), "--candidates", "--id", a]) == 0
    shown = capsys.readouterr().out
    assert "SELECTED" in shown and "visual_inconsistent" in shown and "repeated_5grams" in shown

    # regen-sft with another policy: no model (its weights moved away), frozen candidates, reused visual scores
    generated = (tmp_path / "generated.log").read_text()
    (tmp_path / "weights").rename(tmp_path / "elsewhere")
    second = tmp_path / "second"
    assert main(["regen-sft", str(first), "-o", str(second), "--set", "stages.cot_select.policy=first",
                 "--set", "stages.cot_select.k=2", "--set", "stages.cot_select.max_dpo_pairs=2"]) == 0
    out = capsys.readouterr().out
    assert "cot_generate: reusing candidates" in out and "cot_visual: reusing scores" in out
    assert (tmp_path / "generated.log").read_text() == generated
    assert {r["parent_id"] for r in rows(second, "manifest.parquet")} == {cand_id(a, 0), cand_id(a, 1),
                                                                          cand_id(c, 0), cand_id(c, 1)}
    assert dpo_pairs(second) == {(cand_id(a, 0), cand_id(a, 2), "wrong_answer"),
                                 (cand_id(a, 1), cand_id(a, 7), "visual_inconsistent")}
    again = {r["id"]: r for r in rows(second, "candidates.parquet")}
    assert {i: r["cot_text"] for i, r in again.items()} == {i: r["cot_text"] for i, r in by_id.items()}
    assert json.loads((second / "stats.json").read_text())["stages"]["cot_visual"]["scores_reused"] == 13  # text-only too

    # a job stopped after its candidates were generated resumes without generating them again
    (tmp_path / "elsewhere").rename(tmp_path / "weights")
    steps = [s.name for s in plan_steps(recipe)]
    later = steps[steps.index(next(s for s in steps if s.endswith("cot_generate"))) + 1:]
    for name in [*later, "decisions", "shards", "complete.json"]:
        path = first / "_work" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for name in ("stats.json", "candidates.parquet", "manifest.parquet", "rejects.parquet"):
        (first / name).unlink()
    run_job(recipe, str(first), log=lambda m: None)
    assert (tmp_path / "generated.log").read_text() == generated
    assert rows(first, "candidates.parquet") == cands


def test_multiple_choice_letters_selected_and_rejected(ray_local, tmp_path, capsys):
    """cot_mc.yaml on tests/data/mc (mc.jsonl: four questions, two with an image; bad.jsonl: bad records)."""
    (tmp_path / "weights").write_text("planted")
    raw = load("cot_mc.yaml")
    raw["input"].update(path=str(REPO / "tests" / "data" / "mc"), partition_rows=2)
    backend = {"backend": PLANTED_BACKEND, "model": str(tmp_path / "weights")}
    raw["stages"]["cot_generate"].update(backend)
    raw["stages"]["cot_visual"].update(backend)
    raw["format"].update(max_pixels=200_704)
    out = tmp_path / "out"
    run_job(parse_recipe(raw), str(out), log=lambda m: None)
    animal, colour, planet, times = (make_id("mc.jsonl", k) for k in (1, 2, 3, 4))

    cands = rows(out, "candidates.parquet")
    assert len(cands) == sum(len(v) for v in MC_PLANTED.values()) == 12
    for prompt_id, (question, planted) in zip((animal, colour, planet, times), MC_PLANTED.items(), strict=True):
        mine = sorted((r for r in cands if r["parent_id"] == prompt_id), key=lambda r: r["cot_sample"])
        assert [r["cot_reason"] for r in mine] == [why for _, _, why in planted], question
        assert [r["cot_text"] for r in mine] == [t for t, _, _ in planted]
        assert all(r["prompt"].startswith(question + "\nA. ") and "Answer: <letter>" in r["prompt"] for r in mine)
    by_id = {r["id"]: r for r in cands}
    assert "\nA. A cow\nB. A horse\nC. A dog\nD. A cat\n" in by_id[cand_id(animal, 0)]["prompt"]
    assert [by_id[cand_id(animal, j)]["cot_answer"] for j in range(4)] == ["B", "A", "B", "E"]
    assert [by_id[cand_id(animal, j)]["drop_reason"] for j in range(5)] == [
        "not_selected", "wrong_answer", None, "unreadable_answer", "visual_inconsistent"]
    assert by_id[cand_id(planet, 0)]["relevance_p_yes"] is None  # text-only: not asked
    assert {by_id[cand_id(colour, j)]["drop_reason"] for j in (0, 1)} == {"no_verified_candidate"}

    manifest = rows(out, "manifest.parquet")
    assert {r["parent_id"] for r in manifest} == {cand_id(animal, 2), cand_id(planet, 1), cand_id(times, 0)}
    rejects = rows(out, "rejects.parquet")
    read = sorted(r["drop_reason"] for r in rejects if r["drop_stage"] == "read")
    assert read == ["bad_answer", "bad_answer", "bad_options", "bad_options", "invalid_json", "missing_field",
                    "missing_file"]
    assert len(manifest) + len(rejects) == 7 + 12  # conservation: bad.jsonl's records, every candidate once
    assert dpo_pairs(out) == {(cand_id(animal, 2), cand_id(animal, 1), "wrong_answer"),
                              (cand_id(planet, 1), cand_id(planet, 0), "wrong_answer"),
                              (cand_id(times, 0), cand_id(times, 1), "text_after_answer")}
    lf = [json.loads(x) for x in (out / "dpo" / "data.jsonl").read_text().splitlines()]
    image_pair = next(x for x in lf if x["prompt_id"] == animal)
    assert image_pair["conversations"][0]["value"].startswith("<image>What animal is shown in the image?\nA. A cow")
    assert image_pair["images"] and not next(x for x in lf if x["prompt_id"] == planet)["images"]
    assert main(["inspect", str(out), "--candidates", "--id", animal]) == 0
    shown = capsys.readouterr().out
    assert "gold answer: 'B'" in shown and "SELECTED" in shown and "unreadable_answer" in shown

    # regen-sft re-checks quality with a new max_tokens and re-selects, the weights moved away (planted token
    # counts are word counts: 17 for the animal's sample 0, 8 for the planet's sample 1, 10 for 7 x 8's sample 0)
    (tmp_path / "weights").rename(tmp_path / "elsewhere")
    new = tmp_path / "new"
    assert main(["regen-sft", str(out), "-o", str(new), "--set", "stages.cot_quality.max_tokens=8",
                 "--set", "stages.cot_select.policy=first"]) == 0
    again = {r["id"]: r for r in rows(new, "candidates.parquet")}
    assert again[cand_id(animal, 0)]["cot_reason"] == again[cand_id(times, 0)]["cot_reason"] == "too_long"
    assert {r["parent_id"] for r in rows(new, "manifest.parquet")} == {cand_id(animal, 2), cand_id(planet, 1)}
    assert again[cand_id(times, 0)]["drop_reason"] == "no_verified_candidate"
    assert json.loads((new / "stats.json").read_text())["stages"]["cot_visual"]["scores_reused"] == 12


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return Path(build_tiny_qwen25vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen"))


def test_tiny_model_end_to_end(ray_local, tiny_model, tmp_path):
    raw = load("cot_math.yaml")
    raw["input"].update(path=str(REPO / "tests" / "data" / "qa" / "gsm8k_test_first10.jsonl"), partition_rows=5)
    raw["stages"]["cot_generate"].update(model=str(tiny_model), n=2, max_new_tokens=8)
    out = tmp_path / "out"
    run_job(parse_recipe(raw), str(out), log=lambda m: None)
    cands = rows(out, "candidates.parquet")
    prompts = {r["parent_id"] for r in cands}
    assert len(prompts) == 10 and len(cands) == 20  # every prompt, n candidates each
    assert all(sorted(r["cot_sample"] for r in cands if r["parent_id"] == p) == [0, 1] for p in prompts)
    assert len({r["cot_seed"] for r in cands}) == 20 and len({r["cot_model"] for r in cands}) == 1  # one each
    assert rows(out, "manifest.parquet") == []
    rejects = rows(out, "rejects.parquet")
    assert len(rejects) == 20 and {r["drop_reason"] for r in rejects} == {"no_verified_candidate"}
    assert all(r["cot_verdict"] == "fail" and r["cot_reason"] for r in cands)
    assert not (out / "dpo" / "data.jsonl").read_text()


def test_code_verdicts_in_actors_match_the_main_thread(ray_local, tmp_path):
    (tmp_path / "weights").write_text("planted")
    raw = load("cot_code.yaml")
    raw["input"].update(path=str(REPO / "tests" / "data" / "code" / "HumanEval_first5.jsonl"), partition_rows=2)
    raw["stages"]["cot_generate"].update(backend=PLANTED_BACKEND, model=str(tmp_path / "weights"))
    out = tmp_path / "out"
    run_job(parse_recipe(raw), str(out), log=lambda m: None)
    cands = rows(out, "candidates.parquet")
    assert len(cands) == 10
    problems = {json.loads(x)["prompt"]: json.loads(x) for x in
                (REPO / "tests" / "data" / "code" / "HumanEval_first5.jsonl").read_text().splitlines()}
    for r in cands:
        rec = problems[r["question"]]
        here = verify_code(r["cot_text"], rec["test"], rec["entry_point"], prompt=rec["prompt"])
        assert r["cot_correct"] == here.passed == (r["cot_sample"] == 0)
        assert r["cot_verify_reason"] == (None if here.passed else f"tests_{here.status}")
    assert len(rows(out, "manifest.parquet")) == 5 and len(dpo_pairs(out)) == 5
