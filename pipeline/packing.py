"""Packing samples into fixed-length training sequences (SPEC-qwen §6).

Rule (SPEC-qwen §6): samples are packed *whole* (never split) into sequences of at most ``max_len``
tokens; each member keeps its own position ids and the pack records ``cu_seqlens`` so attention never
crosses members. The first functions decide *which* samples go together and in which order packs are consumed;
:func:`assemble_pack` builds one pack's tensors from its members and :func:`pack_tar_bytes` writes packs
as a deterministic webdataset tar (DESIGN "Output layout": ``packs/``).

Everything here works on sample lengths (token counts) and sample indices, with numpy only:

- :func:`pack_lengths` — best-fit decreasing (BFD) over the whole list, O(n log n), deterministic;
- :func:`pack_stream` — the same algorithm over a bounded window of an iterator, for datasets larger than
  memory; under-filled bins are dissolved and their members carried into the next window;
- :func:`balance_packs` — orders packs so that the packs consumed by one optimizer step (one per rank)
  cost about the same attention work (cost = sum of squared member lengths, :func:`pack_cost`);
- :func:`fill_stats` — fill rate, the lower bound on the number of packs, and per-pack fill quantiles;
- :func:`assemble_pack` — one pack's input_ids / labels / 4-row position ids / cu_seqlens / media;
- :func:`pack_tar_bytes` — packs as a byte-identical webdataset tar (read by pipeline.pack_dataset).

Lengths above ``max_len`` or not positive are an error here: the caller rejects such samples beforehand
with reason ``too_long`` (DESIGN: a bad record is data, not an exception).
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from formatters.qwen import TEMPORAL_PATCH_SIZE
from formatters.rope import mrope_position_ids, text_position_row
from pipeline.tar import image_extension, tar_bytes

__all__ = [
    "pack_lengths",
    "pack_stream",
    "pack_cost",
    "balance_packs",
    "fill_stats",
    "assemble_pack",
    "pack_tar_bytes",
]

# bits per word of the two-level bitmap used to find the best-fitting open bin
_WBITS = 64
_WSHIFT = 6
_WMASK = _WBITS - 1


def _as_lengths(lengths: Sequence[int] | np.ndarray, max_len: int) -> np.ndarray:
    """Validate ``lengths`` against ``max_len`` (SPEC-qwen §6: whole samples of at most max_len tokens).

    Returns an int64 array. Raises ValueError for a length > max_len or <= 0, or a non-integer length.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len <= 0:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.floor(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr <= 0) | (arr > max_len))
    if bad.size:
        i = int(bad[0])
        why = "not positive" if arr[i] <= 0 else f"longer than max_len={max_len} (reject as too_long first)"
        raise ValueError(f"length {int(arr[i])} at index {i} is {why}; {bad.size} such length(s) in all")
    return arr


def _bfd_sorted(sorted_lengths: list[int], max_len: int) -> tuple[list[int], int]:
    """Best-fit decreasing on lengths already sorted in non-increasing order.

    Each item goes into the open bin with the *smallest* remaining capacity that still holds it, or opens a
    new bin when none does (best fit). Open bins are kept in per-capacity stacks; a two-level bitmap over
    capacities 0..max_len (64-bit words plus one summary integer over the words) finds the smallest
    non-empty capacity >= length in O(1) word operations, so the pass is O(n) after the O(n log n) sort.
    Among bins of equal remaining capacity the most recently touched one is used (LIFO): deterministic,
    and it depends only on the sequence of lengths, not on which sample index carries which length.

    Returns (bin id for each position of ``sorted_lengths``, number of bins).
    """
    n = len(sorted_lengths)
    if n == 0:
        return [], 0
    min_len = sorted_lengths[-1]  # no later item is smaller: a bin with less room than this is closed
    nwords = (max_len >> _WSHIFT) + 1
    words = [0] * nwords  # bit c & 63 of words[c >> 6]: some open bin has remaining capacity c
    summary = 0  # bit w: words[w] != 0
    stacks: list[list[int]] = [[] for _ in range(max_len + 1)]
    assign = [0] * n
    nbins = 0
    for i, length in enumerate(sorted_lengths):
        # smallest capacity c >= length with an open bin
        w = length >> _WSHIFT
        m = words[w] >> (length & _WMASK)
        if m:
            c = length + (m & -m).bit_length() - 1
        else:
            m = summary >> (w + 1)
            if m:
                w = w + (m & -m).bit_length()
                m = words[w]
                c = (w << _WSHIFT) + (m & -m).bit_length() - 1
            else:
                c = -1
        if c < 0:
            b = nbins
            nbins += 1
            rest = max_len - length
        else:
            stack = stacks[c]
            b = stack.pop()
            if not stack:
                w = c >> _WSHIFT
                m = words[w] & ~(1 << (c & _WMASK))
                words[w] = m
                if not m:
                    summary &= ~(1 << w)
            rest = c - length
        assign[i] = b
        if rest >= min_len:
            stack = stacks[rest]
            if not stack:
                w = rest >> _WSHIFT
                words[w] |= 1 << (rest & _WMASK)
                summary |= 1 << w
            stack.append(b)
    return assign, nbins


