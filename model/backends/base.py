"""The backend interface: yes/no scoring and sampling with a Qwen2.5-VL model, whatever runs it.

``score_yes_no(items)`` does one forward pass per item and returns ``YesNo(p_yes, mass)``: p_yes sums the
next-token probabilities of every "yes" variant (``yes``, ``Yes``, `` yes``, ``YES`` …), p_no likewise,
P(yes) = p_yes / (p_yes + p_no) and ``mass`` = p_yes + p_no (a low mass means the model did not answer
yes or no: the prompt did not work). ``generate(items, n, …)`` returns exactly n ``Candidate``s per item;
with ``seeds`` (n of them) candidate j of each item is drawn with ``seeds[j]`` alone, so it is the same
whatever the other candidates and items of the call (``seed`` instead seeds the call as a whole).

Images are resized with Qwen's smart_resize under the caller's ``min_pixels`` / ``max_pixels`` (the
recipe's limits) before they reach the model, so what is scored is what is trained on.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

# VQAScore-style relevance question (Lin et al., 2024), asked through the chat template with the
# generation prompt.
YES_NO_PROMPT = 'Does this image show "{caption}"? Answer yes or no.'
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
PATCH_FACTOR = 28  # patch 14 x spatial merge 2
MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")


class BackendError(ValueError):
    """A backend cannot do what was asked; the message is one line, fit to show the user as it is."""


@dataclass(frozen=True)
class Item:
    """One request: images (PIL, any size; resized by the backend) and the user's text."""

    images: Sequence[Image.Image]
    prompt: str


@dataclass(frozen=True)
class YesNo:
    p_yes: float  # p_yes / (p_yes + p_no)
    mass: float  # p_yes + p_no: how much of the next-token distribution the answer took


@dataclass(frozen=True)
class Candidate:
    text: str
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    n_tokens: int  # generated tokens, the stop token excluded


def yes_no_item(images: Sequence[Image.Image], caption: str, template: str = YES_NO_PROMPT) -> Item:
    """The relevance question for a caption (``{caption}`` in the template)."""
    return Item(images=list(images), prompt=template.format(caption=caption))


def answer_word(token_text: str) -> str | None:
    """``"yes"`` / ``"no"`` when a token's text is a variant of that answer (case, surrounding space)."""
    word = token_text.strip().lower()
    return word if word in ("yes", "no") else None


def yes_no(p_yes: float, p_no: float) -> YesNo:
    mass = p_yes + p_no
    return YesNo(p_yes=p_yes / mass if mass > 0 else 0.0, mass=mass)


def user_messages(item: Item, image_part: Any = None) -> list[dict[str, Any]]:
    """The one-turn conversation of an item: its images first, then its text."""
    parts = [dict(image_part) if image_part is not None else {"type": "image"} for _ in item.images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": item.prompt}]}]


def resize(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """RGB, resized to Qwen's smart_resize size (multiples of 28, pixels within the limits)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image = image.convert("RGB")
    h, w = smart_resize(image.height, image.width, factor=PATCH_FACTOR, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    return image if (w, h) == image.size else image.resize((w, h), Image.Resampling.BICUBIC)


def check_generate_args(n: int, temperature: float, top_p: float, max_new_tokens: int,
                        seeds: Sequence[int] | None = None) -> None:
    if seeds is not None and len(seeds) != n:
        raise BackendError(f"generate: seeds gives {len(seeds)} seed(s) for n={n} candidates")
    if n < 1 or max_new_tokens < 1:
        raise BackendError(f"generate: n ({n}) and max_new_tokens ({max_new_tokens}) must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise BackendError(f"generate: temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")


def check_model_dir(path: str | os.PathLike) -> str:
    """A local Qwen2-VL / Qwen2.5-VL model directory, or one line (BackendError) saying what is wrong."""
    path = os.fspath(path)
    config = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise BackendError(f"model: not found: {path} (a local Qwen2.5-VL model directory)")
    if not os.path.isfile(config):
        raise BackendError(f"model: {path} has no config.json: not a model directory")
    try:
        model_type = json.loads(open(config, encoding="utf-8").read()).get("model_type")
    except (OSError, ValueError) as e:
        raise BackendError(f"model: {config}: unreadable ({e})") from e
    if model_type not in MODEL_TYPES:
        raise BackendError(f"model: {path} is a {model_type!r} model, not Qwen2.5-VL ({', '.join(MODEL_TYPES)})")
    return path


class Backend(ABC):
    """A Qwen2.5-VL model behind the two calls every curation stage needs."""

    def __init__(self, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> None:
        if not 0 < min_pixels <= max_pixels:
            raise BackendError(f"min_pixels ({min_pixels}) must be positive and at most max_pixels ({max_pixels})")
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def images(self, item: Item) -> list[Image.Image]:
        return [resize(im, self.min_pixels, self.max_pixels) for im in item.images]

    @abstractmethod
    def score_yes_no(self, items: Sequence[Item]) -> list[YesNo]: ...

    @abstractmethod
    def generate(self, items: Sequence[Item], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 512, seed: int | None = None,
                 seeds: Sequence[int] | None = None) -> list[list[Candidate]]: ...
