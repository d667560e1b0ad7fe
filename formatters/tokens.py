"""Tokenization and training labels of Qwen2-VL / Qwen2.5-VL samples (SPEC-qwen.md §1).

Every special id is read from the tokenizer given (``convert_tokens_to_ids``); none is hard-coded here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from formatters.chatml import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    IMAGE_BLOCK,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    part_kind,
    render,
    render_caption_pretrain,
    turns,
)

IGNORE_INDEX = -100
_PAD_RE = re.compile(re.escape(IMAGE_PAD) + "|" + re.escape(VIDEO_PAD))


def expand_vision_pads(text: str, image_tokens: Sequence[int], video_tokens: Sequence[int]) -> str:
    """Replace the i-th ``<|image_pad|>`` by image_tokens[i] pads, and likewise for videos (SPEC §1).

    Raises ValueError when the counts do not match the pads in the text or a count is not positive.
    """
    counts = {IMAGE_PAD: list(image_tokens), VIDEO_PAD: list(video_tokens)}
    found = {IMAGE_PAD: text.count(IMAGE_PAD), VIDEO_PAD: text.count(VIDEO_PAD)}
    for pad, want in counts.items():
        if found[pad] != len(want):
            raise ValueError(f"text has {found[pad]} {pad} but {len(want)} token counts were given")
        if any(int(n) <= 0 for n in want):
            raise ValueError(f"{pad} token counts must be positive, got {want}")
    iters = {pad: iter(want) for pad, want in counts.items()}
    return _PAD_RE.sub(lambda m: m.group(0) * int(next(iters[m.group(0)])), text)


def _token_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None) and token != tokenizer.unk_token:
        raise ValueError(f"tokenizer has no {token} token")
    return int(tid)


def _encode(tokenizer: Any, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def _mask_vision(input_ids: np.ndarray, labels: np.ndarray, tokenizer: Any) -> None:
    for token in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD):
        labels[input_ids == _token_id(tokenizer, token)] = IGNORE_INDEX


def _header_length(tokenizer: Any, ids: np.ndarray, header: str) -> int:
    """Number of tokens, from the start of ``ids``, that cover the text ``header``.

    A token straddling the end of the header (its newline merged with leading whitespace of the content)
    counts as header, so it stays masked.
    """
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(
            ids[:k].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if len(text) >= len(header):
            return k
    return len(ids)


def tokenize_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    image_tokens: Sequence[int],
    video_tokens: Sequence[int],
    add_vision_id: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and labels (int64) of a conversation for training (SPEC §1).

    Renders with chatml.render, expands the vision pads, tokenizes the whole string at once without
    special tokens added. Labels are −100 except each assistant turn's content, its ``<|im_end|>`` and the
    ``\\n`` after it; vision tokens are always −100. Raises ValueError when message text itself contains
    ``<|im_start|>`` / ``<|im_end|>`` (the turns could not be told apart).
    """
    rendered = turns(messages)
    text = expand_vision_pads(render(messages, add_vision_id=add_vision_id), image_tokens, video_tokens)
    input_ids = _encode(tokenizer, text)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    im_start, im_end = _token_id(tokenizer, IM_START), _token_id(tokenizer, IM_END)
    starts = np.flatnonzero(input_ids == im_start)
    ends = np.flatnonzero(input_ids == im_end)
    if len(starts) != len(rendered) or len(ends) != len(rendered) or np.any(starts >= ends):
        raise ValueError(
            f"{len(rendered)} turns but {len(starts)} {IM_START} and {len(ends)} {IM_END} tokens: "
            "message text must not contain ChatML control tokens"
        )
    newline = _encode(tokenizer, "\n")
    for message, start, end in zip(rendered, starts, ends, strict=True):
        if message["role"] != "assistant":
            continue
        header = _header_length(tokenizer, input_ids[start + 1 : end], "assistant\n")
        stop = end + 1 + len(newline)
        if not np.array_equal(input_ids[end + 1 : stop], newline):
            raise ValueError(f"expected a newline after {IM_END} at token {end}")
        labels[start + 1 + header : stop] = input_ids[start + 1 + header : stop]
    _mask_vision(input_ids, labels, tokenizer)
    return input_ids, labels


def tokenize_caption(
    caption: str, tokenizer: Any, image_tokens: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and labels of a stage-1 caption sample (SPEC §1): labels on the caption and
    ``<|endoftext|>`` only.
    """
    text = expand_vision_pads(render_caption_pretrain(caption, n_images=len(image_tokens)), image_tokens, [])
    input_ids = _encode(tokenizer, text)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    if input_ids[-1] != _token_id(tokenizer, ENDOFTEXT):
        raise ValueError(f"caption sample does not end with {ENDOFTEXT}")
    vision_ends = np.flatnonzero(input_ids == _token_id(tokenizer, VISION_END))
    first = int(vision_ends[-1]) + 1 if len(vision_ends) else 0
    labels[first:] = input_ids[first:]
    _mask_vision(input_ids, labels, tokenizer)
    return input_ids, labels


def tokenize_interleaved(
    messages: Sequence[Mapping[str, Any]], tokenizer: Any, image_tokens: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and labels of an interleaved image–text document in the pretraining layout: the parts of its
    turns in order (text as is, one vision block per image), then ``<|endoftext|>``; labels on every text token
    and ``<|endoftext|>``, vision tokens −100."""
    body = "".join(IMAGE_BLOCK if part_kind(p) == "image" else str(p.get("text", ""))
                   for m in messages for p in m["content"])
    input_ids = _encode(tokenizer, expand_vision_pads(body + ENDOFTEXT, image_tokens, []))
    labels = input_ids.copy()
    _mask_vision(input_ids, labels, tokenizer)
    return input_ids, labels
