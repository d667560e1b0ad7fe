"""Tests of pipeline.packing (SPEC-qwen §6: whole samples, packs of at most max_len tokens)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.packing import balance_packs, fill_stats, pack_cost, pack_lengths, pack_stream

# max_len values around the 64-bit word boundaries of the capacity bitmap, plus small odd ones
MAX_LENS = st.sampled_from([1, 2, 7, 63, 64, 65, 127, 128, 129, 200, 1000])


@st.composite
def instances(draw, max_size: int = 60) -> tuple[list[int], int]:
    max_len = draw(MAX_LENS)
    lengths = draw(st.lists(st.integers(1, max_len), max_size=max_size))
    return lengths, max_len


def assert_valid(
    packs: list[list[int]], lengths: list[int], max_len: int, ids: list[int] | None = None
) -> None:
    """Every sample exactly once, no pack empty or over max_len."""
    ids = list(range(len(lengths))) if ids is None else ids
    flat = [m for p in packs for m in p]
    assert sorted(flat) == sorted(ids)
    len_of = dict(zip(ids, lengths, strict=True))
    for p in packs:
        assert p, "empty pack"
        assert sum(len_of[m] for m in p) <= max_len


def naive_bfd_loads(lengths: list[int], max_len: int) -> list[int]:
    """Textbook best-fit decreasing in O(n * bins): the sorted pack loads it produces.

    Ties between bins of equal remaining capacity do not change the loads, so ours must give the same loads.
    """
    rem: list[int] = []
    for length in sorted(lengths, reverse=True):
        fits = [b for b, r in enumerate(rem) if r >= length]
        if fits:
            b = min(fits, key=lambda b: rem[b])
            rem[b] -= length
        else:
            rem.append(max_len - length)
    return sorted(max_len - r for r in rem)


def next_fit_count(lengths: list[int], max_len: int) -> int:
    n, load = 0, max_len + 1
    for length in lengths:
        if load + length > max_len:
            n, load = n + 1, 0
        load += length
    return n


def as_length_multiset(packs: list[list[int]], lengths: list[int]) -> Counter:
    return Counter(tuple(sorted(lengths[m] for m in p)) for p in packs)


def costs_of(packs: list[list[int]], lengths: list[int]) -> list[int]:
    return [sum(lengths[m] ** 2 for m in p) for p in packs]


# ---------------------------------------------------------------- pack_lengths


@given(instances())
def test_every_index_once_and_no_pack_over_max_len(inst):
    lengths, max_len = inst
    packs = pack_lengths(lengths, max_len)
    assert_valid(packs, lengths, max_len)
    assert all(p == sorted(p) for p in packs)
    assert [p[0] for p in packs] == sorted(p[0] for p in packs)  # ordered by first member


@given(instances())
def test_matches_textbook_best_fit_decreasing(inst):
    lengths, max_len = inst
    packs = pack_lengths(lengths, max_len)
    assert sorted(sum(lengths[m] for m in p) for p in packs) == naive_bfd_loads(lengths, max_len)


@given(instances())
def test_at_most_one_pack_half_full_or_less(inst):
    # any-fit property: a second pack <= max_len/2 would only open if its first sample did not fit the first
    lengths, max_len = inst
    loads = [sum(lengths[m] for m in p) for p in pack_lengths(lengths, max_len)]
    assert sum(2 * load <= max_len for load in loads) <= 1


@given(instances(), st.randoms(use_true_random=False))
def test_deterministic_and_permutation_invariant(inst, rnd):
    lengths, max_len = inst
    packs = pack_lengths(lengths, max_len)
    assert pack_lengths(list(lengths), max_len) == packs
    assert pack_lengths(np.asarray(lengths, dtype=np.int32), max_len) == packs
    # any permutation of the samples gives the same packs up to which index carries which length
    perm = list(range(len(lengths)))
    rnd.shuffle(perm)
    permuted = [lengths[i] for i in perm]
    assert as_length_multiset(pack_lengths(permuted, max_len), permuted) == as_length_multiset(packs, lengths)


@given(instances(), st.randoms(use_true_random=False))
def test_permuting_equal_lengths_keeps_the_packs_of_lengths(inst, rnd):
    lengths, max_len = inst
    # swap indices only among samples of the same length: the length at each position is unchanged,
    # so the packs must be identical
    by_len: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_len.setdefault(length, []).append(i)
    perm = list(range(len(lengths)))
    for group in by_len.values():
        shuffled = group[:]
        rnd.shuffle(shuffled)
        for src, dst in zip(group, shuffled, strict=True):
            perm[src] = dst
    permuted = [lengths[perm[i]] for i in range(len(lengths))]
    assert permuted == lengths
    assert pack_lengths(permuted, max_len) == pack_lengths(lengths, max_len)


def test_best_fit_beats_or_equals_next_fit_on_random_inputs():
    rng = random.Random(1234)
    for trial in range(300):
        max_len = rng.choice([64, 100, 1000, 8192])
        n = rng.randint(1, 400)
        hi = rng.choice([max_len, max_len // 2, max_len // 5 + 1])
        lengths = [rng.randint(1, hi) for _ in range(n)]
        bfd = len(pack_lengths(lengths, max_len))
        assert bfd <= next_fit_count(lengths, max_len), (trial, max_len, lengths)
        assert bfd >= math.ceil(sum(lengths) / max_len)


def test_best_fit_is_not_a_theorem_over_next_fit():
    # documented counterexample: FFD/BFD open a 4th bin where next-fit in this order packs perfectly
    lengths = [4, 3, 3, 4, 3, 3, 4, 3, 3]
    assert next_fit_count(lengths, 10) == 3
    assert len(pack_lengths(lengths, 10)) == 4


def test_small_example_and_edge_cases():
    assert pack_lengths([], 10) == []
    assert pack_lengths([10], 10) == [[0]]
    assert pack_lengths([6, 4, 5, 5], 10) == [[0, 1], [2, 3]]
    assert pack_lengths([3.0, 7.0], 10) == [[0, 1]]  # integral floats are accepted
    # best fit: the 3 goes into the pack with 3 left (after the 7), not the one with 4 left (after the 6)
    assert pack_lengths([7, 6, 3], 10) == [[0, 2], [1]]


@pytest.mark.parametrize(
    "lengths, max_len",
    [([5, 11], 10), ([0, 3], 10), ([-1], 10), ([1.5], 10), ([[1, 2]], 10), ([1], 0), ([1], -5), ([1], 2.5)],
)
def test_errors(lengths, max_len):
    with pytest.raises(ValueError):
        pack_lengths(lengths, max_len)


def test_error_names_the_sample():
    with pytest.raises(ValueError, match=r"length 11 at index 1 .*too_long"):
        pack_lengths([5, 11, 3], 10)


# ---------------------------------------------------------------- pack_stream


@given(
    instances(max_size=80),
    st.integers(1, 25),
    st.sampled_from([0.0, 0.5, 0.99, 1.0]),
    st.integers(0, 30),
    st.booleans(),
)
@settings(max_examples=150)
def test_stream_covers_every_index_once_and_bounds_memory(inst, window, min_fill, max_carry, pairs):
    lengths, max_len = inst
    ids = [1000 + 7 * i for i in range(len(lengths))] if pairs else list(range(len(lengths)))
    consumed = 0

    def source():
        nonlocal consumed
        for i, length in zip(ids, lengths, strict=True):
            consumed += 1
            yield (i, length) if pairs else length

    packs = []
    for p in pack_stream(source(), max_len, window=window, min_fill=min_fill, max_carry=max_carry):
        packs.append(p)
        pending = consumed - sum(len(q) for q in packs)
        assert pending <= window + max_carry  # bounded window + bounded carry
    assert_valid(packs, lengths, max_len, ids)
    again = list(pack_stream(iter(zip(ids, lengths, strict=True)), max_len, window, min_fill, max_carry))
    assert again == packs  # deterministic; pairs and plain lengths agree


@given(instances())
def test_stream_with_one_window_equals_whole_packing(inst):
    lengths, max_len = inst
    assert list(pack_stream(iter(lengths), max_len, window=len(lengths) + 1)) == pack_lengths(
        lengths, max_len
    )


def test_stream_carries_under_filled_packs_forward():
    # window 1 (one 6): the half-full pack is carried and completed by the next window's 4
    assert list(pack_stream([6, 4, 6, 4], 10, window=1, min_fill=0.99, max_carry=5)) == [[0, 1], [2, 3]]
    # without carry each window's pack is emitted as it is
    assert list(pack_stream([6, 4, 6, 4], 10, window=1, max_carry=0)) == [[0], [1], [2], [3]]


def test_stream_fill_close_to_whole_packing():
    rng = np.random.default_rng(0)
    lengths = np.clip(np.rint(rng.lognormal(np.log(600), 0.9, 20_000)), 16, 4096).astype(int)
    whole = fill_stats(pack_lengths(lengths, 4096), lengths, 4096)["fill"]
    stream = fill_stats(list(pack_stream(iter(lengths.tolist()), 4096, window=2000)), lengths, 4096)["fill"]
    assert stream >= whole - 0.005


@pytest.mark.parametrize("items", [[5, 11], [(0, 5), (1, 0)], [3, (1, 2, 3)], [1.5], ["x"]])
def test_stream_errors(items):
    with pytest.raises(ValueError):
        list(pack_stream(iter(items), 10, window=1))


def test_stream_argument_errors():
    with pytest.raises(ValueError):
        list(pack_stream(iter([1]), 10, window=0))
    with pytest.raises(ValueError):
        list(pack_stream(iter([1]), 0))
    with pytest.raises(ValueError):
        list(pack_stream(iter([1]), 10, min_fill=1.5))


# ---------------------------------------------------------------- balance_packs, pack_cost


def independent_ratio(order: list[int], costs: list[int], packs_per_step: int) -> float:
    worst = 1.0
    for start in range(0, len(order), packs_per_step):
        group = [costs[k] for k in order[start : start + packs_per_step]]
        mean = sum(group) / len(group)
        if mean > 0:
            worst = max(worst, max(group) / mean)
    return worst


@given(instances(max_size=120), st.integers(1, 9), st.one_of(st.none(), st.integers(0, 3)))
def test_balance_is_a_permutation_with_the_reported_ratio(inst, packs_per_step, seed):
    lengths, max_len = inst
    packs = pack_lengths(lengths, max_len)
    order, ratio = balance_packs(packs, lengths, packs_per_step, seed=seed)
    assert sorted(order) == list(range(len(packs)))
    costs = costs_of(packs, lengths)
    assert ratio == pytest.approx(independent_ratio(order, costs, packs_per_step), rel=1e-12)
    assert balance_packs(packs, lengths, packs_per_step, seed=seed) == (order, ratio)
    # groups hold packs of adjacent cost: sorted by their cheapest pack, no group overlaps the next
    groups = [
        sorted(costs[k] for k in order[s : s + packs_per_step]) for s in range(0, len(order), packs_per_step)
    ]
    groups.sort()
    for a, b in zip(groups, groups[1:], strict=False):
        assert a[-1] <= b[0]
    if seed is None:
        assert [costs[k] for k in order] == sorted(costs)
    # the short group (if any) is last and holds the most expensive packs
    rest = len(packs) % packs_per_step
    if rest:
        assert sorted(costs[k] for k in order[-rest:]) == sorted(costs)[-rest:]


def test_balance_evens_out_steps():
    # 4 heavy packs (one long sample) and 4 light packs (many short ones), 4 ranks
    lengths = [8000] * 4 + [100] * 320
    packs = [[i] for i in range(4)] + [list(range(4 + 80 * k, 4 + 80 * (k + 1))) for k in range(4)]
    interleaved = [0, 4, 1, 5, 2, 6, 3, 7]
    costs = costs_of(packs, lengths)
    assert independent_ratio(interleaved, costs, 4) > 1.9
    order, ratio = balance_packs(packs, lengths, 4)
    assert ratio == 1.0
    assert {frozenset(order[:4]), frozenset(order[4:])} == {frozenset(range(4)), frozenset(range(4, 8))}


def test_balance_edge_cases_and_cost():
    assert balance_packs([], [], 8) == ([], 1.0)
    assert pack_cost([0, 2], [3, 100, 4]) == 25
    with pytest.raises(ValueError):
        balance_packs([[0]], [1], 0)


# ---------------------------------------------------------------- fill_stats


def test_fill_stats():
    lengths = [6, 4, 5, 3, 2]
    stats = fill_stats([[0, 1], [2, 3], [4]], lengths, 10)
    assert stats["n_packs"] == 3
    assert stats["tokens"] == 20
    assert stats["fill"] == pytest.approx(20 / 30)
    assert stats["lower_bound_packs"] == 2
    assert stats["p0"] == pytest.approx(0.2)
    assert stats["p50"] == pytest.approx(0.8)
    assert stats["p100"] == pytest.approx(1.0)
    assert stats["p0"] <= stats["p5"] <= stats["p50"] <= stats["p95"] <= stats["p100"]
    empty = fill_stats([], [], 10)
    assert empty["n_packs"] == 0 and empty["fill"] == 0.0 and empty["lower_bound_packs"] == 0
