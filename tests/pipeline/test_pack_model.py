"""Acceptance: one pack run through the tiny Qwen2.5-VL gives every member the logits it gets alone.

SPEC-qwen §6: transformers takes packed Qwen2.5-VL input as 4-row position ids (row 0 the text positions
restarting per member, from which it builds the packed mask) when no attention mask and no cache are passed.
The pack is written with pack_tar_bytes and read back through PackDataset, as a trainer would.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from formatters.qwen import FACTOR, PATCH_SIZE, TEMPORAL_PATCH_SIZE, image_grid, image_tokens, smart_resize  # noqa: E402
from formatters.rope import mrope_position_ids  # noqa: E402
from formatters.tokens import tokenize_chat  # noqa: E402
from model.tiny import MAX_PIXELS, MIN_PIXELS, build_tiny_qwen25vl  # noqa: E402
from pipeline.pack_dataset import PackDataset  # noqa: E402
from pipeline.packing import assemble_pack, pack_tar_bytes  # noqa: E402

TOL = 1e-4
# (width, height) of the raw images: odd sizes, pre-resized to their smart_resize size like pre_resize does
SIZES = [(60, 90), (100, 50), (45, 130), (84, 56)]
QUESTIONS = [
    "Describe this image.",
    "What is the man holding?",
    "How many apples are on the plate?",
    "Please output the bounding box of the red car.",
]
ANSWERS = [
    "A photo of a cat sitting on a wooden table.",
    "The answer is 42.",
    "There are three apples.",
    "Two dogs are running across a green field under a clear blue sky.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, Any]:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "qwen25vl")
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return path, processor, model


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def _image_member(
    k: int, tokenizer: Any, rng: np.random.Generator, answer: str | None = None
) -> dict[str, Any]:
    w, h = SIZES[k % len(SIZES)]
    raw = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    rh, rw = smart_resize(h, w, FACTOR, MIN_PIXELS, MAX_PIXELS)
    resized = raw.resize((rw, rh), Image.Resampling.BICUBIC)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[k % 4]}]},
        {"role": "assistant", "content": ANSWERS[k % 4] if answer is None else answer},
    ]
    n = image_tokens(h, w, MIN_PIXELS, MAX_PIXELS)
    input_ids, labels = tokenize_chat(messages, tokenizer, image_tokens=[n], video_tokens=[])
    return {
        "id": f"{k:016x}",
        "input_ids": input_ids.tolist(),
        "labels": labels.tolist(),
        "image_grid_thw": [list(image_grid(h, w, MIN_PIXELS, MAX_PIXELS))],
        "video_grid_thw": [],
        "second_per_grid_ts": [],
        "images": [_png(np.asarray(resized))],
        "is_video": False,
    }


def _video_member(k: int, tokenizer: Any, rng: np.random.Generator) -> dict[str, Any]:
    """4 frames of 84×56 (already multiples of 28): grid (2, 4, 6), 2·2·3 = 12 tokens."""
    h, w, n_frames, second = 56, 84, 4, 1.0
    frames = [_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n_frames)]
    grid = [n_frames // TEMPORAL_PATCH_SIZE, h // PATCH_SIZE, w // PATCH_SIZE]
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": "A person opens a fridge."},
    ]
    n = grid[0] * (h // FACTOR) * (w // FACTOR)
    input_ids, labels = tokenize_chat(messages, tokenizer, image_tokens=[], video_tokens=[n])
    return {
        "id": f"{k:016x}",
        "input_ids": input_ids.tolist(),
        "labels": labels.tolist(),
        "image_grid_thw": [],
        "video_grid_thw": [grid],
        "second_per_grid_ts": [second],
        "images": frames,
        "is_video": True,
    }


def _alone_inputs(member: dict[str, Any], processor: Any, rows: int) -> dict[str, Any]:
    """The member on its own, processed by the processor's defaults (no PackDataset involved)."""
    ids = torch.tensor([member["input_ids"]], dtype=torch.long)
    pos = mrope_position_ids(
        member["input_ids"], member["image_grid_thw"], member["video_grid_thw"], member["second_per_grid_ts"]
    )
    if rows == 4:
        pos = np.concatenate([np.arange(pos.shape[1])[None], pos])
    out: dict[str, Any] = {"input_ids": ids, "position_ids": torch.from_numpy(pos)[:, None, :]}
    media = [Image.open(io.BytesIO(b)).convert("RGB") for b in member["images"]]
    if member["is_video"]:
        got = processor.video_processor(
            videos=[np.stack([np.asarray(m) for m in media])],
            do_sample_frames=False,
            cap_pixels_per_frame=False,
            size={"shortest_edge": 56 * 56, "longest_edge": 56 * 84},
            return_tensors="pt",
        )
        out.update(
            pixel_values_videos=got["pixel_values_videos"],
            video_grid_thw=got["video_grid_thw"],
            second_per_grid_ts=torch.tensor(member["second_per_grid_ts"]),
        )
        assert got["video_grid_thw"].tolist() == member["video_grid_thw"]
    else:
        got = processor.image_processor(images=media, return_tensors="pt")
        assert got["image_grid_thw"].tolist() == member["image_grid_thw"]
        out.update(pixel_values=got["pixel_values"], image_grid_thw=got["image_grid_thw"])
    return out


