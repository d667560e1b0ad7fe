"""Exact and near-duplicate images over the whole dataset: a global stage.

Exact duplicates share the SHA-256 of their stored bytes. Near duplicates have 64-bit perceptual hashes
(pHash) within ``max_hamming`` bits. Candidate pairs come from passes that each keep some bits of the hash
and bucket the rows by them (``search_plan``): the 64 bits are split into blocks whose ``radius + 1`` sum to more than
``max_hamming`` (pigeonhole: a pair within ``max_hamming`` bits is within its radius in some block), and a
block of radius ``r`` is searched by ``2**(r + 1) - 1`` covering-LSH passes, one of which ignores any ``r``
bits (Pagh, "Locality-sensitive hashing without false negatives", 2016). So every pair within
``max_hamming`` bits shares a bucket in some pass; each candidate is then checked on the full 64 bits.
Small inputs get plain LSH bands (``max_hamming + 1`` blocks of radius 0); millions of rows get longer keys
over more passes, so the candidates stay about linear in the rows. Groups are the connected components of
the pairs, one row is kept per group, so the result depends on neither the order nor the partitioning of
the rows.
"""

from __future__ import annotations

import functools
import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from filters.base import Batch, Params, Stage
from filters.image import THUMB_SIDE, THUMBNAILS, gray_thumbnail

_HASH_BITS = 64
_DCT_SIZE = THUMB_SIDE
_DCT_MATRIX: np.ndarray | None = None


def _dct_matrix(n: int = _DCT_SIZE) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of a column vector ``x``."""
    global _DCT_MATRIX
    if _DCT_MATRIX is None:
        k = np.arange(n)[:, None]
        i = np.arange(n)[None, :]
        d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
        d[0] /= np.sqrt(2.0)
        _DCT_MATRIX = d
    return _DCT_MATRIX


def phash64(image: Any) -> int:
    """64-bit DCT perceptual hash of an image (encoded bytes or a PIL image), as an unsigned int.

    The reference pHash (phash.org ``ph_dct_imagehash``) without its mean filter: grayscale, resized to
    32x32, 2-D DCT, the 8x8 block of lowest frequencies without the DC row and column (coefficients 1..8),
    one bit per coefficient: above the block's median. The 32x32 grayscale is
    ``filters.image.gray_thumbnail``: JPEGs are decoded at a reduced scale (``Image.draft``, at least 64 px
    a side), which is many times faster and changes little at 32x32. Bytes that the image check has just
    decoded take their thumbnail from ``filters.image.THUMBNAILS`` instead of being decoded again (the same
    pixels). A flat image (no AC energy) hashes to 0. Bit 63 is coefficient (1, 1), bit 0 is (8, 8).
    """
    from PIL import Image

    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        pixels = THUMBNAILS.get(data)
        if pixels is None:
            pixels = gray_thumbnail(Image.open(io.BytesIO(data)))
    else:
        pixels = gray_thumbnail(image)
    d = _dct_matrix()
    block = (d @ pixels.astype(np.float64) @ d.T)[1:9, 1:9]
    if np.abs(block).max() < 1e-6:
        return 0
    bits = (block > np.median(block)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def to_int64(h: int) -> int:
    """The 64 hash bits as a signed int64 (two's complement), as stored in the ``phash`` column."""
    return h - (1 << 64) if h >= 1 << 63 else h


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned)."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def _parity(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) & 1


