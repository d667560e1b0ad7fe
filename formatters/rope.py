"""M-RoPE position ids of one Qwen2-VL / Qwen2.5-VL sequence (SPEC-qwen.md §5).

Follows the official qwen-vl-finetune ``rope2d.py`` (get_rope_index_25 / get_rope_index_2), not
transformers (which casts second_per_grid_t to an integer in 4.5x and rewrote the scheme in 5.x).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VERSIONS = ("qwen2-vl", "qwen2.5-vl")


def text_position_row(length: int) -> np.ndarray:
    """Plain text positions 0 … length−1 (int64): the first of the 4 packed rows (SPEC §5, §6)."""
    return np.arange(length, dtype=np.int64)


def _grids(grids: Sequence[Sequence[int]] | np.ndarray | None) -> list[tuple[int, int, int]]:
    if grids is None:
        return []
    return [(int(g[0]), int(g[1]), int(g[2])) for g in np.asarray(grids, dtype=np.int64).reshape(-1, 3)]


def mrope_position_ids(
    input_ids: Sequence[int] | np.ndarray,
    image_grid_thw: Sequence[Sequence[int]] | np.ndarray | None = None,
    video_grid_thw: Sequence[Sequence[int]] | np.ndarray | None = None,
    second_per_grid_ts: Sequence[float] | np.ndarray | None = None,
    *,
    version: str = "qwen2.5-vl",
    spatial_merge_size: int = 2,
    tokens_per_second: int = 2,
    vision_start_token_id: int = 151652,
    image_token_id: int = 151655,
    video_token_id: int = 151656,
) -> np.ndarray:
    """M-RoPE (t, h, w) position ids, int64 of shape (3, L), of one sequence with expanded pads (SPEC §5).

    Vision blocks are ``<|vision_start|>`` followed by a run of image or video pad tokens whose length
    must match the next grid of that kind ((T·H·W) / merge²). Text before a block (including
    ``<|vision_start|>``) continues from one past the previous maximum on all rows; a block gets
    t = floor(i_t · second_per_grid_t · tokens_per_second) for qwen2.5-vl (0 for images; second_per_grid_t
    defaults to 1.0 per video as in the official code; computed in float32 as the official torch code does,
    never cast to int first) or t = i_t for qwen2-vl, h = i_h, w = i_w, all offset by the block's start.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown M-RoPE version {version!r}; expected one of {', '.join(VERSIONS)}")
    ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    length = len(ids)
    images, videos = _grids(image_grid_thw), _grids(video_grid_thw)
    seconds = [1.0] * len(videos) if second_per_grid_ts is None else [float(s) for s in second_per_grid_ts]
    if len(seconds) < len(videos):
        raise ValueError(f"{len(videos)} video grids but {len(seconds)} second_per_grid_ts")

    starts = np.flatnonzero(ids[:-1] == vision_start_token_id)
    blocks = [int(s) + 1 for s in starts if ids[s + 1] in (image_token_id, video_token_id)]
    n_images = sum(ids[b] == image_token_id for b in blocks)
    if n_images != len(images) or len(blocks) - n_images != len(videos):
        raise ValueError(
            f"sequence has {n_images} image and {len(blocks) - n_images} video blocks, "
            f"but {len(images)} image and {len(videos)} video grids were given"
        )

    pieces: list[np.ndarray] = []
    next_pos = 0  # one past the maximum position so far
    st = 0  # first token not yet placed
    i_image = i_video = 0
    for ed in blocks:
        token = ids[ed]
        if token == image_token_id:
            (t, h, w), second = images[i_image], 0.0
            i_image += 1
        else:
            (t, h, w), second = videos[i_video], seconds[i_video]
            i_video += 1
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        n = t * gh * gw
        if ed + n > length or not np.all(ids[ed : ed + n] == token):
            raise ValueError(f"vision block at token {ed} does not hold {n} pad tokens for grid {(t, h, w)}")
        text_len = ed - st
        pieces.append(np.broadcast_to(np.arange(text_len, dtype=np.int64) + next_pos, (3, text_len)))
        if version == "qwen2.5-vl":
            steps = np.arange(t, dtype=np.float32) * np.float32(second) * np.float32(tokens_per_second)
            t_index = steps.astype(np.int64)
        else:
            t_index = np.arange(t, dtype=np.int64)
        block = np.stack(
            [
                np.repeat(t_index, gh * gw),
                np.tile(np.repeat(np.arange(gh, dtype=np.int64), gw), t),
                np.tile(np.arange(gw, dtype=np.int64), t * gh),
            ]
        ) + (next_pos + text_len)
        pieces.append(block)
        next_pos = int(block.max()) + 1 if n else next_pos + text_len
        st = ed + n
    if st < length:
        pieces.append(np.broadcast_to(np.arange(length - st, dtype=np.int64) + next_pos, (3, length - st)))
    if not pieces:
        return np.zeros((3, 0), dtype=np.int64)
    return np.ascontiguousarray(np.concatenate(pieces, axis=1))
