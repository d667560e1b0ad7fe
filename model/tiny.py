"""Tiny offline Qwen2.5-VL checkpoints for tests and smoke runs (DESIGN.md "Models").

Both use the real Qwen2.5-VL tokenizer (model.tokenizer: 151,665 tokens, added tokens at 151643–151664),
so every test exercises real token ids. ``build_tiny_tokenizer`` saves that tokenizer into a directory;
``build_tiny_qwen25vl`` saves a randomly initialised Qwen2.5-VL with it and a processor, loadable with
``from_pretrained`` (``vlcurate make-tiny-model DIR``). The weights mean nothing: only the code path a real
checkpoint takes is exercised.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from model.tokenizer import ADDED_TOKENS, CHAT_TEMPLATE, EMBEDDING_ROWS, qwen_tokenizer

__all__ = ["CHAT_TEMPLATE", "MAX_PIXELS", "MIN_PIXELS", "build_tiny_qwen25vl", "build_tiny_tokenizer"]

# Image geometry of the shipped Qwen2.5-VL preprocessor (patch 14, merge 2, temporal patch 2).
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28


def _fresh_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def build_tiny_tokenizer(out_dir: str | Path) -> str:
    """Save the Qwen2.5-VL tokenizer into ``out_dir``; returns the directory (overwritten if present).

    Loadable offline with ``transformers.AutoTokenizer.from_pretrained(out_dir)``; added tokens at
    151643–151664 (``<|endoftext|>`` pad, ``<|im_end|>`` eos), the Qwen2-VL chat template set.
    """
    out = _fresh_dir(out_dir)
    qwen_tokenizer().save_pretrained(out)
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

    Text model: the real vocabulary (151,665 tokens; an embedding of 151,936 rows as the released configs
    have), hidden 64, 2 layers, 4 heads / 2 kv heads (head_dim 16, mrope_section [2, 3, 3]),
    intermediate 128, tied embeddings; vision: depth 2, hidden 32, out_hidden 64, patch 14, merge 2.
    Token ids come from the tokenizer. ``AutoProcessor`` and ``from_pretrained`` load it offline.
    Deterministic (``torch.manual_seed(0)``); the directory is overwritten.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = _fresh_dir(out_dir)
    tokenizer = qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": EMBEDDING_ROWS,
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
