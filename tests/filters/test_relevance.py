"""Relevance stage without Ray: prompts, padding, prefetch, decisions, checks, with scripted backends.

The backends here are also what the job tests name as ``backend: tests.filters.test_relevance:Scripted``:
``Scripted`` answers from the true / mismatched captions of the dev pairs (tests/data/pairs/captions.jsonl,
a copy of ../shared/data/dev/pairs with its provenance and licenses; the images are jobs/demo_data/images).
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from filters.relevance import QA_PROMPT, Relevance
from model.backends import YesNo
from model.backends.base import resize
from pipeline.recipe import RecipeError, check_stages, parse_recipe
from pipeline.runner import plan_steps
from tests.media import DEMO_IMAGES, jpeg

PAIRS = Path(__file__).resolve().parents[1] / "data" / "pairs" / "captions.jsonl"
LABELS = [json.loads(line) for line in PAIRS.read_text().splitlines()]
LABELLED = [r for r in LABELS if (DEMO_IMAGES / r["image"]).exists()]  # the five photos bundled in the repo


def true_caption(r: dict) -> str:
    return r["clip_notebook_caption"] or r["skimage_doc_caption"]


def thumb(im: Image.Image) -> list[int]:
    return list(im.convert("L").resize((8, 8), Image.Resampling.BOX).tobytes())


class Scripted:
    """A backend that knows the answer: P(yes) 0.95 for an image's true captions, 0.05 for its mismatched one,
    and an unsure answer (mass 0.1) for any other text. The image is recognised by its nearest 8x8 thumbnail."""

    def __init__(self, model: str | None = None, min_pixels: int = 3136, max_pixels: int = 200_000,
                 sleep_s: float = 0.0, log: str | None = None) -> None:
        self.known = []
        for r in LABELLED:
            im = resize(Image.open(DEMO_IMAGES / r["image"]), min_pixels, max_pixels)
            truth = {r["clip_notebook_caption"], r["skimage_doc_caption"]} - {None}
            self.known.append((thumb(im), truth, r["mismatched_caption"]))
        self.sleep_s, self.log, self.calls = sleep_s, log, []

    def score_yes_no(self, items):
        self.calls.append(list(items))
        time.sleep(self.sleep_s)
        out = []
        for it in items:
            caption = re.search(r'show "(.*)"\?', it.prompt, re.S)
            t = thumb(it.images[0])
            _, truth, wrong = min(self.known, key=lambda k: sum(abs(a - b) for a, b in zip(k[0], t, strict=True)))
            text = caption.group(1) if caption else None
            out.append(YesNo(0.95, 0.99) if text in truth else YesNo(0.05, 0.99) if text == wrong else
                       YesNo(0.5, 0.1))
        if self.log:
            with open(self.log, "a") as f:
                f.write("".join(it.prompt.replace("\n", " ") + "\n" for it in items))
        return out


class Constant:
    """Answers every item the same; counts calls (a stand-in model for the mechanics)."""

    def __init__(self, model=None, min_pixels=3136, max_pixels=200_000, p_yes=0.7, mass=0.9, sleep_s=0.0):
        self.answer, self.sleep_s, self.calls = YesNo(p_yes, mass), sleep_s, []

    def score_yes_no(self, items):
        self.calls.append((time.perf_counter(), list(items)))
        time.sleep(self.sleep_s)
        self.calls[-1] = (*self.calls[-1], time.perf_counter())
        return [self.answer] * len(items)


def stage(backend: str = "Scripted", options: dict | None = None, **params) -> Relevance:
    s = Relevance(Relevance.Params(backend=f"tests.filters.test_relevance:{backend}", max_pixels=200_000,
                                   options=options or {}, **params))
    s.check()
    s.setup()
    return s


def photo(name: str) -> bytes:
    return (DEMO_IMAGES / name).read_bytes()


def batch(rows: list[dict]) -> dict[str, list]:
    keys = ("id", "images", "text", "captions", "answer")
    return {k: [r.get(k, f"{i:016x}" if k == "id" else None) for i, r in enumerate(rows)] for k in keys}


def test_scripted_answers_split_true_and_mismatched_pairs():
    s = stage()
    rows = [{"images": [photo(r["image"])], "text": true_caption(r)} for r in LABELLED]
    rows += [{"images": [photo(r["image"])], "text": r["mismatched_caption"]} for r in LABELLED]
    got = s.score(batch(rows))
    assert got["relevance_p_yes"] == [0.95] * 5 + [0.05] * 5
    assert got["relevance_mass"] == [0.99] * 10
    assert "relevance_scores" not in got  # no row had several captions


def test_every_caption_is_asked_the_images_decoded_once_and_the_best_becomes_text():
    s = stage(batch_size=4)
    cat = next(r for r in LABELLED if r["image"] == "chelsea.png")
    caps = [cat["mismatched_caption"], "something else entirely", cat["skimage_doc_caption"]]
    rows = [{"images": [photo("rocket.jpg")], "text": "a rocket standing on a launchpad"},
            {"images": [photo("chelsea.png")], "text": caps[0], "captions": caps}]
    got = s.score(batch(rows))
    assert got["relevance_scores"] == [None, [0.05, 0.5, 0.95]]
    assert got["relevance_masses"] == [None, [0.99, 0.1, 0.99]]
    assert got["relevance_p_yes"] == [0.95, 0.95] and got["relevance_mass"] == [0.99, 0.99]
    items = [it for call in s.backend.calls for it in call]
    cat_images = {id(it.images[0]) for it in items[1:4]}
    assert len(cat_images) == 1  # one decoded, resized image object for the three captions (across two calls)
    table = {"id": ["a", "b"], "text": [rows[0]["text"], caps[0]], "captions": [None, caps],
             **{k: got[k] for k in s.score_columns()}}
    decision = s.decide_global(table)
    assert decision["text"] == [rows[0]["text"], cat["skimage_doc_caption"]]
    assert decision["drop_reason"] == [None, None]


def test_model_calls_are_padded_to_the_batch_size():
    s = stage("Constant", batch_size=4)
    rows = [{"images": [jpeg(40 + i, 30, seed=i)], "text": f"caption {i}"} for i in range(6)]
    got = s.score(batch(rows))
    assert [len(items) for _, items, _ in s.backend.calls] == [4, 4]
    assert got["relevance_p_yes"] == [0.7] * 6
    last = s.backend.calls[-1][1]
    assert last[2] is last[1] and last[3] is last[1]  # padding repeats the last real item


def test_qa_rows_get_the_qa_question_and_rows_without_image_or_text_are_not_scored():
    s = stage("Constant", batch_size=2)
    rows = [{"images": [photo("coins.png")], "text": "What is shown?", "answer": "coins"},
            {"images": [], "text": "no image here"},
            {"images": [photo("coins.png")], "text": None},
            {"images": [photo("coins.png"), photo("horse.png")], "text": "two images"}]
    got = s.score(batch(rows))
    assert got["relevance_p_yes"] == [0.7, None, None, 0.7]
    prompts = [it.prompt for _, items, _ in s.backend.calls for it in items]
    assert prompts[0] == QA_PROMPT.format(question="What is shown?", answer="coins")
    assert "Is this answer correct and supported by the image?" in prompts[0]
    assert prompts[1] == 'Does this image show "two images"? Answer yes or no.'
    assert len(s.backend.calls[0][1][1].images) == 2  # every image of the row goes to the model


def test_prefetch_prepares_the_next_batch_while_the_model_runs(monkeypatch):
    prepared: list[tuple[str, float]] = []

    def recording_resize(image, lo, hi):
        out = resize(image, lo, hi)
        prepared.append((threading.current_thread().name, time.perf_counter()))
        return out

    monkeypatch.setattr("filters.relevance.resize", recording_resize)
    s = stage("Constant", {"sleep_s": 0.4}, batch_size=2)
    rows = [{"images": [jpeg(64, 48, seed=i)], "text": f"caption {i}"} for i in range(6)]
    s.score(batch(rows))
    assert len(prepared) == 6 and all(name.startswith("relevance-prefetch") for name, _ in prepared)
    end0, start1 = s.backend.calls[0][2], s.backend.calls[1][0]
    # rows 2 and 3 (the second call) were decoded while the first call was on the model
    assert prepared[3][1] < end0 < start1

    prepared.clear()
    s = stage("Constant", {"sleep_s": 0.4}, batch_size=2, prefetch=False)
    s.score(batch(rows))
    assert {name for name, _ in prepared} == {threading.current_thread().name}
    assert prepared[2][1] > s.backend.calls[0][2]  # without prefetch the next batch waits for the model


def table(p_yes, mass, ids=None):
    ids = ids or [f"{i:02d}" for i in range(len(p_yes))]
    return {"id": ids, "text": ["t"] * len(ids), "relevance_p_yes": p_yes, "relevance_mass": mass}


def test_decision_unsure_first_then_threshold_or_top_fraction():
    s = Relevance(Relevance.Params(model="m", min_mass=0.5, min_p_yes=0.6))
    got = s.decide_global(table([0.9, 0.9, 0.3, None, 0.6], [0.9, 0.2, 0.9, None, 0.5]))
    assert got["drop_reason"] == [None, "relevance_unsure", "relevance_low", None, None]
    assert "text" not in got

    s = Relevance(Relevance.Params(model="m", min_mass=0.5, keep_top_fraction=0.5))
    # six rows: one unsure, one unscored; of the four left the best two by p_yes, ties by the smaller id
    got = s.decide_global(table([0.99, 0.8, 0.8, 0.1, None, 0.8], [0.1, 0.9, 0.9, 0.9, None, 0.9]))
    assert got["drop_reason"] == ["relevance_unsure", None, None, "relevance_low", None, "relevance_low"]

    s = Relevance(Relevance.Params(model="m", min_mass=0.0))  # neither rule: only scores
    assert s.decide_global(table([0.1, 0.9], [0.0, 1.0]))["drop_reason"] == [None, None]


def test_params_and_declared_resources():
    with pytest.raises(ValidationError, match="min_p_yes or keep_top_fraction"):
        Relevance.Params(min_p_yes=0.5, keep_top_fraction=0.5)
    with pytest.raises(ValidationError, match="unknown 'hf'"):
        Relevance.Params(backend="hf")
    assert Relevance(Relevance.Params()).num_gpus == 0.0
    assert Relevance(Relevance.Params(device="cuda")).num_gpus == 1.0
    assert Relevance(Relevance.Params(backend="vllm", options={"tensor_parallel_size": 4})).num_gpus == 4.0
    assert Relevance(Relevance.Params(backend="openai", num_gpus=0)).num_gpus == 0.0
    raw = {"input": {"path": str(PAIRS)},
           "stages": {"image_check": {}, "relevance": {"model": "m", "device": "cuda:0", "actors": 3}}}
    step = next(s for s in plan_steps(parse_recipe(raw)) if s.holds_model)
    assert (step.num_gpus, step.actors, step.ops[0].kind, step.ops[0].key) == (1.0, 3, "score", "relevance")


@pytest.mark.parametrize(("params", "message"), [
    ({}, "stages.relevance.model: a local Qwen2.5-VL model directory is required; nothing is downloaded"),
    ({"model": "/nonexistent/qwen"}, "stages.relevance.model: not found: /nonexistent/qwen"),
    ({"model": "CONFIG"}, "is a 'clip' model, not Qwen2.5-VL"),
    ({"backend": "openai", "model": "/local/dir", "served_model": "q"}, "takes the server's base URL"),
    ({"backend": "tests.filters.test_relevance:Nope"}, "stages.relevance.backend: cannot import"),
])
def test_check_is_one_line_before_the_job(tmp_path, params, message):
    if params.get("model") == "CONFIG":
        (tmp_path / "config.json").write_text('{"model_type": "clip"}')
        params = {"model": str(tmp_path)}
    raw = {"input": {"path": str(PAIRS)}, "stages": {"relevance": params}}
    with pytest.raises(RecipeError) as e:
        check_stages(parse_recipe(raw))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_scripted_backend_recognises_each_photo():
    s = Scripted()
    for r in LABELLED:
        im = resize(Image.open(io.BytesIO(photo(r["image"]))), 3136, 200_000)
        assert min(s.known, key=lambda k: sum(abs(a - b) for a, b in zip(k[0], thumb(im), strict=True)))[1] == \
            {r["clip_notebook_caption"], r["skimage_doc_caption"]} - {None}
