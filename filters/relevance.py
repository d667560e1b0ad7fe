"""Image–text relevance: P(yes) that a Qwen2.5-VL model says the caption (or the answer) fits the image."""

from __future__ import annotations

import importlib
import io
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PIL import Image
from pydantic import Field, model_validator

from filters.base import Batch, Params, Stage
from filters.pool import best_captions, pool_cut
from model.backends import KINDS, YES_NO_PROMPT, BackendError, Item, load_backend
from model.backends.base import MAX_PIXELS, MIN_PIXELS, check_model_dir, resize

QA_PROMPT = ('Question: "{question}"\nAnswer: "{answer}"\n'
             "Is this answer correct and supported by the image? Answer yes or no.")
AHEAD = 2  # model calls prepared ahead of the one on the model: absorbs calls whose images take longer
DECIMALS = 4  # scores are rounded: left padding moves the last bits with a row's batchmates (see Relevance)


class Relevance(Stage):
    """Score how well a row's text fits its images with a Qwen2.5-VL model, then cut over the whole pool.

    Backend (``backend``): ``transformers`` (``model`` a local model directory; ``device`` cpu / cuda),
    ``vllm`` (a local directory; ``options.tensor_parallel_size``), ``openai`` (``model`` the server's base URL,
    ``served_model`` its model name), or ``module:Factory``, any callable ``Factory(model, min_pixels=,
    max_pixels=, **options)`` returning an object with ``score_yes_no(items) -> [YesNo]`` (how tests inject a
    scripted backend). ``options`` go to the backend as keyword arguments. Nothing is downloaded; ``check()``
    refuses a missing or wrong model directory in one line before the job.

    Resources: one model per actor (``actors`` on the stage, like every model stage); ``num_gpus`` per actor
    defaults to ``options.tensor_parallel_size`` (or 1) for vLLM, 1 for ``transformers`` on cuda, else 0.

    Score (``relevance_p_yes``, ``relevance_mass``; rounded to 4 decimals): a caption row is asked the
    VQAScore question ``prompt``; a row with an ``answer`` (a QA record: ``text`` is the question) is asked
    ``qa_prompt``. Every image of the row goes to the model, resized to ``min_pixels`` / ``max_pixels`` (set
    the format's). A row with several captions (``captions``, as ``dedup`` leaves) has each asked, its images
    decoded and resized once: ``relevance_scores`` / ``relevance_masses`` (aligned with ``captions``), the
    best P(yes) with its mass in the row's columns, and the decision makes that caption the ``text``. A row
    without image or text is not scored and passes.

    Model calls hold exactly ``batch_size`` items (the last one padded with copies), as the CLIP scorer does;
    a caller hands ``score`` up to ``Relevance.batch_size`` rows at once, and with ``prefetch`` a thread
    decodes and resizes the next model calls (``AHEAD`` of them) while the current one is on the model. The
    captions of a row share its decoded images, and the ``transformers`` backend runs the vision tower once
    for items sharing them (a row's captions split over two model calls are encoded once in each).

    Decision over the pool: a row whose yes/no ``mass`` is below ``min_mass`` (the model did not answer the
    question) is dropped ``relevance_unsure``; then at most one of ``min_p_yes`` (a threshold) or
    ``keep_top_fraction`` (the best ``round(fraction * rows)`` of the rows left, ties by the smaller id) drops
    ``relevance_low``. All of it reads stored scores, so ``regen-sft`` changes them without the model.
    """

    class Params(Params):
        backend: str = "transformers"
        model: str | None = None
        served_model: str | None = None
        options: dict[str, Any] = Field(default_factory=dict)
        device: str = "cpu"
        num_gpus: float | None = Field(default=None, ge=0)
        batch_size: int = Field(default=16, ge=1)
        prefetch: bool = True
        min_pixels: int = Field(default=MIN_PIXELS, ge=1)
        max_pixels: int = Field(default=MAX_PIXELS, ge=1)
        prompt: str = YES_NO_PROMPT
        qa_prompt: str = QA_PROMPT
        min_mass: float = Field(default=0.5, ge=0.0, le=1.0)
        min_p_yes: float | None = Field(default=None, ge=0.0, le=1.0)
        keep_top_fraction: float | None = Field(default=None, gt=0.0, le=1.0)

        @model_validator(mode="after")
        def _consistent(self) -> Relevance.Params:
            if self.min_p_yes is not None and self.keep_top_fraction is not None:
                raise ValueError("set min_p_yes or keep_top_fraction, not both")
            if self.max_pixels < self.min_pixels:
                raise ValueError(f"max_pixels must be >= min_pixels ({self.min_pixels})")
            if self.backend not in KINDS and ":" not in self.backend:
                raise ValueError(f"backend: unknown {self.backend!r} (known: {', '.join(KINDS)}, or module:Factory)")
            return self

    kind = "global"
    holds_model = True
    batch_size = 256  # rows per score call; model calls are params.batch_size items
    decision_params = ("min_mass", "min_p_yes", "keep_top_fraction", "device", "num_gpus", "batch_size",
                       "prefetch")

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        p = self.params
        if p.num_gpus is not None:
            self.num_gpus = p.num_gpus
        elif p.backend == "vllm":
            self.num_gpus = float(p.options.get("tensor_parallel_size", 1))
        elif p.backend == "transformers" and p.device.startswith("cuda"):
            self.num_gpus = 1.0
        self.backend: Any = None
        self._prefetcher: ThreadPoolExecutor | None = None

    def _factory(self) -> Callable[..., Any]:
        module, _, name = self.params.backend.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"backend: cannot import {self.params.backend!r} ({e})") from None

    def check(self) -> None:
        p = self.params
        if p.backend not in KINDS:
            self._factory()
            return
        if not p.model:
            what = "the server's base URL" if p.backend == "openai" else "a local Qwen2.5-VL model directory"
            raise ValueError(f"model: {what} is required; nothing is downloaded")
        if p.backend == "openai":
            if not p.model.startswith(("http://", "https://")) or not p.served_model:
                raise ValueError("model: backend openai takes the server's base URL (http://HOST:PORT/v1) as "
                                 "model and its model name as served_model")
            return
        try:
            check_model_dir(p.model)
        except BackendError as e:
            raise ValueError(str(e)) from None

    def setup(self) -> None:
        p = self.params
        size = {"min_pixels": p.min_pixels, "max_pixels": p.max_pixels}
        if p.backend not in KINDS:
            self.backend = self._factory()(p.model, **size, **p.options)
        elif p.backend == "openai":
            self.backend = load_backend("openai", p.served_model or "", base_url=p.model, **size, **p.options)
        elif p.backend == "transformers":
            self.check()
            self.backend = load_backend("transformers", p.model or "", device=p.device, batch_size=p.batch_size,
                                        **size, **p.options)
        else:
            self.check()
            self.backend = load_backend(p.backend, p.model or "", **size, **p.options)
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="relevance-prefetch") if p.prefetch else None

    def _questions(self, batch: Batch) -> list[tuple[int, list[str], bool]]:
        """(row, prompts, by caption) for every row that can be scored: a prompt per caption, or the QA one."""
        n = len(batch["id"])
        captions = batch.get("captions") or [None] * n
        answers = batch.get("answer") or [None] * n
        out = []
        for i, (imgs, text, caps, answer) in enumerate(zip(batch["images"], batch["text"], captions, answers,
                                                           strict=True)):
            if not imgs:
                continue
            if answer not in (None, "") and text:
                out.append((i, [self.params.qa_prompt.format(question=text, answer=answer)], False))
            elif caps or text:
                out.append((i, [self.params.prompt.format(caption=c) for c in (caps or [text])], bool(caps)))
        return out

    def score(self, batch: Batch) -> Batch:
        if self.backend is None:
            self.setup()
        p = self.params
        questions = self._questions(batch)
        flat = [(row, prompt) for row, prompts, _ in questions for prompt in prompts]
        calls = [flat[s:s + p.batch_size] for s in range(0, len(flat), p.batch_size)]
        decoded: dict[int, list[Image.Image]] = {}

        def prepare(call: Sequence[tuple[int, str]]) -> list[Item]:
            """Decode and resize (once per row) the images of one model call."""
            for row, _ in call:
                if row not in decoded:
                    decoded[row] = [resize(Image.open(io.BytesIO(bytes(b))), p.min_pixels, p.max_pixels)
                                    for b in batch["images"][row]]
            items = [Item(images=decoded[row], prompt=prompt) for row, prompt in call]
            for row in [r for r in decoded if r != call[-1][0]]:  # rows come in order: only the last one
                del decoded[row]  # can go on into the next call
            return items

        answers = []
        ahead: deque[Future] = deque()  # preparations queued on the one prefetch thread, run in order
        for k, call in enumerate(calls):
            if self._prefetcher is None:
                items = prepare(call)
            else:
                while len(ahead) <= AHEAD and k + len(ahead) < len(calls):
                    ahead.append(self._prefetcher.submit(prepare, calls[k + len(ahead)]))
                items = ahead.popleft().result()
            padded = items + [items[-1]] * (p.batch_size - len(items))
            answers.extend(self.backend.score_yes_no(padded)[:len(items)])
        return self._columns(batch, questions, answers)

    def _columns(self, batch: Batch, questions: list[tuple[int, list[str], bool]], answers: list[Any]) -> Batch:
        n = len(batch["id"])
        p_yes: list[float | None] = [None] * n
        mass: list[float | None] = [None] * n
        each: list[list[float] | None] = [None] * n
        masses: list[list[float] | None] = [None] * n
        it = iter(answers)
        for row, prompts, by_caption in questions:
            got = [next(it) for _ in prompts]
            scores = [round(float(a.p_yes), DECIMALS) for a in got]
            best = scores.index(max(scores))
            p_yes[row], mass[row] = scores[best], round(float(got[best].mass), DECIMALS)
            if by_caption:
                each[row], masses[row] = scores, [round(float(a.mass), DECIMALS) for a in got]
        out: Batch = {"relevance_p_yes": p_yes, "relevance_mass": mass}
        if any(e is not None for e in each):
            out["relevance_scores"], out["relevance_masses"] = each, masses
        return out

    def score_columns(self) -> list[str]:
        return ["relevance_p_yes", "relevance_mass", "relevance_scores", "relevance_masses"]

    def decide_global(self, table: Batch) -> Batch:
        p = self.params
        unsure = [m is not None and m < p.min_mass for m in table["relevance_mass"]]
        reasons = pool_cut(table["id"], table["relevance_p_yes"], "relevance_low", min_score=p.min_p_yes,
                           keep_top_fraction=p.keep_top_fraction,
                           reasons=["relevance_unsure" if u else None for u in unsure])
        out: Batch = {"drop_reason": reasons}
        each = table.get("relevance_scores") or [None] * len(table["id"])
        if any(e is not None for e in each):
            out["text"] = best_captions(table["text"], table["captions"], each)
        return out