def _group(n: int, bin_of: list[int], nbins: int, ids: list[int] | None = None) -> list[list[int]]:
    """Turn a bin id per item (in index order) into packs ordered by their first member.

    Members inside a pack are in ascending index order; packs are ordered by their smallest member index,
    so the output is deterministic and independent of bin numbering. ``ids`` maps positions to the
    caller's sample indices (identity when None).
    """
    slot = [-1] * nbins
    packs: list[list[int]] = []
    for i in range(n):
        b = bin_of[i]
        s = slot[b]
        member = i if ids is None else ids[i]
        if s < 0:
            slot[b] = len(packs)
            packs.append([member])
        else:
            packs[s].append(member)
    return packs


def _pack_array(arr: np.ndarray, max_len: int) -> tuple[list[int], int]:
    """BFD over a validated int64 array: returns (bin id per index, number of bins)."""
    n = int(arr.size)
    if n == 0:
        return [], 0
    # non-increasing length, ties by ascending index (stable sort of the negated lengths)
    order = np.argsort(-arr, kind="stable")
    assign, nbins = _bfd_sorted(arr[order].tolist(), max_len)
    bin_of = np.empty(n, dtype=np.int64)
    bin_of[order] = np.asarray(assign, dtype=np.int64)
    return bin_of.tolist(), nbins


def pack_lengths(lengths: Sequence[int] | np.ndarray, max_len: int) -> list[list[int]]:
    """Pack sample indices into bins of total length <= ``max_len`` (SPEC-qwen §6: whole samples only).

    Algorithm: best-fit decreasing — samples sorted by length, longest first (ties by index), each put
    into the open pack with the least room that still holds it. O(n log n) (the sort; the placement pass
    is O(n)). Deterministic: the same lengths give the same packs, and permuting samples of equal length
    gives the same packs up to which index carries which length.

    Returns a list of packs, each a list of sample indices in ascending order; packs are ordered by their
    first member. Every index appears exactly once. Raises ValueError if a length is > max_len or <= 0
    (the caller drops those beforehand as ``too_long``).
    """
    arr = _as_lengths(lengths, max_len)
    bin_of, nbins = _pack_array(arr, max_len)
    return _group(int(arr.size), bin_of, nbins)


