"""formatters.rope against SPEC-qwen.md §5 (the official qwen-vl-finetune rope2d.py logic)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from formatters.qwen import video_plan  # noqa: E402
from formatters.rope import mrope_position_ids, text_position_row  # noqa: E402

VS, VE, IMG, VID = 151652, 151653, 151655, 151656
T = 7  # any text token


def _image_seq() -> list[int]:
    return [T, T, VS] + [IMG] * 4 + [VE, T]


def _video_seq() -> list[int]:
    return [T, T, VS] + [VID] * 12 + [VE, T]


def test_spec_image_example() -> None:
    pos = mrope_position_ids(_image_seq(), image_grid_thw=[(1, 4, 4)])
    assert pos.dtype == np.int64 and pos.shape == (3, 9)
    assert pos[0].tolist() == [0, 1, 2, 3, 3, 3, 3, 5, 6]
    assert pos[1].tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 6]
    assert pos[2].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6]


def test_spec_video_examples() -> None:
    pos = mrope_position_ids(_video_seq(), video_grid_thw=[(3, 4, 4)], second_per_grid_ts=[1.0])
    assert pos[0].tolist() == [0, 1, 2, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 8, 9]
    assert pos[1].tolist() == [0, 1, 2] + [3, 3, 4, 4] * 3 + [8, 9]
    assert pos[2].tolist() == [0, 1, 2] + [3, 4, 3, 4] * 3 + [8, 9]
    half = mrope_position_ids(_video_seq(), video_grid_thw=[(3, 4, 4)], second_per_grid_ts=[0.5])
    assert half[0].tolist()[3:15] == [3] * 4 + [4] * 4 + [5] * 4  # offsets 0, 1, 2 (not 0, 0, 0 as int-cast)
    assert half[0].tolist()[15:] == [6, 7]
    # default second_per_grid_t is 1.0, as in the official code
    assert mrope_position_ids(_video_seq(), video_grid_thw=[(3, 4, 4)]).tolist() == pos.tolist()


def test_qwen2_vl_uses_temporal_index() -> None:
    pos = mrope_position_ids(
        _video_seq(), video_grid_thw=[(3, 4, 4)], second_per_grid_ts=[4.0], version="qwen2-vl"
    )
    assert pos[0].tolist() == [0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 7]


def test_text_only_and_empty() -> None:
    assert mrope_position_ids([T] * 5).tolist() == [list(range(5))] * 3
    assert mrope_position_ids([]).shape == (3, 0)
    assert text_position_row(4).tolist() == [0, 1, 2, 3]
    assert text_position_row(4).dtype == np.int64


def test_custom_token_ids() -> None:
    seq = [1, 1, 10] + [11] * 4 + [12, 1]
    pos = mrope_position_ids(
        seq, image_grid_thw=[(1, 4, 4)], vision_start_token_id=10, image_token_id=11, video_token_id=13
    )
    assert pos.tolist() == mrope_position_ids(_image_seq(), image_grid_thw=[(1, 4, 4)]).tolist()


def test_malformed_input_raises() -> None:
    with pytest.raises(ValueError):
        mrope_position_ids(_image_seq())  # no grid for the image
    with pytest.raises(ValueError):
        mrope_position_ids(_image_seq(), image_grid_thw=[(1, 4, 6)])  # 6 pads expected, 4 present
    with pytest.raises(ValueError):
        mrope_position_ids(_image_seq(), image_grid_thw=[(1, 4, 4)], version="qwen3-vl")


def _reference(ids: list[int], images: list, videos: list, seconds: list, version: str) -> list[list[int]]:
    """SPEC §5 token by token: text continues one past the maximum; a block's cells in t→h→w order."""
    rows: list[list[int]] = [[], [], []]
    nxt, i, i_img, i_vid = 0, 0, 0, 0
    while i < len(ids):
        if ids[i] in (IMG, VID) and i > 0 and ids[i - 1] == VS:
            if ids[i] == IMG:
                (t, h, w), s = images[i_img], 0.0
                i_img += 1
            else:
                (t, h, w), s = videos[i_vid], seconds[i_vid]
                i_vid += 1
            base = nxt
            for it in range(t):
                # the official torch code multiplies in float32: (i_t * second_per_grid_t) * 2
                tt = it if version == "qwen2-vl" else int(np.float32(it) * np.float32(s) * np.float32(2))
                for ih in range(h // 2):
                    for iw in range(w // 2):
                        for row, v in zip(rows, (base + tt, base + ih, base + iw), strict=True):
                            row.append(v)
            nxt = max(max(r) for r in rows) + 1
            i += t * (h // 2) * (w // 2)
        else:
            for row in rows:
                row.append(nxt)
            nxt += 1
            i += 1
    return rows


def _realistic_seconds(rng: random.Random) -> float:
    total = rng.randrange(8, 6000)
    fps = rng.choice([23.976, 24.0, 25.0, 29.97, 30.0, 60.0])
    return (
        video_plan(total, fps, 360, 640).second_per_grid_t
        if rng.random() < 0.7
        else rng.choice([0.5, 1.0, 2.5])
    )


@pytest.mark.parametrize("version", ["qwen2-vl", "qwen2.5-vl"])
def test_random_sequences_match_reference(version: str) -> None:
    rng = random.Random(11)
    for _ in range(300):
        ids: list[int] = []
        images, videos, seconds = [], [], []
        for _ in range(rng.randrange(0, 6)):
            ids += [rng.randrange(0, 1000) for _ in range(rng.randrange(0, 6))]
            if rng.random() < 0.5:
                grid = (1, 2 * rng.randrange(1, 6), 2 * rng.randrange(1, 6))
                images.append(grid)
                token = IMG
            else:
                grid = (rng.randrange(1, 8), 2 * rng.randrange(1, 5), 2 * rng.randrange(1, 5))
                videos.append(grid)
                seconds.append(_realistic_seconds(rng))
                token = VID
            ids += [VS] + [token] * (grid[0] * grid[1] * grid[2] // 4) + [VE]
        ids += [rng.randrange(0, 1000) for _ in range(rng.randrange(0, 4))]
        pos = mrope_position_ids(ids, images or None, videos or None, seconds or None, version=version)
        assert pos.shape == (3, len(ids))
        assert pos.tolist() == _reference(ids, images, videos, seconds, version)


def test_time_row_is_the_official_float32_product() -> None:
    """t = (arange(T) * second_per_grid_t * 2).long() as rope2d.py computes it in torch (float32); e.g.
    240 frames of 4420 at 24 fps: exact 72·s·2 = 221, which float64 would floor to 220."""
    plan = video_plan(4420, 24.0, 360, 640, max_frames=240)
    assert len(plan.frame_indices) == 240
    t = plan.grid_thw[0]
    seq = [VS] + [VID] * plan.n_tokens + [VE]
    pos = mrope_position_ids(seq, video_grid_thw=[plan.grid_thw], second_per_grid_ts=[plan.second_per_grid_t])
    cells = plan.n_tokens // t
    got = pos[0, 1 : 1 + plan.n_tokens : cells] - 1
    want = (torch.arange(t) * plan.second_per_grid_t * 2).long()
    assert got.tolist() == want.tolist()
    assert got[72] == 221 and int(np.floor(72 * plan.second_per_grid_t * 2)) == 220
    rng = random.Random(5)
    for _ in range(300):
        s = _realistic_seconds(rng)
        n = rng.randrange(1, 200)
        seq = [VS] + [VID] * n + [VE]
        row = mrope_position_ids(seq, video_grid_thw=[(n, 2, 2)], second_per_grid_ts=[s])[0, 1 : 1 + n] - 1
        assert row.tolist() == (torch.arange(n) * s * 2).long().tolist()