@torch.no_grad()
def _logits(model: Any, inputs: dict[str, Any], use_cache: bool = False) -> torch.Tensor:
    return model(**inputs, use_cache=use_cache).logits[0]


def _read_one(tmp_path: Path, members: list[dict[str, Any]], processor: Any) -> dict[str, Any]:
    pack = assemble_pack(members)
    shard = tmp_path / "packs" / "pack-00000.tar"
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(pack_tar_bytes([("p00000", pack)]))
    (batch,) = list(torch.utils.data.DataLoader(PackDataset(str(shard.parent), processor), batch_size=None))
    return batch


def _check_members(model: Any, processor: Any, members: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    cu = batch.pop("cu_seqlens").tolist()
    assert cu == np.cumsum([0, *[len(m["input_ids"]) for m in members]]).tolist()
    packed = _logits(model, batch)
    three_rows = _logits(model, {**batch, "position_ids": batch["position_ids"][1:]})
    cached = _logits(model, batch, use_cache=True)
    for i, m in enumerate(members):
        alone = _logits(model, _alone_inputs(m, processor, rows=3))
        alone4 = _logits(model, _alone_inputs(m, processor, rows=4))
        assert (alone - alone4).abs().max().item() <= TOL, "single member: 3-row and 4-row forms agree"
        diff = (packed[cu[i] : cu[i + 1]] - alone).abs().max().item()
        assert diff <= TOL, f"member {i}: packed logits differ from alone by {diff}"
        wrong = (three_rows[cu[i] : cu[i + 1]] - alone).abs().max().item()
        wrong_cache = (cached[cu[i] : cu[i + 1]] - alone).abs().max().item()
        if i == 0:  # the first member sees nothing before it either way
            assert wrong <= TOL and wrong_cache <= TOL
        else:  # with 3 rows (or the cache on) later members attend to earlier ones: isolation is real
            assert wrong > 100 * TOL, f"member {i} matched with 3-row ids ({wrong}): the test proves nothing"
            assert wrong_cache > 100 * TOL, f"member {i} matched with use_cache=True ({wrong_cache})"


def test_packed_image_members_match_alone(tiny: tuple, tmp_path: Path) -> None:
    path, processor, model = tiny
    rng = np.random.default_rng(0)
    members = [_image_member(k, processor.tokenizer, rng) for k in range(4)]
    batch = _read_one(tmp_path, members, path)  # PackDataset loads the processor from the model folder
    n = sum(len(m["input_ids"]) for m in members)
    assert batch["input_ids"].shape == (1, n) and batch["input_ids"].dtype == torch.long
    assert batch["labels"].shape == (1, n) and batch["labels"].dtype == torch.long
    assert batch["position_ids"].shape == (4, 1, n) and batch["position_ids"].dtype == torch.long
    assert batch["image_grid_thw"].tolist() == [g for m in members for g in m["image_grid_thw"]]
    assert "pixel_values_videos" not in batch
    loss = model(**{k: v for k, v in batch.items() if k != "cu_seqlens"}, use_cache=False).loss
    assert torch.isfinite(loss)
    _check_members(model, processor, members, batch)


def test_packed_video_member_matches_alone(tiny: tuple, tmp_path: Path) -> None:
    path, processor, model = tiny
    rng = np.random.default_rng(1)
    members = [
        _image_member(0, processor.tokenizer, rng),
        _video_member(1, processor.tokenizer, rng),
        _image_member(2, processor.tokenizer, rng),
    ]
    batch = _read_one(tmp_path, members, processor)  # a processor object works as well as a path
    assert batch["video_grid_thw"].tolist() == [[2, 4, 6]]
    assert batch["second_per_grid_ts"].tolist() == [1.0]
    _check_members(model, processor, members, batch)


def test_workers_split_shards(tiny: tuple, tmp_path: Path) -> None:
    """Every pack of every shard is read exactly once with 2 DataLoader workers, in shard order per worker."""
    path, processor, _ = tiny
    rng = np.random.default_rng(2)
    folder = tmp_path / "packs"
    folder.mkdir()
    expected = {}
    for s in range(3):
        packs = []
        for p in range(2):
            members = [_image_member(j, processor.tokenizer, rng, f"Pack {s} {p} {j}.") for j in range(2)]
            pack = assemble_pack(members)
            packs.append((f"p{s}{p}", pack))
            expected[tuple(pack["input_ids"].tolist())] = f"p{s}{p}"
        (folder / f"pack-{s:05d}.tar").write_bytes(pack_tar_bytes(packs))
    loader = torch.utils.data.DataLoader(PackDataset(str(folder), path), batch_size=None, num_workers=2)
    got = [expected[tuple(b["input_ids"][0].tolist())] for b in loader]
    assert sorted(got) == sorted(expected.values())
    # worker 0 reads shards 0 and 2, worker 1 shard 1; the loader alternates between workers
    assert got == ["p00", "p10", "p01", "p11", "p20", "p21"]


def test_recorded_grid_mismatch_is_an_error(tiny: tuple, tmp_path: Path) -> None:
    """An image stored at another size than its recorded grid is caught, not silently re-resized."""
    path, processor, _ = tiny
    member = _image_member(0, processor.tokenizer, np.random.default_rng(3))
    member["images"] = [_png(np.zeros((60, 90, 3), dtype=np.uint8))]  # not the smart_resize size
    with pytest.raises(ValueError, match="grids"):
        _read_one(tmp_path, [member], path)


def test_split_by_pack_keeps_the_global_order(tiny: tuple, tmp_path: Path, monkeypatch) -> None:
    """split='pack': rank r keeps packs r, r+W, ... of the whole ordered set; DataLoader workers take turns."""
    path, processor, _ = tiny
    rng = np.random.default_rng(4)
    folder = tmp_path / "packs"
    folder.mkdir()
    order = []
    for s in range(2):
        packs = []
        for p in range(3):
            members = [_image_member(0, processor.tokenizer, rng, f"Pack {s} {p}.")]
            packs.append((f"p{s}{p}", assemble_pack(members)))
            order.append(tuple(packs[-1][1]["input_ids"].tolist()))
        (folder / f"pack-{s:05d}.tar").write_bytes(pack_tar_bytes(packs))
    ds = PackDataset(str(folder), path, split="pack")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert [tuple(b["input_ids"][0].tolist()) for b in loader] == order
    for rank in range(2):
        monkeypatch.setattr(type(ds), "_rank_worker", lambda self, r=rank: (r, 2, 0, 1))
        got = [tuple(p["input_ids"].tolist()) for p in ds._packs_in_order()]
        assert got == order[rank::2]
    with pytest.raises(ValueError, match="cannot shuffle"):
        PackDataset(str(folder), path, shuffle=True, split="pack")
