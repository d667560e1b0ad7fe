"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM or SGLang serving
Qwen2.5-VL-72B with tensor parallelism is how a large filter model is reached). Images go as PNG data URLs,
already smart-resized; requests run concurrently.

Scoring reads the first answer token's ``top_logprobs``; a server that answers without them (``transformers
serve`` accepts the fields and ignores them) is refused with one line. ``generate`` asks for ``n`` choices
and, when a server returns fewer (it ignores ``n``), asks again one choice at a time (seed + i) until there
are n.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from model.backends.base import (
    MAX_PIXELS,
    MIN_PIXELS,
    Backend,
    BackendError,
    Candidate,
    Item,
    YesNo,
    answer_word,
    check_generate_args,
    user_messages,
    yes_no,
)
from model.tokenizer import qwen_tokenizer

TOP_LOGPROBS = 20  # the most OpenAI's API allows; vLLM's default max_logprobs


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend(Backend):
    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key: str | None = None,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, concurrency: int = 8,
                 timeout_s: float = 600.0) -> None:
        import requests

        super().__init__(min_pixels, max_pixels)
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self._checked_logprobs = False

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import requests

        try:
            response = self.session.post(self.url, json={"model": self.model, **body}, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise BackendError(f"openai backend: {self.url}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        if response.status_code != 200:
            text = " ".join(response.text.split())[:300]
            raise BackendError(f"openai backend: {self.url} answered {response.status_code}: {text}")
        return response.json()

    def _messages(self, item: Item) -> list[dict[str, Any]]:
        messages = user_messages(item, image_part={"type": "image_url", "image_url": {"url": ""}})
        for part, image in zip(messages[0]["content"], self.images(item), strict=False):
            part["image_url"] = {"url": data_url(image)}
        return messages

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    def check_scoring(self) -> None:
        """One small request; BackendError (one line) when the server ignores logprobs / top_logprobs."""
        self._score_one(Item(images=[], prompt="Is water wet? Answer yes or no."))

    def _score_one(self, item: Item) -> YesNo:
        answer = self._post({"messages": self._messages(item), "max_tokens": 1, "temperature": 0.0,
                             "logprobs": True, "top_logprobs": TOP_LOGPROBS})
        choice = (answer.get("choices") or [{}])[0]
        content = (choice.get("logprobs") or {}).get("content") or []
        top = content[0].get("top_logprobs") if content else None
        if not top:
            missing = "logprobs" if not content else "top_logprobs"
            raise BackendError(f"openai backend: {self.url} ignored `{missing}` (its answer has no "
                               "log-probabilities); yes/no scoring needs a server that returns them (vLLM, SGLang)")
        p = {"yes": 0.0, "no": 0.0}
        for entry in top:
            word = answer_word(entry.get("token", ""))
            if word:
                p[word] += math.exp(float(entry["logprob"]))
        return yes_no(p["yes"], p["no"])

    def score_yes_no(self, items: Sequence[Item]) -> list[YesNo]:
        """P(yes) from the first answer token's top 20 log-probabilities (variants outside them are not
        counted: each has less probability than the 20th token)."""
        if not self._checked_logprobs and items:
            first = self._score_one(items[0])
            self._checked_logprobs = True
            return [first, *self._map(self._score_one, items[1:])]
        return self._map(self._score_one, items)

    def generate(self, items: Sequence[Item], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 512, seed: int | None = None,
                 seeds: Sequence[int] | None = None) -> list[list[Candidate]]:
        """n candidates per item; ``n_tokens`` counts the text's tokens under the Qwen2.5 tokenizer. With
        seeds, candidate j is its own request (n=1) with ``seeds[j]``."""
        check_generate_args(n, temperature, top_p, max_new_tokens, seeds)
        tokenizer = qwen_tokenizer()

        def one(item: Item) -> list[Candidate]:
            body = {"messages": self._messages(item), "temperature": temperature, "top_p": top_p,
                    "max_tokens": max_new_tokens}
            choices: list[dict[str, Any]] = []
            attempt = 0
            while len(choices) < n:
                want = 1 if seeds is not None else n - len(choices)
                extra = {"n": want} if want > 1 else {}
                if seeds is not None:
                    extra["seed"] = seeds[len(choices)]
                elif seed is not None:
                    extra["seed"] = seed + attempt
                got = self._post({**body, **extra}).get("choices") or []
                if not got:
                    raise BackendError(f"openai backend: {self.url} answered without choices")
                choices.extend(got[:want])
                attempt += 1
            return [Candidate(text=(c.get("message") or {}).get("content") or "",
                              finish_reason=c.get("finish_reason") or "stop",
                              n_tokens=len(tokenizer((c.get("message") or {}).get("content") or "",
                                                     add_special_tokens=False)["input_ids"]))
                    for c in choices]

        return self._map(one, items)
