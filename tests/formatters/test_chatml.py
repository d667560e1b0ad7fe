"""formatters.chatml against the official Qwen2-VL chat template (SPEC-qwen.md §1)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random  # noqa: E402

import pytest  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from formatters.chatml import QWEN2_VL_CHAT_TEMPLATE, render, render_caption_pretrain  # noqa: E402

# transformers compiles chat templates this way (trim_blocks, lstrip_blocks, loopcontrols).
_ENV = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
)
_TEMPLATE = _ENV.from_string(QWEN2_VL_CHAT_TEMPLATE)

SPEC_EXAMPLE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
    "<|im_start|>assistant\nANSWER<|im_end|>\n"
)

_TEXTS = [
    "Describe this image.",
    "",
    " ",
    "\n",
    "What is 2+2?\n",
    "ünïcode 狗 😀",
    "{{ not jinja }}",
    "a\n\nb",
    "#",
]


def _reference(messages: list, **kwargs: bool) -> str:
    return _TEMPLATE.render(messages=messages, **kwargs)


def _random_part(rng: random.Random) -> dict:
    r = rng.random()
    if r < 0.25:
        return rng.choice(
            [
                {"type": "image"},
                {"type": "image", "image": "file:///a.jpg"},
                {"image": "x.png"},
                {"type": "image_url", "image_url": {"url": "http://x"}},
            ]
        )
    if r < 0.4:
        return rng.choice(
            [{"type": "video"}, {"type": "video", "video": "v.mp4"}, {"video": ["f1.jpg", "f2.jpg"]}]
        )
    if r < 0.45:
        return {"type": "audio"}  # neither image, video nor text: the template emits nothing
    return {"type": "text", "text": rng.choice(_TEXTS)}


def _random_conversation(rng: random.Random) -> list:
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(["You are terse.", "", "Be kind.\n"])})
    for turn in range(rng.randrange(1, 5)):
        for role in ("user", "assistant"):
            if role == "assistant" and turn and rng.random() < 0.1:
                continue
            if rng.random() < 0.3:
                content: object = rng.choice(_TEXTS)
            else:
                content = [_random_part(rng) for _ in range(rng.randrange(0, 5))]
            messages.append({"role": role, "content": content})
    return messages


def test_spec_example() -> None:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
        {"role": "assistant", "content": "ANSWER"},
    ]
    assert render(messages) == SPEC_EXAMPLE
    assert _reference(messages) == SPEC_EXAMPLE


def test_vision_ids_and_generation_prompt() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "video"},
                {"type": "image"},
                {"type": "text", "text": "Q"},
            ],
        },
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q2"}]},
    ]
    out = render(messages, add_generation_prompt=True, add_vision_id=True)
    assert out == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>"
        "Picture 2: <|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\n"
        "Video 2: <|vision_start|><|video_pad|><|vision_end|>Q2<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("add_vision_id", [False, True])
def test_render_equals_official_template(add_generation_prompt: bool, add_vision_id: bool) -> None:
    rng = random.Random(int(add_generation_prompt) * 2 + int(add_vision_id))
    for _ in range(300):
        messages = _random_conversation(rng)
        kwargs = {"add_generation_prompt": add_generation_prompt, "add_vision_id": add_vision_id}
        assert render(messages, **kwargs) == _reference(messages, **kwargs), messages


def test_empty_conversation() -> None:
    assert render([]) == _reference([]) == ""
    assert render([], add_generation_prompt=True) == "<|im_start|>assistant\n"


def test_caption_pretrain_layout() -> None:
    assert (
        render_caption_pretrain("A cat.") == "<|vision_start|><|image_pad|><|vision_end|>A cat.<|endoftext|>"
    )
    assert render_caption_pretrain("x", n_images=2) == (
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>x<|endoftext|>"
    )
    with pytest.raises(ValueError):
        render_caption_pretrain("x", n_images=-1)
