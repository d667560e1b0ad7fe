"""Exact and near-duplicate images: pHash, LSH candidates, union-find groups, the global decision."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from filters.dedup import (
    Dedup,
    _equal_first,
    candidate_pairs,
    connected_components,
    hamming,
    phash64,
    search_plan,
    to_int64,
)
from tests.media import DEMO_IMAGES, near_copies

PHOTOS = ["camera.png", "chelsea.png", "coins.png", "horse.png", "rocket.jpg"]
DEFAULT_MAX_HAMMING = Dedup.Params().max_hamming


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def make_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def make_rows() -> list[dict]:
    rows = []
    for photo in PHOTOS:
        for kind, data in near_copies((DEMO_IMAGES / photo).read_bytes()).items():
            w, h = Image.open(io.BytesIO(data)).size
            rows.append(
                {
                    "id": make_id(f"{photo}/{kind}"),
                    "name": f"{photo}/{kind}",
                    "images": [data],
                    "width": w,
                    "height": h,
                }
            )
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_rows()


@pytest.fixture(scope="module")
def scored(rows) -> list[dict]:
    stage = Dedup()
    cols = stage.score({k: [r[k] for r in rows] for k in ("id", "images", "width", "height")})
    return [
        {**r, "sha256": s, "phash": p} for r, s, p in zip(rows, cols["sha256"], cols["phash"], strict=True)
    ]


def decide(rows: list[dict], **params) -> dict[str, tuple[str | None, str | None]]:
    table = {k: [r[k] for r in rows] for k in ("id", "width", "height", "sha256", "phash")}
    out = Dedup(Dedup.Params(**params)).decide_global(table)
    assert set(out) == {"drop_reason", "duplicate_of"}
    return {i: (r, d) for i, r, d in zip(table["id"], out["drop_reason"], out["duplicate_of"], strict=True)}


def test_each_photo_group_collapses_to_one_row(scored):
    result = decide(scored)
    for photo in PHOTOS:
        group = [r for r in scored if r["name"].startswith(photo + "/")]
        keep = min(group, key=lambda r: (-r["width"] * r["height"], r["id"]))
        assert result[keep["id"]] == (None, None), keep["name"]
        for r in group:
            if r is keep:
                continue
            reason, duplicate_of = result[r["id"]]
            assert duplicate_of == keep["id"], r["name"]
            expected = "exact_duplicate" if r["sha256"] == keep["sha256"] else "near_duplicate"
            assert reason == expected, r["name"]
    kept = [i for i, (reason, _) in result.items() if reason is None]
    assert len(kept) == len(PHOTOS)  # distinct photos are all kept


def test_byte_copies_of_the_kept_row_are_exact_duplicates(scored):
    original = next(r for r in scored if r["name"] == "rocket.jpg/original")
    copies = [{**original, "id": make_id(f"copy{i}")} for i in range(3)]
    result = decide([original, *copies])
    keep = min(r["id"] for r in [original, *copies])
    assert result[keep] == (None, None)
    assert sorted(v for k, v in result.items() if k != keep) == [("exact_duplicate", keep)] * 3


def test_exact_off_labels_byte_copies_near(scored):
    result = decide(scored, exact=False)
    assert {reason for reason, _ in result.values()} == {None, "near_duplicate"}


def test_result_does_not_depend_on_row_order(scored):
    expected = decide(scored)
    for seed in range(5):
        shuffled = scored[:]
        random.Random(seed).shuffle(shuffled)
        assert decide(shuffled) == expected


def test_scores_do_not_depend_on_batching(rows, scored):
    stage = Dedup()
    for size in (1, 4, 7):
        cols = {"sha256": [], "phash": []}
        for a in range(0, len(rows), size):
            chunk = rows[a : a + size]
            out = stage.score({k: [r[k] for r in chunk] for k in ("id", "images", "width", "height")})
            for k in cols:
                cols[k] += out[k]
        assert cols["phash"] == [r["phash"] for r in scored]
        assert cols["sha256"] == [r["sha256"] for r in scored]


def test_variant_distances_within_default_and_distinct_photos_far_apart(scored):
    by_photo = {p: [r for r in scored if r["name"].startswith(p + "/")] for p in PHOTOS}
    for group in by_photo.values():
        original = group[0]["phash"]
        assert all(hamming(original, r["phash"]) <= DEFAULT_MAX_HAMMING for r in group), group[0]["name"]
    for a, b in itertools.combinations(PHOTOS, 2):
        assert hamming(by_photo[a][0]["phash"], by_photo[b][0]["phash"]) >= 2 * DEFAULT_MAX_HAMMING


def test_blank_images_get_their_own_reason(scored):
    flats = []
    for i in range(12):
        colour = (20 * i, 255 - 20 * i, (90 * i) % 256)
        data = encode(Image.new("RGB", (300 + i, 200), colour), "PNG")
        assert phash64(data) == 0
        flats.append(
            {
                "id": make_id(f"flat{i}"),
                "width": 300 + i,
                "height": 200,
                "sha256": hashlib.sha256(data).hexdigest(),
                "phash": 0,
            }
        )
    few = decide(scored + flats, max_bucket=100)
    assert Counter(few[f["id"]][0] for f in flats) == {None: 1, "near_duplicate": 11}
    many = decide(scored + flats, max_bucket=10)  # a photo group (6 rows) still fits
    assert all(many[f["id"]] == ("mass_duplicate", None) for f in flats)
    assert {k: v for k, v in many.items() if k not in {f["id"] for f in flats}} == decide(scored)


def test_rows_without_images_are_never_duplicates():
    stage = Dedup()
    cols = stage.score(
        {"id": ["a" * 16, "b" * 16], "images": [[], None], "width": [None, None], "height": [None, None]}
    )
    assert cols == {"sha256": [None, None], "phash": [None, None]}
    out = stage.decide_global(
        {"id": ["a" * 16, "b" * 16], "width": [None, None], "height": [None, None], **cols}
    )
    assert out == {"drop_reason": [None, None], "duplicate_of": [None, None]}


def test_phash_of_bytes_and_image_agree_and_column_is_int64():
    data = (DEMO_IMAGES / "rocket.jpg").read_bytes()
    h = phash64(data)
    assert 0 <= h < 1 << 64 and h.bit_count() == 32
    img = Image.open(io.BytesIO(data))
    assert hamming(h, phash64(img)) <= 2  # draft decoding of the bytes vs a full decode
    assert -(1 << 63) <= to_int64(h) < 1 << 63 and to_int64(h) & ((1 << 64) - 1) == h
    rgba = Image.open(DEMO_IMAGES / "horse.png")
    assert rgba.mode == "RGBA" and phash64(rgba) != 0


def test_search_plan_small_inputs_get_lsh_bands_and_bad_radius_is_refused():
    assert [k for _, k in search_plan(8, 100)] == [8] * 1 + [7] * 8  # 9 bands over 64 bits
    assert search_plan(0, 10**6) == ((2**64 - 1, 64),)
    with pytest.raises(ValueError, match="max_hamming"):
        search_plan(32, 100)


@pytest.mark.parametrize("max_hamming", [3, 7, 8])
@pytest.mark.parametrize("rows", [100, 10**5, 10**6, 10**7])
def test_every_plan_covers_every_difference_within_max_hamming(max_hamming, rows):
    """The pigeonhole guarantee of each plan: for any set of at most max_hamming differing bits some pass
    keeps none of them. Random sets, sets in one run of bits and sets spread evenly over the 64 bits."""
    masks = np.array([m for m, _ in search_plan(max_hamming, rows)], dtype=np.uint64)
    rng = np.random.default_rng(rows + max_hamming)
    sets = [rng.choice(64, size=rng.integers(0, max_hamming + 1), replace=False) for _ in range(4000)]
    sets += [np.arange(s, s + max_hamming) % 64 for s in range(64)]
    sets += [(np.arange(max_hamming) * 64 // max(1, max_hamming) + s) % 64 for s in range(64)]
    diffs = np.array([sum(1 << int(b) for b in s) for s in sets], dtype=np.uint64)
    assert ((diffs[:, None] & masks[None, :]) == 0).any(axis=1).all()


def test_search_cost_grows_about_linearly_with_rows():
    """On random hashes a pass keeping k bits pairs about n**2 / 2**(k + 1) rows. The work per row (passes
    plus candidate pairs) stays under 600 at 1 M and 10 M rows; LSH bands of 7 bits (the old search) check
    9 * n / 256 candidates a row: 35,000 at 1 M rows, 350,000 at 10 M."""
    for rows in (10**6, 10**7):
        plan = search_plan(8, rows)
        candidates = sum(rows**2 / 2 ** (k + 1) for _, k in plan)
        assert len(plan) + candidates / rows < 600


@pytest.mark.parametrize(("max_hamming", "plan_for"),
                         [(d, None) for d in (0, 3, 7, 8, 12)] + [(d, 10**7) for d in (0, 3, 7, 8)])
def test_candidate_pairs_find_every_close_pair(max_hamming, plan_for):
    """Against brute force, on random hashes with pairs planted at every distance 0..max_hamming + 2, with
    the plan for this input and with the plan for 10 M rows (long keys over many passes)."""
    rng = np.random.default_rng(max_hamming)
    h = rng.integers(-(1 << 63), (1 << 63) - 1, size=2000, dtype=np.int64)
    u = h.view(np.uint64)
    for k in range(60):  # planted pairs at every distance up to max_hamming + 2
        flips = rng.choice(64, size=k % (max_hamming + 3), replace=False)
        u[2 * k + 1] = u[2 * k] ^ np.uint64(sum(1 << int(f) for f in flips))
    u[200:203] = u[204]  # identical hashes: every pair among them
    pairs, mass = candidate_pairs(h, max_hamming, max_bucket=10**6, plan_for=plan_for)
    dist = np.bitwise_count(u[:, None] ^ u[None, :])
    brute = np.argwhere(np.triu(dist <= max_hamming, 1))
    assert pairs.tolist() == brute.tolist()
    assert not mass.any()


def test_oversized_buckets_are_not_searched():
    h = np.zeros(10, dtype=np.int64)
    pairs, mass = candidate_pairs(h, 7, max_bucket=9)
    assert len(pairs) == 0 and mass.all()
    pairs, mass = candidate_pairs(h, 7, max_bucket=10)
    assert len(pairs) == 45 and not mass.any()
    pairs, mass = candidate_pairs(h[:1], 7, max_bucket=9, weights=np.array([10]))  # one value, ten rows
    assert len(pairs) == 0 and mass.all()


def test_connected_components_label_by_smallest_member():
    pairs = [(4, 5), (1, 4), (2, 3)]
    assert connected_components(7, pairs).tolist() == [0, 1, 2, 2, 1, 1, 6]
    assert connected_components(7, pairs[::-1]).tolist() == [0, 1, 2, 2, 1, 1, 6]
    assert connected_components(3, np.empty((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


def test_params_reject_bad_values():
    with pytest.raises(ValueError, match="max_hamming"):
        Dedup.Params(max_hamming=40)
    with pytest.raises(ValueError, match="max_bucket"):
        Dedup.Params(max_bucket=1)


def photo(name: str) -> bytes:
    return (DEMO_IMAGES / name).read_bytes()


def score_and_decide(records: list[tuple[str, list[bytes]]], **extra_columns) -> dict[str, tuple]:
    """Score records (id, images) with the stage, then take the global decision over the scored table."""
    stage = Dedup()
    ids = [i for i, _ in records]
    images = [imgs for _, imgs in records]
    sizes = [Image.open(io.BytesIO(imgs[0])).size for imgs in images]
    cols = stage.score({"id": ids, "images": images})
    table = {"id": ids, "width": [w for w, _ in sizes], "height": [h for _, h in sizes], **cols, **extra_columns}
    out = stage.decide_global(table)
    return {i: (out["drop_reason"][k], out["duplicate_of"][k]) for k, i in enumerate(ids)}, out


def test_records_are_compared_through_their_whole_image_list():
    """[A, B] and [A, C] share a first image but are different records (they were exact_duplicate)."""
    a, b, c = photo("chelsea.png"), photo("coins.png"), photo("rocket.jpg")
    a2, b2 = near_copies(a)["resized_50"], near_copies(b)["jpeg_q40"]
    records = [
        ("0" * 16, [a, b]),
        ("1" * 16, [a, c]),      # same first image, another second: distinct
        ("2" * 16, [a2, b2]),    # every image a near copy, in order: near duplicate
        ("3" * 16, [a, b]),      # the same bytes in the same order: exact duplicate
        ("4" * 16, [b, a]),      # the same images in another order: distinct
        ("5" * 16, [a]),         # a prefix: distinct (another number of images)
        ("6" * 16, [a, b, c]),   # a longer list: distinct
        ("7" * 16, [a2, c]),     # near copy of [a, c]
    ]
    result, out = score_and_decide(records)
    assert result == {
        "0" * 16: (None, None),
        "1" * 16: (None, None),
        "2" * 16: ("near_duplicate", "0" * 16),
        "3" * 16: ("exact_duplicate", "0" * 16),
        "4" * 16: (None, None),
        "5" * 16: (None, None),
        "6" * 16: (None, None),
        "7" * 16: ("near_duplicate", "1" * 16),
    }
    assert "captions" not in out  # nothing to merge: the column is not added
    cols = Dedup().score({"id": ["x", "y"], "images": [[a, b], [a]]})
    assert cols["phashes"][0] == [to_int64(phash64(a)), to_int64(phash64(b))] and cols["phashes"][1] is None
    assert cols["phash"][0] == cols["phash"][1] and cols["sha256"][0] != cols["sha256"][1]
    assert cols["sha256"][1] == hashlib.sha256(a).hexdigest()


def test_a_placeholder_first_image_does_not_make_multi_image_records_mass_duplicates():
    flat = encode(Image.new("RGB", (320, 240), (200, 200, 200)), "PNG")
    records = []
    for k, name in enumerate(PHOTOS):
        records.append((f"{k:015x}a", [flat, photo(name)]))
        records.append((f"{k:015x}b", [flat, near_copies(photo(name))["brighter_10pct"]]))
    stage = Dedup(Dedup.Params(max_bucket=3))  # the flat first images fill one bucket of 10 in every band
    cols = stage.score({"id": [i for i, _ in records], "images": [imgs for _, imgs in records]})
    out = stage.decide_global({"id": [i for i, _ in records], "width": [320] * 10, "height": [240] * 10, **cols})
    reasons = dict(zip([i for i, _ in records], out["drop_reason"], strict=True))
    assert [reasons[f"{k:015x}a"] for k in range(5)] == [None] * 5
    assert [reasons[f"{k:015x}b"] for k in range(5)] == ["near_duplicate"] * 5


def test_kept_row_carries_the_distinct_captions_of_its_exact_copies():
    rocket, horse = photo("rocket.jpg"), photo("horse.png")
    records = [
        ("0" * 16, [rocket]),
        ("1" * 16, [rocket]),
        ("2" * 16, [rocket]),
        ("3" * 16, [near_copies(rocket)["jpeg_q40"]]),  # a near copy: its caption may describe other pixels
        ("4" * 16, [horse]),
        ("5" * 16, [horse]),
    ]
    texts = ["a cat on a sofa", "a rocket on its launchpad", "a cat on a sofa", "a rocket at dusk",
             "a horse", "a horse"]
    captions = [None, ["a rocket on its launchpad", "a white rocket"], None, None, None, None]
    result, out = score_and_decide(records, text=texts, captions=captions)
    assert result["0" * 16] == (None, None) and result["4" * 16] == (None, None)
    assert result["1" * 16][0] == result["2" * 16][0] == "exact_duplicate"
    assert result["3" * 16][0] == "near_duplicate"
    # own caption first, then the copies' by id, each once; the near copy's caption is not taken
    assert out["captions"][0] == ["a cat on a sofa", "a rocket on its launchpad", "a white rocket"]
    assert out["captions"][1] == ["a rocket on its launchpad", "a white rocket"]  # dropped rows keep their own
    assert out["captions"][4] is None  # one distinct caption: nothing to add
    assert set(out) == {"drop_reason", "duplicate_of", "captions"}


def test_arrow_columns_give_the_decision_of_python_lists(scored):
    """The runner passes pyarrow ChunkedArrays to a stage with ``arrow_columns``: same decision, as arrays."""
    assert Dedup.arrow_columns
    rows = scored + [{**scored[0], "id": make_id("copy")}]
    table = {k: [r[k] for r in rows] for k in ("id", "width", "height", "sha256", "phash")}
    table["text"] = [f"caption {i % 3}" for i in range(len(rows))]
    stage = Dedup()
    expected = stage.decide_global(table)
    chunked = {k: pa.chunked_array([pa.array(v[:7]), pa.array(v[7:])]) for k, v in table.items()}
    got = stage.decide_global(chunked)
    assert set(got) == set(expected) == {"drop_reason", "duplicate_of", "captions"}
    assert {k: v.to_pylist() for k, v in got.items()} == expected
    assert expected["drop_reason"].count("exact_duplicate") >= 1


def test_equal_values_point_at_their_first_row_whatever_the_width():
    """Exact duplicates by SHA-256 without a Python dict: fixed-width values through a checked fingerprint,
    others (any length, sliced arrays) through Arrow's dictionary encoding; nulls are -1."""
    fixed = pa.array(["a" * 64, None, "b" * 64, "a" * 64, "b" * 64, "c" * 64])
    assert _equal_first(fixed).tolist() == [0, -1, 2, 0, 2, 5]
    assert _equal_first(fixed.slice(2)).tolist() == [0, 1, 0, 3]
    ragged = pa.array(["a", None, "bb", "a", "bb", ""])
    assert _equal_first(ragged).tolist() == [0, -1, 2, 0, 2, 5]