@functools.cache
def _block_passes(lo: int, size: int, radius: int) -> tuple[tuple[int, int], ...]:
    """Passes ``(kept_mask, kept_bits)`` over bits ``lo .. lo+size-1`` such that two hashes whose block
    differs in at most ``radius`` bits agree on every kept bit of at least one pass (covering LSH, Pagh 2016).

    Each bit ``i`` gets a nonzero vector ``m_i`` of ``t = radius + 1`` bits and each nonzero ``v`` of ``t``
    bits is a pass keeping the bits with ``m_i . v`` odd: the ``radius`` or fewer differing bits span at most
    ``radius < t`` dimensions, so some ``v`` is orthogonal to all of them and that pass ignores them all.
    ``2**t - 1`` passes, each keeping about half the block; the vectors are the best of a few seeded draws
    (fewest expected candidates). Radius 0 is one pass keeping the whole block.
    """
    if radius == 0:
        return (((1 << size) - 1) << lo, size),
    t = radius + 1
    vs = np.arange(1, 1 << t, dtype=np.int64)
    best = None
    for seed in range(16):
        m = np.random.default_rng(seed).integers(1, 1 << t, size=size)
        kept = _parity(vs[:, None] & m[None, :]).astype(bool)  # (passes, bits)
        cost = np.exp2(-kept.sum(axis=1).astype(float)).sum()
        if best is None or cost < best[0]:
            best = cost, kept
    return tuple((sum(1 << (lo + int(i)) for i in np.flatnonzero(row)), int(row.sum())) for row in best[1])


