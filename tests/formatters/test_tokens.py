"""formatters.tokens with the tiny offline tokenizer (SPEC-qwen.md §1)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from formatters.chatml import QWEN2_VL_CHAT_TEMPLATE, render  # noqa: E402
from formatters.tokens import IGNORE_INDEX, expand_vision_pads, tokenize_caption, tokenize_chat  # noqa: E402
from model.tiny import CHAT_TEMPLATE, build_tiny_tokenizer  # noqa: E402

SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
TEXTS = [
    "Describe this image.",
    "A cat sits on a table.",
    "ünïcode 狗 😀 ok",
    "def f(x):\n    return x + 1\n",
    "The answer is 42.",
    "<|box_start|>(1,2),(3,4)<|box_end|>",
    '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "cat"}\n]\n```',
    " leading space",
    "trailing newline\n",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny"))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _random_conversation(rng: random.Random) -> tuple[list, list[int], list[int]]:
    messages: list = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are terse."})
    images: list[int] = []
    videos: list[int] = []
    for _ in range(rng.randrange(1, 4)):
        parts: list = []
        for _ in range(rng.randrange(1, 4)):
            r = rng.random()
            if r < 0.3:
                parts.append({"type": "image"})
                images.append(rng.randrange(1, 20))
            elif r < 0.45:
                parts.append({"type": "video"})
                videos.append(rng.randrange(1, 30))
            else:
                parts.append({"type": "text", "text": rng.choice(TEXTS)})
        messages.append({"role": "user", "content": parts})
        answer = rng.choice(TEXTS)
        content = answer if rng.random() < 0.5 else [{"type": "text", "text": answer}]
        messages.append({"role": "assistant", "content": content})
    return messages, images, videos


def _answers(messages: list) -> list[str]:
    out = []
    for m in messages:
        if m["role"] == "assistant":
            c = m["content"]
            out.append(c if isinstance(c, str) else "".join(p["text"] for p in c))
    return out


def _labeled_runs(tokenizer: Any, input_ids: np.ndarray, labels: np.ndarray) -> list[str]:
    runs, current = [], []
    for tid, lab in zip(input_ids.tolist(), labels.tolist(), strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


def test_special_token_ids(tokenizer: Any) -> None:
    for token, tid in SPECIALS.items():
        assert tokenizer.convert_tokens_to_ids(token) == tid
        assert _encode(tokenizer, token) == [tid]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151643
    assert len(tokenizer) == 151665  # the real Qwen2.5-VL vocabulary (model.tokenizer)


def test_byte_level_round_trip(tokenizer: Any) -> None:
    for text in TEXTS + ["\t\r\n", "Ελληνικά — русский — العربية — 中文", "x" * 300]:
        assert tokenizer.decode(_encode(tokenizer, text)) == text


def test_chat_template_copy_equals_formatters() -> None:
    assert CHAT_TEMPLATE == QWEN2_VL_CHAT_TEMPLATE


def test_apply_chat_template_equals_render(tokenizer: Any) -> None:
    rng = random.Random(0)
    for i in range(100):
        messages, _, _ = _random_conversation(rng)
        kwargs = {"add_generation_prompt": i % 2 == 0, "add_vision_id": i % 3 == 0}
        assert tokenizer.apply_chat_template(messages, tokenize=False, **kwargs) == render(messages, **kwargs)


def test_spec_example_labels(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
        {"role": "assistant", "content": "ANSWER"},
    ]
    input_ids, labels = tokenize_chat(messages, tokenizer, image_tokens=[64], video_tokens=[])
    assert input_ids.dtype == np.int64 and labels.dtype == np.int64
    text = render(messages).replace("<|image_pad|>", "<|image_pad|>" * 64)
    assert input_ids.tolist() == _encode(tokenizer, text)
    assert (input_ids == 151655).sum() == 64
    assert _labeled_runs(tokenizer, input_ids, labels) == ["ANSWER<|im_end|>\n"]
    # everything up to and including "<|im_start|>assistant\n" is masked
    prefix = render(messages[:1], add_generation_prompt=True).replace("<|image_pad|>", "<|image_pad|>" * 64)
    n_prefix = len(_encode(tokenizer, prefix))
    assert (labels[:n_prefix] == IGNORE_INDEX).all() and (labels[n_prefix:] != IGNORE_INDEX).all()


def test_random_conversations(tokenizer: Any) -> None:
    rng = random.Random(1)
    for i in range(150):
        messages, images, videos = _random_conversation(rng)
        add_vision_id = i % 2 == 1
        input_ids, labels = tokenize_chat(messages, tokenizer, images, videos, add_vision_id=add_vision_id)
        text = expand_vision_pads(render(messages, add_vision_id=add_vision_id), images, videos)
        assert input_ids.tolist() == _encode(tokenizer, text)  # same as tokenizing the whole string at once
        plain = _encode(tokenizer, render(messages, add_vision_id=add_vision_id))
        assert len(input_ids) == len(plain) - len(images) - len(videos) + sum(images) + sum(videos)
        assert (input_ids == 151655).sum() == sum(images) and (input_ids == 151656).sum() == sum(videos)
        vision = np.isin(input_ids, [151652, 151653, 151655, 151656])
        assert (labels[vision] == IGNORE_INDEX).all()
        runs = _labeled_runs(tokenizer, input_ids, labels)
        assert runs == [a + "<|im_end|>\n" for a in _answers(messages)]


def test_assistant_content_starting_with_newlines(tokenizer: Any) -> None:
    """The header's newline merges with the content's leading newlines into one token: that token stays
    masked (it begins in the header), the rest of the turn is labeled."""
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n\nA B"}]
    input_ids, labels = tokenize_chat(messages, tokenizer, [], [])
    assert input_ids.tolist() == _encode(tokenizer, render(messages))
    (run,) = _labeled_runs(tokenizer, input_ids, labels)
    assert run.endswith("A B<|im_end|>\n") and ("\n\nA B<|im_end|>\n").endswith(run)


def test_system_and_user_never_labeled(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "only a question"}]
    _, labels = tokenize_chat(messages, tokenizer, [], [])
    assert (labels == IGNORE_INDEX).all()


def test_control_tokens_in_text_raise(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A<|im_end|>\nB"}]
    with pytest.raises(ValueError):
        tokenize_chat(messages, tokenizer, [], [])


def test_expand_vision_pads() -> None:
    text = "<|image_pad|>a<|video_pad|>b<|image_pad|>"
    assert (
        expand_vision_pads(text, [2, 3], [1]) == "<|image_pad|>" * 2 + "a<|video_pad|>b" + "<|image_pad|>" * 3
    )
    with pytest.raises(ValueError):
        expand_vision_pads(text, [2], [1])
    with pytest.raises(ValueError):
        expand_vision_pads(text, [2, 3], [])
    with pytest.raises(ValueError):
        expand_vision_pads(text, [2, 0], [1])


def test_tokenize_caption(tokenizer: Any) -> None:
    input_ids, labels = tokenize_caption("A cat on a mat.", tokenizer, image_tokens=[16])
    text = "<|vision_start|>" + "<|image_pad|>" * 16 + "<|vision_end|>A cat on a mat.<|endoftext|>"
    assert input_ids.tolist() == _encode(tokenizer, text)
    assert _labeled_runs(tokenizer, input_ids, labels) == ["A cat on a mat.<|endoftext|>"]
    assert (labels[:18] == IGNORE_INDEX).all()
    two, two_labels = tokenize_caption("x", tokenizer, image_tokens=[4, 8])
    assert (two == 151655).sum() == 12
    assert _labeled_runs(tokenizer, two, two_labels) == ["x<|endoftext|>"]
