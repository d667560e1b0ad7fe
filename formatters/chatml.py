"""ChatML rendering of Qwen2-VL / Qwen2.5-VL conversations (SPEC-qwen.md §1).

``render`` reproduces the official chat template (``QWEN2_VL_CHAT_TEMPLATE``) in plain Python, so the
pipeline needs neither jinja2 nor a tokenizer to lay out a sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The chat template shipped with Qwen2-VL and Qwen2.5-VL (as in transformers' Qwen2-VL processor tests).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_SYSTEM = "You are a helpful assistant."
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
IMAGE_BLOCK = VISION_START + IMAGE_PAD + VISION_END
VIDEO_BLOCK = VISION_START + VIDEO_PAD + VISION_END


def part_kind(part: Mapping[str, Any]) -> str | None:
    """Kind of one content part as the official template decides it (SPEC §1): image, video, text, None."""
    kind = part.get("type")
    if kind == "image" or "image" in part or "image_url" in part:
        return "image"
    if kind == "video" or "video" in part:
        return "video"
    if "text" in part:
        return "text"
    return None


def turns(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The turns as rendered: the default system turn first when the first is not ``system`` (SPEC §1)."""
    msgs = list(messages)
    if msgs and msgs[0].get("role") != "system":
        msgs.insert(0, {"role": "system", "content": DEFAULT_SYSTEM})
    return msgs


def render(
    messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, add_vision_id: bool = False
) -> str:
    """Render a Hugging Face style conversation in Qwen2-VL ChatML as the official template does (SPEC §1).

    ``content`` is a string or a list of parts: image parts (``type == "image"`` or an ``image`` /
    ``image_url`` key) emit ``<|vision_start|><|image_pad|><|vision_end|>``, video parts (``type == "video"``
    or a ``video`` key) the video block, text parts their text; other parts emit nothing.
    """
    out = []
    n_images = n_videos = 0
    for message in turns(messages):
        out.append(f"{IM_START}{message['role']}\n")
        content = message["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            for part in content:
                kind = part_kind(part)
                if kind == "image":
                    n_images += 1
                    out.append((f"Picture {n_images}: " if add_vision_id else "") + IMAGE_BLOCK)
                elif kind == "video":
                    n_videos += 1
                    out.append((f"Video {n_videos}: " if add_vision_id else "") + VIDEO_BLOCK)
                elif kind == "text":
                    out.append(str(part["text"]))
        out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def render_caption_pretrain(caption: str, n_images: int = 1) -> str:
    """Stage-1 caption layout: the vision block(s), the caption, ``<|endoftext|>`` (SPEC §1)."""
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    return IMAGE_BLOCK * n_images + caption + ENDOFTEXT