def _to_int(value: Any, what: str) -> int:
    """An integer from an int, a numpy integer, or an integral float; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float | np.floating):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{what} must be an integer, got {value!r}")
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _parse_item(item: Any, running: int) -> tuple[int, int]:
    """A stream element is ``(index, length)`` or a plain length (index = its position in the stream)."""
    if isinstance(item, tuple | list | np.ndarray):
        if len(item) != 2:
            raise ValueError(f"stream element {item!r} is neither a length nor an (index, length) pair")
        return _to_int(item[0], "sample index"), _to_int(item[1], "length")
    return running, _to_int(item, "length")


def pack_stream(
    lengths_iter: Iterable[Any],
    max_len: int,
    window: int = 100_000,
    min_fill: float = 0.99,
    max_carry: int | None = None,
) -> Iterator[list[int]]:
    """Pack a stream of samples too large for memory, window by window (SPEC-qwen §6 rule, as
    :func:`pack_lengths`).

    Elements of ``lengths_iter`` are ``(index, length)`` pairs or plain lengths (then the index is the
    element's position in the stream). Samples are buffered until ``window`` new ones are pending; the
    buffer plus the members carried from the previous window are packed with best-fit decreasing. Packs
    filled to at least ``min_fill`` are emitted (ordered by first member index); the members of the
    under-filled ones are carried into the next window, where they are repacked with the new samples.
    The carry is bounded by ``max_carry`` members (default ``window // 4``): beyond it the fullest
    under-filled packs are emitted anyway. At the end of the stream everything left is emitted.
    Memory stays O(window + max_carry).

    Yields packs as lists of sample indices (ascending). Every sample is emitted exactly once. Raises
    ValueError for a length > max_len or <= 0, and for a non-positive window.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be within [0, 1], got {min_fill}")
    _as_lengths([], max_len)  # validates max_len
    carry_cap = window // 4 if max_carry is None else max_carry
    if carry_cap < 0:
        raise ValueError(f"max_carry must be >= 0, got {max_carry}")

    carry_ids: list[int] = []
    carry_lens: list[int] = []
    new_ids: list[int] = []
    new_lens: list[int] = []
    running = 0
    for item in lengths_iter:
        idx, length = _parse_item(item, running)
        running += 1
        if length <= 0 or length > max_len:
            why = (
                "not positive" if length <= 0 else f"longer than max_len={max_len} (reject as too_long first)"
            )
            raise ValueError(f"length {length} of sample {idx} is {why}")
        new_ids.append(idx)
        new_lens.append(length)
        if len(new_ids) >= window:
            ids = carry_ids + new_ids
            lens = carry_lens + new_lens
            new_ids, new_lens = [], []
            emit, carry_ids, carry_lens = _pack_window(ids, lens, max_len, min_fill, carry_cap)
            yield from emit
    ids = carry_ids + new_ids
    lens = carry_lens + new_lens
    if ids:
        emit, _, _ = _pack_window(ids, lens, max_len, 0.0, 0)
        yield from emit


def _pack_window(
    ids: list[int], lens: list[int], max_len: int, min_fill: float, carry_cap: int
) -> tuple[list[list[int]], list[int], list[int]]:
    """Pack one window; return (packs to emit, carried ids, carried lengths).

    Packs with load < min_fill * max_len are carried (their members re-enter the next window), the
    emptiest first, up to ``carry_cap`` members in all.
    """
    arr = np.asarray(lens, dtype=np.int64)
    bin_list, nbins = _pack_array(arr, max_len)
    bins = np.asarray(bin_list, dtype=np.int64)
    carry = np.zeros(len(ids), dtype=bool)
    if carry_cap > 0 and min_fill > 0.0:
        loads = np.bincount(bins, weights=arr, minlength=nbins)
        sizes = np.bincount(bins, minlength=nbins)
        under = np.flatnonzero(loads < min_fill * max_len)
        under = under[np.lexsort((under, loads[under]))]  # emptiest first: they gain most from a repack
        under = under[np.cumsum(sizes[under]) <= carry_cap]
        carry = np.isin(bins, under)
    id_arr = np.asarray(ids, dtype=np.int64)
    keep = np.flatnonzero(~carry)
    keep = keep[np.argsort(id_arr[keep], kind="stable")]  # packs list ascending ids, ordered by first id
    emit = _group(int(keep.size), bins[keep].tolist(), nbins, id_arr[keep].tolist())
    moved = np.flatnonzero(carry)
    return emit, id_arr[moved].tolist(), arr[moved].tolist()


def _pack_sums(packs: Sequence[Sequence[int]], values: np.ndarray) -> np.ndarray:
    """Sum of ``values[m]`` over the members m of each pack, as int64 (exact: sums stay below 2**53)."""
    sizes = np.fromiter((len(p) for p in packs), dtype=np.int64, count=len(packs))
    if sizes.sum() == 0:
        return np.zeros(len(packs), dtype=np.int64)
    members = np.fromiter((m for p in packs for m in p), dtype=np.int64, count=int(sizes.sum()))
    owner = np.repeat(np.arange(len(packs), dtype=np.int64), sizes)
    sums = np.bincount(owner, weights=values[members].astype(np.float64), minlength=len(packs))
    return np.rint(sums).astype(np.int64)


def pack_cost(members: Sequence[int], lengths: Sequence[int] | np.ndarray) -> int:
    """Attention cost of one pack: the sum of squared member lengths.

    With variable-length attention (SPEC-qwen §6: cu_seqlens, no attention across members) a member of
    length L costs O(L^2), so a pack's cost is sum(L_i^2), not (sum L_i)^2.
    """
    return int(sum(int(lengths[m]) ** 2 for m in members))


def balance_packs(
    packs: Sequence[Sequence[int]],
    lengths: Sequence[int] | np.ndarray,
    packs_per_step: int,
    seed: int | None = 0,
) -> tuple[list[int], float]:
    """Order packs so that each optimizer step's packs cost about the same (SPEC-qwen §6 packs, cost =
    :func:`pack_cost`).

    ``packs_per_step`` packs are consumed per global step, one per rank; the slowest rank sets the pace, so
    the packs of a step should cost the same. Packs are sorted by cost (ties by pack position) and cut into
    consecutive groups of ``packs_per_step``: each group holds packs of near-equal cost. The order of the
    full groups is then shuffled with ``seed`` (a fixed seed keeps it deterministic; ``seed=None`` keeps the
    sorted order) so training does not see all cheap packs first and all video-heavy packs last. When the
    number of packs is not a multiple of ``packs_per_step`` the remainder (the most expensive packs) forms
    the last, short group, so every earlier group stays aligned with a step.

    Returns (order: a permutation of range(len(packs)), worst ratio over groups of max cost / mean cost).
    """
    if packs_per_step <= 0:
        raise ValueError(f"packs_per_step must be positive, got {packs_per_step}")
    n = len(packs)
    if n == 0:
        return [], 1.0
    lens = np.asarray(lengths, dtype=np.int64)
    costs = _pack_sums(packs, lens * lens)
    by_cost = np.argsort(costs, kind="stable")
    n_full = n // packs_per_step
    groups = by_cost[: n_full * packs_per_step].reshape(n_full, packs_per_step)
    if seed is not None and n_full > 1:
        groups = groups[np.random.default_rng(seed).permutation(n_full)]
    order = groups.reshape(-1).tolist() + by_cost[n_full * packs_per_step :].tolist()
    return order, _worst_ratio(costs[np.asarray(order, dtype=np.int64)], packs_per_step)


def _worst_ratio(costs_in_order: np.ndarray, packs_per_step: int) -> float:
    """Worst over consecutive groups of ``packs_per_step`` (the last may be short) of max cost / mean cost.

    A group whose costs are all zero counts as 1.0.
    """
    c = costs_in_order.astype(np.float64)
    k = len(c) // packs_per_step * packs_per_step
    groups = [c[:k].reshape(-1, packs_per_step)] if k else []
    if k < len(c):
        groups.append(c[k:].reshape(1, -1))
    worst = 1.0
    for g in groups:
        mx, mean = g.max(axis=1), g.mean(axis=1)
        ok = mean > 0
        if ok.any():
            worst = max(worst, float((mx[ok] / mean[ok]).max()))
    return worst


def fill_stats(
    packs: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray, max_len: int
) -> dict[str, Any]:
    """Fill statistics of a packing (SPEC-qwen §6: packs of at most max_len tokens).

    fill = tokens / (n_packs * max_len); lower_bound_packs = ceil(tokens / max_len) is the fewest packs any
    packing could use; p0/p5/p50/p95/p100 are quantiles of the per-pack fill (load / max_len).
    """
    loads = _pack_sums(packs, np.asarray(lengths, dtype=np.int64))
    tokens = int(loads.sum())
    n_packs = len(packs)
    stats: dict[str, Any] = {
        "n_packs": n_packs,
        "tokens": tokens,
        "max_len": max_len,
        "fill": tokens / (n_packs * max_len) if n_packs else 0.0,
        "lower_bound_packs": math.ceil(tokens / max_len),
    }
    per_pack = loads / max_len
    for q in (0, 5, 50, 95, 100):
        stats[f"p{q}"] = float(np.percentile(per_pack, q)) if n_packs else 0.0
    return stats


# ---------------------------------------------------------------------------------------------------------
# Building and writing packs (SPEC-qwen §5, §6; DESIGN "Output layout": packs/)

_MEMBER_KEYS = (
    "id",
    "input_ids",
    "labels",
    "image_grid_thw",
    "video_grid_thw",
    "second_per_grid_ts",
    "images",
    "is_video",
)
# a webdataset key: no dot (webdataset splits the extension at the first one) and no slash
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _grid_list(grids: Any, what: str, member: str) -> list[list[int]]:
    out = []
    for g in grids if grids is not None else []:
        g = [_to_int(v, f"{what} of member {member}") for v in g]
        if len(g) != 3 or min(g) <= 0:
            raise ValueError(f"{what} of member {member} must be [t, h, w] of positive integers, got {g}")
        out.append(g)
    return out


def _media_names(
    index: int, member: dict[str, Any], images: list[list[int]], videos: list[list[int]]
) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of one member's media: ``m{index}.{k}.{ext}``, extension from the bytes' magic."""

    data = list(member.get("images") or [])
    mid = member["id"]
    if member.get("is_video"):
        if images:
            raise ValueError(f"member {mid} is a video member but has image grids {images}")
        if not videos:
            raise ValueError(f"member {mid} is a video member without a video grid")
        frames = TEMPORAL_PATCH_SIZE * sum(t for t, _, _ in videos)
        if len(data) != frames:
            raise ValueError(
                f"video member {mid} has {len(data)} frames but its grids {videos} need {frames} "
                f"({TEMPORAL_PATCH_SIZE} per temporal patch)"
            )
    elif len(data) != len(images):
        raise ValueError(f"member {mid} has {len(data)} images but {len(images)} image grids")
    out = []
    for k, blob in enumerate(data):
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise ValueError(f"image {k} of member {mid} is {type(blob).__name__}, not encoded bytes")
        blob = bytes(blob)
        out.append((f"m{index}.{k}.{image_extension(blob)}", blob))
    return out


def assemble_pack(
    members: list[dict],
    *,
    version: str = "qwen2.5-vl",
    vision_start_token_id: int = 151652,
    image_token_id: int = 151655,
    video_token_id: int = 151656,
    spatial_merge_size: int = 2,
    tokens_per_second: int = 2,
) -> dict:
    """One training sequence from whole samples (SPEC-qwen §6), members in the order given.

    Each member is a dict with ``id`` (str), ``input_ids`` and ``labels`` (lists of int, equal lengths, pads
    already expanded), ``image_grid_thw`` / ``video_grid_thw`` (lists of [t, h, w] in 14-px patches),
    ``second_per_grid_ts`` (one float per video), ``images`` (encoded bytes: the member's images in order,
    or for a video member its sampled frames, 2·t per video (temporal patch 2), videos in order) and ``is_video`` (bool).

    Returns a dict:

    - ``input_ids``, ``labels``: int64 (L,), the members' concatenated;
    - ``position_ids``: int64 (4, L); row 0 the text positions 0 … len_i−1 of each member (transformers
      builds the packed attention mask from it), rows 1–3 each member's own M-RoPE t/h/w computed as if it
      were alone (:func:`formatters.rope.mrope_position_ids`, SPEC-qwen §5);
    - ``cu_seqlens``: int32 (n+1,) = cumsum([0, len_1, …, len_n]);
    - ``json``: {"members": [ids], "lengths", "image_grid_thw" / "video_grid_thw" /
      "second_per_grid_ts" (one list per member), "is_video" (one bool per member), "media" (one list of
      file suffixes per member), "n_tokens": L};
    - ``media``: [(suffix, bytes)], suffix ``m{member}.{k}.{ext}`` (ext from the bytes' magic: jpg, png,
      webp, gif, bin).

    Raises ValueError for an empty pack, a member missing a key, unequal input_ids/labels lengths, an
    empty member, media not matching the grids, or vision pads not matching the grids.
    """

    if not members:
        raise ValueError("a pack needs at least one member")
    ids_parts, label_parts, pos_parts, lengths, media = [], [], [], [], []
    doc: dict[str, Any] = {
        "members": [],
        "lengths": [],
        "image_grid_thw": [],
        "video_grid_thw": [],
        "second_per_grid_ts": [],
        "is_video": [],
        "media": [],
        "n_tokens": 0,
    }
    for index, member in enumerate(members):
        missing = [k for k in _MEMBER_KEYS if k not in member]
        if missing:
            raise ValueError(f"pack member {index} lacks {', '.join(missing)}")
        mid = str(member["id"])
        input_ids = np.asarray(member["input_ids"], dtype=np.int64).reshape(-1)
        labels = np.asarray(member["labels"], dtype=np.int64).reshape(-1)
        if input_ids.size == 0:
            raise ValueError(f"member {mid} has no tokens")
        if labels.shape != input_ids.shape:
            raise ValueError(f"member {mid} has {input_ids.size} input_ids but {labels.size} labels")
        images = _grid_list(member["image_grid_thw"], "image_grid_thw", mid)
        videos = _grid_list(member["video_grid_thw"], "video_grid_thw", mid)
        seconds = [float(s) for s in (member["second_per_grid_ts"] or [])]
        if len(seconds) != len(videos):
            raise ValueError(
                f"member {mid} has {len(videos)} video grids but {len(seconds)} second_per_grid_ts"
            )
        try:
            rope = mrope_position_ids(
                input_ids,
                images,
                videos,
                seconds,
                version=version,
                spatial_merge_size=spatial_merge_size,
                tokens_per_second=tokens_per_second,
                vision_start_token_id=vision_start_token_id,
                image_token_id=image_token_id,
                video_token_id=video_token_id,
            )
        except ValueError as e:
            raise ValueError(f"member {mid}: {e}") from None
        files = _media_names(index, member, images, videos)
        ids_parts.append(input_ids)
        label_parts.append(labels)
        pos_parts.append(np.concatenate([text_position_row(input_ids.size)[None, :], rope], axis=0))
        lengths.append(int(input_ids.size))
        media.extend(files)
        doc["members"].append(mid)
        doc["image_grid_thw"].append(images)
        doc["video_grid_thw"].append(videos)
        doc["second_per_grid_ts"].append(seconds)
        doc["is_video"].append(bool(member["is_video"]))
        doc["media"].append([name for name, _ in files])
    doc["lengths"] = lengths
    doc["n_tokens"] = int(sum(lengths))
    return {
        "input_ids": np.concatenate(ids_parts),
        "labels": np.concatenate(label_parts),
        "position_ids": np.ascontiguousarray(np.concatenate(pos_parts, axis=1), dtype=np.int64),
        "cu_seqlens": np.cumsum([0, *lengths]).astype(np.int32),
        "json": doc,
        "media": media,
    }


def _npy_bytes(arr: np.ndarray, dtype: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.dtype(dtype)), allow_pickle=False)
    return buf.getvalue()


def pack_tar_bytes(packs: list[tuple[str, dict]]) -> bytes:
    """A webdataset tar of packs (DESIGN "Output layout": packs/), byte-identical for the same input.

    ``packs`` is [(key, pack)] with ``pack`` as :func:`assemble_pack` returns it; packs are written in the
    order given (the order a trainer reads them: keep :func:`balance_packs`' order). Per pack:
    ``KEY.json`` (the pack's ``json``, sorted keys, UTF-8), ``KEY.input_ids.npy``, ``KEY.labels.npy``
    (int64 (L,)), ``KEY.position_ids.npy`` (int64 (4, L)), ``KEY.cu_seqlens.npy`` (int32 (n+1,)),
    then ``KEY.m{i}.{k}.{ext}`` per medium. Fixed tar metadata (mtime 0, no owner, mode 0444); the tar
    writer orders a pack's entries by name. Raises ValueError for a key with a dot or slash (webdataset
    splits names at the first dot), a repeated key, or a pack whose arrays disagree in length.
    """

    seen: set[str] = set()
    samples = []
    for key, pack in packs:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"pack key {key!r} must be letters, digits, '_' or '-' (no dot or slash)")
        if key in seen:
            raise ValueError(f"pack key {key!r} appears twice")
        seen.add(key)
        n = int(np.asarray(pack["input_ids"]).size)
        pos = np.asarray(pack["position_ids"])
        cu = np.asarray(pack["cu_seqlens"])
        if np.asarray(pack["labels"]).size != n or pos.shape != (4, n) or cu.size < 2 or int(cu[-1]) != n:
            raise ValueError(
                f"pack {key}: input_ids ({n}), labels ({np.asarray(pack['labels']).size}), position_ids "
                f"{pos.shape} and cu_seqlens (ends at {int(cu[-1]) if cu.size else None}) disagree"
            )
        sample: dict[str, Any] = {
            "json": json.dumps(pack["json"], sort_keys=True, ensure_ascii=False).encode("utf-8"),
            "input_ids.npy": _npy_bytes(pack["input_ids"], "<i8"),
            "labels.npy": _npy_bytes(pack["labels"], "<i8"),
            "position_ids.npy": _npy_bytes(pos, "<i8"),
            "cu_seqlens.npy": _npy_bytes(cu, "<i4"),
        }
        for suffix, data in pack["media"]:
            if suffix in sample:
                raise ValueError(f"pack {key}: media name {suffix!r} repeated or reserved")
            sample[suffix] = bytes(data)
        samples.append((key, sample))
    return tar_bytes(samples)
