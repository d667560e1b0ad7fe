"""Tiny offline Qwen2.5-VL checkpoints for tests and smoke runs (DESIGN.md "Models").

``build_tiny_tokenizer`` trains a small byte-level BPE whose Qwen special tokens sit at their real ids
(151643–151656, the vocabulary padded with filler tokens up to them); ``build_tiny_qwen25vl`` saves a
randomly initialised Qwen2.5-VL with that tokenizer and a processor, loadable with ``from_pretrained``.
The weights mean nothing: only the code path a real checkpoint takes is exercised.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# Qwen2 tokenizer family special tokens at their real ids (SPEC-qwen.md §1); the only table of them.
FIRST_SPECIAL_ID = 151643
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
VOCAB_SIZE = FIRST_SPECIAL_ID + len(SPECIAL_TOKENS)  # 151657

# The Qwen2-VL / Qwen2.5-VL chat template; model/ imports nothing of ours, so this is a copy of
# formatters.chatml.QWEN2_VL_CHAT_TEMPLATE (a test checks that they are equal).
CHAT_TEMPLATE = (
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

# Image geometry of the shipped Qwen2.5-VL preprocessor (patch 14, merge 2, temporal patch 2).
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28

_CORPUS = """\
A photo of a cat sitting on a wooden table next to a cup of coffee.
Two dogs are running across a green field under a clear blue sky.
The image shows a city street at night with cars, buses and bright shop signs.
Describe this image. What is the man holding in his left hand?
Please output the bounding box of the red car in JSON format.
The answer is 42. Let's think step by step: 6 times 7 equals 42.
Question: How many apples are on the plate? Answer: There are three apples.
A woman in a yellow jacket rides a bicycle past a row of old brick houses.
The chart shows sales growing from 1,200 units in 2019 to 3,450 units in 2024.
Text in the image reads "OPEN 24 HOURS" above the door of a small store.
def add(a: int, b: int) -> int:
    return a + b

for i in range(10):
    print(f"value {i}: {i * i}")
{"bbox_2d": [135, 114, 1016, 672], "label": "person"}
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Video: a person opens a fridge, takes out a bottle of milk and pours a glass.
You are a helpful assistant. The user asks; the assistant answers clearly and briefly.
Snow covers the mountains; a lake reflects the trees and the evening light.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 -7 +8 50% $20 #1 @home
"""


def _train_bpe(vocab_size: int = 1000) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens (in id order) and merges of a byte-level BPE with Qwen2's normalizer and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer=trainer)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    return tokens, [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in merges]


def _tokenizer() -> Any:
    """The tiny Qwen2Tokenizer, special tokens at 151643–151656, chat template set."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tokens, merges = _train_bpe()
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    for i, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != FIRST_SPECIAL_ID + i:
            raise RuntimeError(f"tiny tokenizer put {token} at {got}, not {FIRST_SPECIAL_ID + i}")
    return tokenizer


def _fresh_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def build_tiny_tokenizer(out_dir: str | Path) -> str:
    """Train and save the tiny Qwen2-style tokenizer; returns the directory (overwritten if present).

    Loadable offline with ``transformers.AutoTokenizer.from_pretrained(out_dir)``; special tokens at
    151643–151656 (``<|endoftext|>`` pad, ``<|im_end|>`` eos), the Qwen2-VL chat template set.
    """
    out = _fresh_dir(out_dir)
    _tokenizer().save_pretrained(out)
    return str(out)


def _processor(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen25vl(out_dir: str | Path) -> str:
    """Save a tiny random float32 Qwen2.5-VL with tokenizer and processor; returns the directory.

    Text model: hidden 64, 2 layers, 4 heads / 2 kv heads (head_dim 16, mrope_section [2, 3, 3]),
    intermediate 128, tied embeddings; vision: depth 2, hidden 32, out_hidden 64, patch 14, merge 2.
    Token ids come from the tokenizer. ``AutoProcessor`` and ``from_pretrained`` load it offline.
    Deterministic (``torch.manual_seed(0)``); the directory is overwritten.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = _fresh_dir(out_dir)
    tokenizer = _tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": pad,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, ids["<|endoftext|>"]], pad_token_id=pad, do_sample=False
    )
    model.save_pretrained(out)
    _processor(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