def _designs(max_hamming: int) -> list[list[tuple[int, int, int]]]:
    """Block partitions ``[(lo, size, radius), ...]`` of the 64 bits with ``sum(radius + 1) > max_hamming``:
    two hashes within ``max_hamming`` bits are then within ``radius`` in at least one block (pigeonhole).
    Even splits into 1 .. max_hamming + 1 blocks (``max_hamming + 1`` blocks of radius 0 are plain LSH
    bands) and two blocks of every size split 4 bits apart."""
    units = max_hamming + 1
    out = []
    for m in range(1, units + 1):
        sizes = [_HASH_BITS // m + (k < _HASH_BITS % m) for k in range(m)]
        radii = [units // m + (k < units % m) - 1 for k in range(m)]
        out.append([(sum(sizes[:k]), sizes[k], radii[k]) for k in range(m)])
    for u0 in range(1, units):
        for size0 in range(8, _HASH_BITS - 7, 4):
            out.append([(0, size0, u0 - 1), (size0, _HASH_BITS - size0, units - u0 - 1)])
    return out


# seconds per pass, per row and pass (mask, sort, group) and per candidate pair checked (numpy 2.4, EPYC)
_PASS_S, _PASS_ROW_S, _CANDIDATE_S = 2e-4, 4.5e-8, 1.5e-7


@functools.cache
def search_plan(max_hamming: int, n: int) -> tuple[tuple[int, int], ...]:
    """Passes ``(kept_mask, kept_bits)`` for ``n`` distinct hashes: every pair within ``max_hamming`` bits
    agrees on all kept bits in at least one pass. Of the designs of ``_designs``, the one of least expected
    time on random hashes: ``passes * n`` row steps plus ``sum(n**2 / 2**(kept_bits + 1))`` candidate pairs.
    Small inputs get LSH bands (``max_hamming + 1`` passes), millions of rows longer keys over more passes."""
    if not 0 <= max_hamming < _HASH_BITS // 2:
        raise ValueError(f"max_hamming must be in [0, {_HASH_BITS // 2 - 1}], got {max_hamming}")
    n = 1 << max(1, int(n).bit_length())  # one plan per power of two
    best = None
    for design in _designs(max_hamming):
        passes = [p for block in design for p in _block_passes(*block)]
        kept = np.array([k for _, k in passes], dtype=float)
        cost = len(passes) * (_PASS_S + n * _PASS_ROW_S) + _CANDIDATE_S * float(np.sum(float(n) ** 2 / np.exp2(kept + 1)))
        if best is None or cost < best[0]:
            best = cost, tuple(passes)
    return best[1]


def candidate_pairs(hashes: np.ndarray, max_hamming: int, max_bucket: int, weights: np.ndarray | None = None,
                    plan_for: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows whose hashes are within ``max_hamming`` bits, through the passes of ``search_plan``.

    ``hashes`` are int64 (or uint64) values; ``weights`` the number of rows each stands for (1 each by
    default: identical rows collapsed by the caller); ``plan_for`` the number of rows to plan the passes for
    (default ``len(hashes)``). Returns ``(pairs, mass)``: ``pairs`` an (k, 2) int64
    array of indices ``i < j``, sorted and unique; ``mass`` per row whether its bucket held more than the cap
    in at least half of the passes. The cap is ``max_bucket`` rows, or four times the average bucket
    (``rows / 2**kept_bits``) where that is more; an oversized bucket is not searched, so a mass of identical
    or blank images costs nothing and cannot chain everything into one group.

    A pass sorts the masked keys, picks the rows whose key repeats and checks the pairs inside each bucket
    on all 64 bits; memory stays a few arrays of ``n`` plus the pairs found.
    """
    h = np.ascontiguousarray(hashes).astype(np.int64, copy=False).view(np.uint64)
    n = len(h)
    w = np.ones(n, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    rows = int(w.sum())
    heavy = np.flatnonzero(w > max_bucket)  # alone above the cap: oversized in every pass
    oversized = np.zeros(n, dtype=np.int32)
    plan = search_plan(max_hamming, plan_for or n)
    found = np.empty(0, dtype=np.int64)  # pairs as i * n + j, i < j
    pending: list[np.ndarray] = []
    index = np.arange(n, dtype=np.uint64)
    for mask, kept_bits in plan:
        cap = max(max_bucket, (4 * rows) >> kept_bits)
        members, group = _repeated_keys(h, np.uint64(mask), index)
        size = np.bincount(group, weights=w[members])
        big = size[group] > cap
        oversized[np.union1d(members[big], heavy[w[heavy] > cap])] += 1
        members, group = members[~big], group[~big]
        pending.append(_pairs_within(members, group, h, max_hamming, n))
        if sum(map(len, pending)) > len(found) + (1 << 20):
            found, pending = np.unique(np.concatenate([found, *pending])), []
    found = np.unique(np.concatenate([found, *pending]))
    pairs = np.stack([found // max(n, 1), found % max(n, 1)], axis=1)
    return pairs, 2 * oversized >= len(plan)


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: Fibonacci hashing of a masked key into the high bits


def _repeated_keys(h: np.ndarray, mask: np.uint64, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose ``h & mask`` is shared with another row, sorted by that key, and per row its bucket
    number (0, 1, ... in that order). One ``np.sort`` of a uint64 per row: a hash of the key in the high
    bits, the row index (``index``, 0..n-1) in the low bits. Rows whose key hashes alike are regrouped by the
    key itself, so a collision costs a sort of the repeated rows, never a missed or merged bucket."""
    bits = max(1, (len(h) - 1).bit_length())
    packed = h & mask
    packed *= _MIX
    packed >>= np.uint64(bits)
    packed <<= np.uint64(bits)
    packed |= index
    packed.sort()
    tag = packed >> np.uint64(bits)
    same = tag[1:] == tag[:-1]
    in_run = np.r_[same, False] | np.r_[False, same]
    tag = tag[in_run]
    members = (packed[in_run] & np.uint64((1 << bits) - 1)).astype(np.int64)
    key = h[members] & mask
    if ((tag[1:] == tag[:-1]) & (key[1:] != key[:-1])).any():  # two keys with one hash
        order = np.argsort(key, kind="stable")
        members, key = members[order], key[order]
    return members, np.cumsum(np.r_[True, key[1:] != key[:-1]][: len(key)]) - 1


def _pairs_within(members: np.ndarray, group: np.ndarray, h: np.ndarray, max_hamming: int,
                  n: int) -> np.ndarray:
    """Pairs (as ``i * n + j``, ``i < j``) of ``members`` in the same ``group`` (members sorted by group)
    within ``max_hamming`` bits: offset by offset, over the rows whose group reaches that far."""
    if not len(members):
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    end = np.repeat(np.r_[starts[1:], len(group)], np.diff(np.r_[starts, len(group)]))
    out = []
    active = np.arange(len(members))
    k = 1
    while len(active := active[end[active] - active > k]):
        a, b = members[active], members[active + k]
        close = np.bitwise_count(h[a] ^ h[b]) <= max_hamming
        a, b = a[close], b[close]
        out.append(np.minimum(a, b) * n + np.maximum(a, b))
        k += 1
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def connected_components(n: int, pairs: np.ndarray | list[tuple[int, int]]) -> np.ndarray:
    """Component label per node 0..n-1 of the undirected graph ``pairs``: the smallest node index in its
    component, so it does not depend on the pairs' order. Vectorised hook-and-compress over the nodes that
    have an edge: each edge hooks the larger of its two roots under the smaller, then pointers are jumped
    to their roots, until no edge joins two roots."""
    links = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    labels = np.arange(n, dtype=np.int64)
    nodes, local = np.unique(links, return_inverse=True)
    local = local.reshape(-1, 2)
    root = np.arange(len(nodes))
    while True:
        ra, rb = root[local[:, 0]], root[local[:, 1]]
        apart = ra != rb
        if not apart.any():
            break
        lo, hi = np.minimum(ra[apart], rb[apart]), np.maximum(ra[apart], rb[apart])
        np.minimum.at(root, hi, lo)
        while not np.array_equal(jumped := root[root], root):
            root = jumped
    labels[nodes] = nodes[root]
    return labels


class Dedup(Stage):
    """Drop exact and near-duplicate records across the whole dataset, keeping one row per group.

    A record is compared through its whole image list. Score, per row: ``sha256``, the hex SHA-256 of the
    image's bytes as stored (for a record of several images, the SHA-256 of their digests in order), and
    ``phash``, the 64-bit pHash of ``phash64`` of the first image as a signed int64; a record of several
    images also gets ``phashes``, every image's pHash in order (the column is left out while no row has
    more than one image). A row without images has nulls and is never a duplicate.

    Decision over the whole table (id, width, height, text, captions and the columns above): rows are linked
    when their SHA-256 is equal (``exact``: the same image bytes in the same order) or when they have the
    same number of images and each image is within ``max_hamming`` bits of the image at the same position in
    the other record (so ``[A, B]`` and ``[A, C]`` are not duplicates, ``[A, B]`` and ``[A', B']`` are, and
    ``[B, A]`` is not a duplicate of ``[A, B]``: order carries meaning in a multi-image record). A group is a
    connected component of these links. The row kept per group has the largest ``width * height`` (of its
    first image, after EXIF rotation), then the smallest ``id``; every other row gets ``duplicate_of`` = the
    kept id and reason ``exact_duplicate`` (same bytes as the kept row) or ``near_duplicate``.

    Captions of exact copies are not lost: the kept row gets ``captions``, the distinct captions of every
    row with its bytes (its own first, then the others' by id; a row's ``captions`` list, else its
    ``text``); ``text`` stays its own. ``caption_text`` judges each and ``clip_score`` picks the best. The
    column appears only when some row has a ``captions`` list or an exact copy with another caption.

    Rows whose pHash bucket held more than ``max_bucket`` rows in at least half of the search passes (for a
    multi-image record: at every image position) get ``mass_duplicate`` and no group: blank or flat images
    (pHash 0) and images replicated thousands of times ("photo no longer available" placeholders), which
    would otherwise chain into one giant group and cost a quadratic search. A bucket is oversized above
    ``max_bucket`` rows, or above four times the average bucket (rows / 2**kept_bits) when the dataset is so
    large that this is more, so ordinary buckets of a large dataset are still searched. Rows of identical
    hashes are linked to the first of them and searched once (weighted by their count). Records of several
    images are searched per image count and position (candidates from any position, verified on all).

    ``max_hamming`` default 8, measured on 15 dev photos: copies resized to 50% or 25%,
    re-encoded at JPEG quality 40 or 20, brightened or darkened 5-20% are within 4 bits of the original, crops
    of 1% per side within 6, crops of 2% (per side, or off one side) within 8 for 14 of 15 photos (10 and 12
    for the last); distinct photos and their quadrants (2,775 pairs) are 18 bits or more apart. Between
    unrelated images the chance of a distance <= 8 is 7e-10 (360 false pairs per million rows, for ideal
    hashes) and grows 30-fold with each 2 bits more, so the default stays at 8. pHashes have 32 bits set:
    distances are even, 8 behaves as 9.

    Scale (``arrow_columns``: the runner passes pyarrow columns, and the decision holds numpy arrays, no
    Python object per row; ``tests/bench/bench_dedup_memory.py``, synthetic random pHashes with 1% near and
    1% exact copies, 2-core EPYC): 100k rows 1.5 s, 153 MiB peak RSS; 1M rows 23 s (70 passes at 100k, 256
    at 1M), 406 MiB; 10M rows 264 s (511 passes), 2.6 GiB, of which 1.3 GiB are the input columns (ids,
    SHA-256 hex, hashes, sizes). Bound: about 130 MiB per million rows for the columns plus 130 MiB for the
    decision; time about 25 s per million rows up to 10M. (Before, with LSH bands and Python lists: 100k
    6.6 s; 1M 276 s, 923 MiB; time grew as rows squared.)
    """

    class Params(Params):
        max_hamming: int = Field(default=8, ge=0, le=_HASH_BITS // 2 - 1)
        max_bucket: int = Field(default=10_000, ge=2)
        exact: bool = True

    kind = "global"
    arrow_columns = True  # decide_global takes pyarrow columns from the runner
    batch_size = 64

    def score(self, batch: Batch) -> Batch:
        sha: list[str | None] = []
        hashes: list[list[int] | None] = []
        for images in batch["images"]:
            if not images:
                sha.append(None)
                hashes.append(None)
                continue
            digests = [hashlib.sha256(bytes(im)).digest() for im in images]
            sha.append(digests[0].hex() if len(digests) == 1 else hashlib.sha256(b"".join(digests)).hexdigest())
            hashes.append([to_int64(phash64(bytes(im))) for im in images])
        out: Batch = {"sha256": sha, "phash": [h[0] if h else None for h in hashes]}
        if any(h and len(h) > 1 for h in hashes):
            out["phashes"] = [h if h and len(h) > 1 else None for h in hashes]
        return out

    def score_columns(self) -> list[str]:
        return ["sha256", "phash", "phashes"]

    def decide_global(self, table: Batch) -> Batch:
        """The decision over columns given as Python lists (returned as lists) or as pyarrow arrays
        (``arrow_columns``: returned as arrays, no Python object per row)."""
        as_lists = isinstance(table["id"], list)
        cols = {k: _arrow(v) for k, v in table.items()}
        ids = cols["id"]
        n = len(ids)
        mass = np.zeros(n, dtype=bool)
        edges = [np.empty((0, 2), dtype=np.int64)]
        for rows, hashes in _hash_groups(cols):
            found, rows_mass = self._near_links(hashes)
            mass[rows] = rows_mass
            edges.append(rows[found])
        sha_code = _equal_first(cols["sha256"])
        if self.params.exact:
            copies = np.flatnonzero((sha_code >= 0) & (sha_code != np.arange(n)))
            edges.append(np.stack([sha_code[copies], copies], axis=1))
        links = np.concatenate(edges)
        links = links[~(mass[links[:, 0]] | mass[links[:, 1]])]
        keep = _kept_rows(n, links, cols)
        dup = (keep != np.arange(n)) & ~mass
        same_bytes = dup & (sha_code >= 0) & (sha_code == sha_code[keep])
        exact = same_bytes if self.params.exact else np.zeros(n, dtype=bool)
        reason = np.where(mass, 2, np.where(exact, 0, np.where(dup, 1, -1)))
        out: Batch = {
            "drop_reason": pc.take(pa.array(["exact_duplicate", "near_duplicate", "mass_duplicate"]),
                                   pa.array(reason, mask=reason < 0)),
            "duplicate_of": pc.take(ids, pa.array(keep, mask=~dup)),
        }
        captions = _merged_captions(cols, np.flatnonzero(same_bytes), keep)
        if captions is not None:
            out["captions"] = captions
        return {k: v.to_pylist() for k, v in out.items()} if as_lists else out

    def _near_links(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Links ``(i, j)`` between the rows of ``hashes`` (one row per record, one column per image) within
        ``max_hamming`` bits at every position, and per row whether it is a mass duplicate (at every
        position). Identical rows are collapsed first: each is linked to the first of its value and the
        search runs over distinct values weighted by their count."""
        p = self.params
        one = hashes.shape[1] == 1  # 1-D unique: a fast sort, not one over row views
        uniq, first, inverse, counts = np.unique(hashes[:, 0] if one else hashes, axis=None if one else 0,
                                                 return_index=True, return_inverse=True, return_counts=True)
        uniq, inverse = uniq.reshape(len(uniq), -1), inverse.reshape(-1)
        same = np.stack([first[inverse], np.arange(len(hashes))], axis=1)
        found, everywhere_mass = [], np.ones(len(uniq), dtype=bool)
        for k in range(uniq.shape[1]):  # candidates from any position, verified at all
            pairs, mass = candidate_pairs(uniq[:, k], p.max_hamming, p.max_bucket, weights=counts)
            found.append(pairs)
            everywhere_mass &= mass
        pairs = np.unique(np.concatenate(found), axis=0)
        bits = uniq.view(np.uint64)  # bitwise_count of a signed int counts its absolute value
        close = (np.bitwise_count(bits[pairs[:, 0]] ^ bits[pairs[:, 1]]) <= p.max_hamming).all(axis=1)
        links = np.concatenate([same[same[:, 0] != same[:, 1]], first[pairs[close]]])
        return links, everywhere_mass[inverse]


def _arrow(column: Any) -> pa.Array:
    """A column as one pyarrow array (a ChunkedArray combined, a list converted)."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column if isinstance(column, pa.Array) else pa.array(column)


def _hash_groups(cols: dict[str, pa.Array]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(rows, hashes)`` per number of images: the rows with that many pHashes and their (rows, count)
    int64 array (``phashes`` where set, else ``phash``; rows without a hash are left out)."""
    single = cols["phash"]
    multi = cols.get("phashes")
    if multi is None or pa.types.is_null(multi.type):
        multi = pa.nulls(len(single), pa.list_(pa.int64()))
    count = pc.list_value_length(multi).to_numpy(zero_copy_only=False)
    count = np.where(pc.is_valid(multi).to_numpy(zero_copy_only=False), count, 0).astype(np.int64)
    one = (count == 0) & pc.is_valid(single).to_numpy(zero_copy_only=False)
    groups = []
    if one.any():
        rows = np.flatnonzero(one)
        groups.append((rows, single.take(rows).to_numpy(zero_copy_only=False).astype(np.int64)[:, None]))
    for c in np.unique(count[count > 0]).tolist():
        rows = np.flatnonzero(count == c)
        flat = pc.list_flatten(multi.take(rows)).to_numpy(zero_copy_only=False).astype(np.int64)
        groups.append((rows, flat.reshape(len(rows), c)))
    return groups


def _equal_first(values: pa.Array) -> np.ndarray:
    """Per row the first row with an equal value (itself if none before it), -1 for null. Values of one
    byte length (SHA-256 hex) are compared through a 64-bit fingerprint of their bytes, checked byte for
    byte; others, or a fingerprint shared by two values, go through Arrow's dictionary encoding."""
    n = len(values)
    rows = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
    first = np.full(n, -1, dtype=np.int64)
    data = _fixed_width_bytes(values, rows)
    if data is not None:
        fingerprint = np.zeros(len(rows), dtype=np.uint64)
        for word in data.view("<u8").T:
            fingerprint = _mix64(fingerprint ^ word)
        _, at, inverse = np.unique(fingerprint, return_index=True, return_inverse=True)
        rep = at[inverse]
        other = np.flatnonzero(rep != np.arange(len(rows)))
        if (data[other] == data[rep[other]]).all():
            first[rows] = rows[rep]
            return first
    codes = pc.dictionary_encode(values.take(rows)).indices.to_numpy(zero_copy_only=False)
    _, at, inverse = np.unique(codes, return_index=True, return_inverse=True)
    first[rows] = rows[at[inverse]]
    return first


def _fixed_width_bytes(values: pa.Array, rows: np.ndarray) -> np.ndarray | None:
    """The bytes of the valid ``rows`` of a string array as a (rows, width) uint8 view, when every one is
    ``width`` bytes (a multiple of 8), back to back; else None."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) or not len(rows):
        return None
    wide = pa.types.is_large_string(values.type)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if wide else np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1]
    start, stop = offsets[rows], offsets[rows + 1]
    width = int(stop[0] - start[0])
    if width == 0 or width % 8 or (stop - start != width).any() or (np.diff(start) != width).any():
        return None
    raw = np.frombuffer(values.buffers()[2], dtype=np.uint8)
    return raw[start[0] : start[0] + width * len(rows)].reshape(len(rows), width)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: 64 well-mixed bits of each uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _kept_rows(n: int, links: np.ndarray, cols: dict[str, pa.Array]) -> np.ndarray:
    """Per row the row kept for its group (connected component of ``links``): the largest
    ``width * height``, then the smallest id. Only rows with a link are sorted."""
    labels = connected_components(n, links)
    keep = np.arange(n)
    linked = np.unique(links)
    if not len(linked):
        return keep
    area = np.zeros(len(linked), dtype=np.int64)
    if "width" in cols and "height" in cols:  # no image_check: ids only
        sizes = [pc.fill_null(cols[k].take(linked), 0).to_numpy(zero_copy_only=False).astype(np.int64)
                 for k in ("width", "height")]
        area = sizes[0] * sizes[1]
    order = pc.sort_indices(pa.table({"area": -area, "id": cols["id"].take(linked)}),
                            sort_keys=[("area", "ascending"), ("id", "ascending")]).to_numpy()
    by_rank = labels[linked[order]]
    group, first = np.unique(by_rank, return_index=True)
    keeper = np.full(n, -1, dtype=np.int64)
    keeper[group] = linked[order[first]]
    keep[linked] = keeper[labels[linked]]
    return keep


def _merged_captions(cols: dict[str, pa.Array], copies: np.ndarray, keep: np.ndarray) -> pa.Array | None:
    """Per row: for a kept row with exact copies (``copies``, the rows with its bytes), the distinct captions
    of it and its copies (its own first, then by id); for the others their own ``captions``. None when no
    row has or gains more than one caption. Python objects only for the rows with copies."""
    n = len(keep)
    own = cols.get("captions")
    if own is not None and pa.types.is_null(own.type):
        own = None
    texts = cols.get("text")
    involved = np.unique(np.concatenate([copies, keep[copies]]))
    if (own is None or own.null_count == n) and (texts is None or not len(involved)):
        return None
    take = [c.take(involved).to_pylist() if c is not None else [None] * len(involved) for c in (own, texts)]
    at = {int(r): k for k, r in enumerate(involved)}
    captions_of = {int(r): list(c) if c else [t] if t else [] for r, c, t in zip(involved, *take, strict=True)}
    ids = cols["id"].take(involved).to_pylist()
    others: dict[int, list[int]] = {}
    for i in copies.tolist():
        others.setdefault(int(keep[i]), []).append(i)
    changed: dict[int, list[str]] = {}
    for k, rows in others.items():
        rows.sort(key=lambda r: ids[at[r]])
        found = list(dict.fromkeys(c for r in [k, *rows] for c in captions_of[r]))
        if len(found) > 1 or take[0][at[k]]:
            changed[k] = found
    if not changed and (own is None or own.null_count == n):
        return None
    merged = own.to_pylist() if own is not None else [None] * n
    for k, found in changed.items():
        merged[k] = found
    return pa.array(merged, type=pa.list_(pa.string()))
