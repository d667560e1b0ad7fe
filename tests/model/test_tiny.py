"""model.tiny: the offline tiny Qwen2.5-VL loads through the same code path as a real checkpoint."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from formatters.qwen import image_grid, image_tokens  # noqa: E402
from formatters.rope import mrope_position_ids, text_position_row  # noqa: E402
from model.backends import Item  # noqa: E402
from model.tiny import build_tiny_qwen25vl, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "qwen25vl")


@pytest.fixture(scope="module")
def loaded(tiny_dir: str) -> tuple:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    return processor, model


def _prompt(processor: Any, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_config_ids_come_from_tokenizer(loaded: tuple) -> None:
    processor, model = loaded
    tok = processor.tokenizer
    assert model.dtype == torch.float32
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>") == 151656
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>") == 151652
    assert model.config.text_config.vocab_size == 151936 and len(tok) == 151665
    assert model.get_input_embeddings().weight.shape == (151936, 64)
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643


def test_generates_on_cpu(loaded: tuple) -> None:
    processor, model = loaded
    inputs = processor(
        text=[_prompt(processor, "Describe this image.")],
        images=[Image.new("RGB", (64, 48))],
        return_tensors="pt",
    )
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert elapsed < 5.0  # about 0.1-0.5 s on an idle CPU; generous for a loaded test machine


@pytest.mark.parametrize("size", [(64, 48), (224, 224), (300, 57), (500, 420)])
def test_processor_grid_matches_formatters(loaded: tuple, size: tuple[int, int]) -> None:
    processor, _ = loaded
    w, h = size
    inputs = processor(text=[_prompt(processor, "x")], images=[Image.new("RGB", (w, h))], return_tensors="np")
    assert tuple(int(v) for v in inputs["image_grid_thw"][0]) == image_grid(h, w)
    assert int((inputs["input_ids"][0] == 151655).sum()) == image_tokens(h, w)


def _member(processor: Any, text: str, size: tuple[int, int]) -> dict:
    inputs = processor(
        text=[_prompt(processor, text)], images=[Image.new("RGB", size, (90, 140, 30))], return_tensors="pt"
    )
    ids = inputs["input_ids"][0]
    mrope = mrope_position_ids(ids.numpy(), image_grid_thw=inputs["image_grid_thw"].numpy())
    pos4 = np.concatenate([text_position_row(len(ids))[None], mrope])
    return {
        "ids": ids,
        "pixels": inputs["pixel_values"],
        "grid": inputs["image_grid_thw"],
        "pos4": torch.from_numpy(pos4),
    }


def test_packed_forward_with_four_row_position_ids(loaded: tuple) -> None:
    """Two members packed, position ids 4 × L (text row restarting per member, then t/h/w from
    formatters.rope): the second member's logits equal running it alone (SPEC §6)."""
    processor, model = loaded
    a = _member(processor, "Describe this image.", (64, 48))
    b = _member(processor, "What is the colour?", (56, 112))
    with torch.no_grad():
        alone = model(
            input_ids=b["ids"][None],
            pixel_values=b["pixels"],
            image_grid_thw=b["grid"],
            position_ids=b["pos4"][:, None],
            use_cache=False,
        ).logits[0]
        packed_kwargs = {
            "input_ids": torch.cat([a["ids"], b["ids"]])[None],
            "pixel_values": torch.cat([a["pixels"], b["pixels"]]),
            "image_grid_thw": torch.cat([a["grid"], b["grid"]]),
            "use_cache": False,
        }
        pos4 = torch.cat([a["pos4"], b["pos4"]], dim=1)[:, None]
        packed = model(position_ids=pos4, **packed_kwargs).logits[0]
        three_rows = model(position_ids=pos4[1:], **packed_kwargs).logits[0]
    n_a = len(a["ids"])
    assert torch.allclose(packed[n_a:], alone, atol=1e-5)
    assert not torch.allclose(three_rows[n_a:], alone, atol=1e-4)  # 3 rows: b attends to a


def test_builders_overwrite(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    target = tmp_path / "tok"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    assert build_tiny_tokenizer(target) == str(target)
    assert not (target / "stale.txt").exists()
    build_tiny_tokenizer(target)
    tok = AutoTokenizer.from_pretrained(target)
    assert tok.convert_tokens_to_ids("<|video_pad|>") == 151656


def test_make_tiny_model_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`vlcurate make-tiny-model DIR` writes a normal model directory that the backends load."""
    from jobs.cli import main
    from model.backends import load_backend

    assert main(["make-tiny-model", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == f"vlcurate: wrote {tmp_path / 'm'}"
    backend = load_backend("transformers", str(tmp_path / "m"), device="cpu")
    assert len(backend.tokenizer) == 151665 and backend.model.config.text_config.vocab_size == 151936
    (score,) = backend.score_yes_no([Item(images=[Image.new("RGB", (56, 56))], prompt="A cat? Answer yes or no.")])
    assert 0 < score.p_yes < 1
