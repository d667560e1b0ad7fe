"""The format stage: one record -> training samples (builder), then image grids, token ids and labels.

An ``expand`` stage (filters/base.py). The recipe's ``format:`` section is its parameters (``FormatSpec``);
``parse_recipe`` appends it after the recipe's stages. Each child holds ``messages``, ``images``, ``meta``
(with ``image_grid_thw``, ``video_grid_thw``, ``second_per_grid_ts``), ``annotations``, ``input_ids``,
``labels`` (lists of ints) and ``n_tokens`` (= len(input_ids)). A sample whose tokenization fails, or that
is longer than ``max_tokens``, becomes a rejected child (``drop_stage`` = the stage, a reason), so every
sample is kept or rejected with a reason; a record that yields no sample is rejected with the builder's
reason.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from filters.base import Stage
from formatters.builders import BUILDERS, BuildConfig, message_text, options_for
from formatters.qwen import image_grid
from formatters.tokens import tokenize_caption, tokenize_chat, tokenize_interleaved
from model.tokenizer import NAME as BUILTIN_TOKENIZER
from model.tokenizer import ensure_built, qwen_tokenizer
from pipeline.spec import FormatSpec
from pipeline.storage import is_remote

MERGE = 2  # spatial merge: tokens = t * (h / 2) * (w / 2) of the 14-px patch grid


def is_builtin(path: str | None) -> bool:
    """Whether ``format.tokenizer`` names the built-in tokenizer: null or ``qwen2.5-vl`` (unless a local
    directory of that name exists, which wins)."""
    return path in (None, "", BUILTIN_TOKENIZER) and not (path and os.path.isdir(path))


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | None) -> Any:
    """The recipe's ``format.tokenizer``, once per process: a local tokenizer / model directory when one
    exists at ``path``, else for null or ``qwen2.5-vl`` the built-in Qwen2.5-VL tokenizer (model.tokenizer),
    else ``AutoTokenizer.from_pretrained(path)``."""
    from transformers import AutoTokenizer

    if is_builtin(path):
        return qwen_tokenizer()
    return AutoTokenizer.from_pretrained(path)


def _tokens(grid: list[int] | tuple[int, ...]) -> int:
    t, h, w = (int(g) for g in grid)
    return t * (h // MERGE) * (w // MERGE)


class Format(Stage):
    """Build, measure and tokenize training samples (``format:`` in the recipe)."""

    kind = "expand"
    Params = FormatSpec
    batch_size = 16

    def __init__(self, params: FormatSpec | None = None, name: str | None = None) -> None:
        if params is None:
            raise ValueError("the format stage needs its parameters (builder, tokenizer ...)")
        super().__init__(params, name or "format")
        self.cfg = BuildConfig(dialect=params.dialect, min_pixels=params.min_pixels,
                               max_pixels=params.max_pixels, pre_resize=params.pre_resize,
                               options=options_for(params.builder, params.options))
        self.builder = BUILDERS[params.builder]
        self.tokenizer: Any = None

    def check(self) -> None:
        path = self.params.tokenizer
        if is_builtin(path):
            ensure_built()  # once, here, before the workers load it
            return
        if is_remote(path):
            return
        if not os.path.isdir(path):
            raise ValueError(f"tokenizer: not found: {path}")

    def setup(self) -> None:
        self.tokenizer = load_tokenizer(self.params.tokenizer)

    def expand(self, row: dict[str, Any]) -> list[dict[str, Any]] | str:
        if self.tokenizer is None:
            self.setup()
        result = self.builder(row, self.cfg)
        if isinstance(result, str):
            return result
        children = []
        for sample in result:
            try:
                children.append(self.finish(sample, row))
            except ValueError as e:
                reason = "too_many_tokens" if isinstance(e, _TooLong) else "tokenize_error"
                meta = {**sample["meta"], "error": f"{type(e).__name__}: {e}"[:500]}
                children.append({"messages": sample["messages"], "images": [], "meta": meta,
                                 "annotations": sample.get("annotations"), "input_ids": None, "labels": None,
                                 "n_tokens": None, "drop_stage": self.name, "drop_reason": reason})
        if all(c.get("drop_stage") for c in children):
            return children[0]["drop_reason"] if children else "no_samples"
        return children

    def finish(self, sample: dict[str, Any], row: dict[str, Any] | None = None) -> dict[str, Any]:
        """Grids, token counts, input_ids and labels of one built sample -> the child's columns."""
        meta = dict(sample["meta"])
        lo, hi = int(meta["min_pixels"]), int(meta["max_pixels"])
        messages = sample["messages"]
        n_videos = sum(1 for m in messages if isinstance(m.get("content"), list)
                       for p in m["content"] if p.get("type") == "video")
        image_grids: list[list[int]] = []
        video_grids: list[list[int]] = []
        seconds: list[float] = []
        if n_videos:
            plan = meta.get("video") or {}
            video_grids = [[int(g) for g in plan["grid_thw"]]]
            second = plan.get("second_per_grid_t")
            if second is None and plan.get("sample_fps"):
                second = 2.0 / float(plan["sample_fps"])
            seconds = [float(second if second is not None else 1.0)]
        else:
            image_grids = [list(image_grid(h, w, lo, hi)) for w, h in meta["image_sizes"]]
        image_tokens = [_tokens(g) for g in image_grids]
        video_tokens = [_tokens(g) for g in video_grids]
        if meta.get("layout") == "interleaved":
            input_ids, labels = tokenize_interleaved(messages, self.tokenizer, image_tokens)
        elif meta.get("layout") == "pretrain":
            caption = "".join(message_text(m) for m in messages)
            input_ids, labels = tokenize_caption(caption, self.tokenizer, image_tokens)
        else:
            input_ids, labels = tokenize_chat(messages, self.tokenizer, image_tokens, video_tokens,
                                              add_vision_id=self.params.add_vision_id)
        n = int(len(input_ids))
        if self.params.max_tokens is not None and n > self.params.max_tokens:
            raise _TooLong(f"{n} tokens > max_tokens {self.params.max_tokens}")
        meta.update(image_grid_thw=image_grids, video_grid_thw=video_grids, second_per_grid_ts=seconds,
                    image_tokens=image_tokens, video_tokens=video_tokens)
        child = {"messages": messages, "images": sample["images"], "meta": meta,
                 "annotations": sample.get("annotations"), "input_ids": input_ids.tolist(),
                 "labels": labels.tolist(), "n_tokens": n}
        if row is not None and ("width" in row or "height" in row) and sample["meta"]["image_sizes"]:
            child["width"], child["height"] = sample["meta"]["image_sizes"][0]
        return child

    def score_columns(self) -> list[str]:
        return ["n_tokens"]


class _TooLong(ValueError):
    pass
