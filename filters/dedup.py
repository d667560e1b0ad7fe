"""Exact and near-duplicate images over the whole dataset: a global stage.

Exact duplicates share the SHA-256 of their stored bytes. Near duplicates have 64-bit perceptual hashes
(pHash) within ``max_hamming`` bits. Candidate pairs come from LSH bands of the hash: with
``max_hamming + 1`` bands, two hashes within ``max_hamming`` bits agree exactly on at least one band
(pigeonhole), so bucketing rows by (band, band value) finds every such pair; each candidate is then checked
on the full 64 bits. Groups are the connected components of the pairs (union-find), one row is kept per
group, so the result depends on neither the order nor the partitioning of the rows.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
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


def lsh_bands(max_hamming: int) -> tuple[int, int]:
    """``(n_bands, band_bits)`` that find every pair within ``max_hamming`` bits: ``max_hamming + 1`` bands
    of ``64 // n_bands`` bits (8 bands of 8 bits for 7). Leftover high bits are not banded, which keeps the
    pigeonhole guarantee; candidates are verified on all 64 bits."""
    if not 0 <= max_hamming < _HASH_BITS // 2:
        raise ValueError(f"max_hamming must be in [0, {_HASH_BITS // 2 - 1}], got {max_hamming}")
    n_bands = max_hamming + 1
    return n_bands, _HASH_BITS // n_bands


def candidate_pairs(hashes: np.ndarray, max_hamming: int, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows whose hashes are within ``max_hamming`` bits, found through LSH bands.

    ``hashes`` are int64 (or uint64) hash values. Returns ``(pairs, oversized)``: ``pairs`` an (k, 2) int64
    array of row indices ``i < j``, sorted and unique; ``oversized`` per row the number of bands in which the
    row's bucket held more than ``max_bucket`` rows. Such buckets are not searched, so a mass of identical or
    blank images costs nothing and cannot chain everything into one group.
    """
    h = np.ascontiguousarray(hashes).astype(np.int64, copy=False).view(np.uint64)
    n = len(h)
    oversized = np.zeros(n, dtype=np.int64)
    found: list[np.ndarray] = []
    n_bands, band_bits = lsh_bands(max_hamming)
    mask = np.uint64((1 << band_bits) - 1)
    for band in range(n_bands):
        keys = (h >> np.uint64(band * band_bits)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            size = e - s
            if size < 2:
                continue
            members = order[s:e]
            if size > max_bucket:
                oversized[members] += 1
                continue
            found.append(_close_pairs(members, h[members], max_hamming))
    if not found:
        return np.empty((0, 2), dtype=np.int64), oversized
    pairs = np.concatenate(found)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
    return pairs.astype(np.int64), oversized


def _close_pairs(members: np.ndarray, h: np.ndarray, max_hamming: int) -> np.ndarray:
    """All pairs of ``members`` (as row indices, smaller first) within ``max_hamming`` bits, blockwise over
    the upper triangle of the distance matrix (about 4M distances, 32 MB, per block)."""
    out = [np.empty((0, 2), dtype=np.int64)]
    block = max(1, (1 << 22) // max(1, len(members)))
    for a in range(0, len(members), block):
        dist = np.bitwise_count(h[a : a + block, None] ^ h[None, a:])
        ii, jj = np.nonzero(dist <= max_hamming)
        keep = jj > ii
        ri, rj = members[a + ii[keep]], members[a + jj[keep]]
        out.append(np.stack([np.minimum(ri, rj), np.maximum(ri, rj)], axis=1))
    return np.concatenate(out)


def connected_components(n: int, pairs: np.ndarray | list[tuple[int, int]]) -> np.ndarray:
    """Component label per node 0..n-1 of the undirected graph ``pairs`` (union-find with path halving).
    The label is the smallest node index in the component, so it does not depend on the pairs' order."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


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

    Rows whose pHash bucket held more than ``max_bucket`` rows in at least half of the LSH bands (for a
    multi-image record: at every image position) get ``mass_duplicate`` and no group: blank or flat images
    (pHash 0) and images replicated thousands of times ("photo no longer available" placeholders), which
    would otherwise chain into one giant group and cost a quadratic search. A bucket is oversized above
    ``max_bucket`` rows, or above four times the average bucket (rows / 2**band_bits) when the dataset is so
    large that this is more, so ordinary buckets of a large dataset are still searched. Records of several
    images are searched per image count and position (candidates from any position, verified on all).

    ``max_hamming`` default 8 (9 bands of 7 bits), measured on 15 dev photos: copies resized to 50% or 25%,
    re-encoded at JPEG quality 40 or 20, brightened or darkened 5-20% are within 4 bits of the original, crops
    of 1% per side within 6, crops of 2% (per side, or off one side) within 8 for 14 of 15 photos (10 and 12
    for the last); distinct photos and their quadrants (2,775 pairs) are 18 bits or more apart. Between
    unrelated images the chance of a distance <= 8 is 7e-10 (360 false pairs per million rows, for ideal
    hashes) and grows 30-fold with each 2 bits more, so the default stays at 8. pHashes have 32 bits set:
    distances are even, 8 behaves as 9. The search compares about ``n_bands * rows**2 / 2**(band_bits + 1)``
    pairs; beyond a few million rows use ``max_hamming: 7`` (8 bands of 8 bits).
    """

    class Params(Params):
        max_hamming: int = Field(default=8, ge=0, le=_HASH_BITS // 2 - 1)
        max_bucket: int = Field(default=10_000, ge=2)
        exact: bool = True

    kind = "global"
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
        p = self.params
        ids = [str(i) for i in table["id"]]
        n = len(ids)
        n_bands, band_bits = lsh_bands(p.max_hamming)
        multi = table.get("phashes") or [None] * n
        by_count: dict[int, list[int]] = {}
        hash_lists: list[list[int]] = []
        for i, (h, hs) in enumerate(zip(table["phash"], multi, strict=True)):
            hash_lists.append(hs or ([h] if h is not None else []))
            if hash_lists[i]:
                by_count.setdefault(len(hash_lists[i]), []).append(i)
        mass = np.zeros(n, dtype=bool)
        edges = [np.empty((0, 2), dtype=np.int64)]
        for count, members in sorted(by_count.items()):
            rows = np.array(members, dtype=np.int64)
            hashes = np.array([hash_lists[i] for i in members], dtype=np.int64)
            cap = max(p.max_bucket, 4 * len(rows) >> band_bits)
            found, everywhere_mass = [], np.ones(len(rows), dtype=bool)
            for k in range(count):
                pairs, oversized = candidate_pairs(hashes[:, k], p.max_hamming, cap)
                found.append(pairs)
                everywhere_mass &= 2 * oversized >= n_bands
            pairs = np.unique(np.concatenate(found), axis=0)
            bits = hashes.view(np.uint64)  # bitwise_count of a signed int counts its absolute value
            close = (np.bitwise_count(bits[pairs[:, 0]] ^ bits[pairs[:, 1]]) <= p.max_hamming).all(axis=1)
            mass[rows] = everywhere_mass
            edges.append(rows[pairs[close]])
        sha = table["sha256"]
        if p.exact:
            first_of: dict[str, int] = {}
            exact = [(first_of.setdefault(s, i), i) for i, s in enumerate(sha) if s is not None]
            edges.append(np.array([e for e in exact if e[0] != e[1]], dtype=np.int64).reshape(-1, 2))
        links = np.concatenate(edges)
        links = links[~(mass[links[:, 0]] | mass[links[:, 1]])]
        labels = connected_components(n, links)

        widths, heights = table.get("width") or [0] * n, table.get("height") or [0] * n  # no image_check: ids
        area = [int(w or 0) * int(h or 0) for w, h in zip(widths, heights, strict=True)]
        keep_of: dict[int, int] = {}
        for i in sorted(range(n), key=lambda i: (-area[i], ids[i])):
            keep_of.setdefault(int(labels[i]), i)

        reasons: list[str | None] = [None] * n
        duplicate_of: list[str | None] = [None] * n
        for i in range(n):
            keep = keep_of[int(labels[i])]
            if mass[i]:
                reasons[i] = "mass_duplicate"
            elif keep != i:
                duplicate_of[i] = ids[keep]
                same_bytes = p.exact and sha[i] is not None and sha[i] == sha[keep]
                reasons[i] = "exact_duplicate" if same_bytes else "near_duplicate"
        out: Batch = {"drop_reason": reasons, "duplicate_of": duplicate_of}
        captions = self._merged_captions(table, ids, labels, keep_of, mass)
        if captions is not None:
            out["captions"] = captions
        return out

    @staticmethod
    def _merged_captions(table: Batch, ids: list[str], labels: np.ndarray, keep_of: dict[int, int],
                         mass: np.ndarray) -> list[list[str] | None] | None:
        """Per row: for a kept row, the distinct captions of the rows with its bytes (its own first, then by
        id); for the others their own ``captions``. None when no row has or gains more than one caption."""
        n = len(ids)
        texts = table.get("text") or [None] * n
        own = list(table.get("captions") or [None] * n)
        sha = table["sha256"]
        captions_of = [list(c) if c else [t] if t else [] for c, t in zip(own, texts, strict=True)]
        merged = own[:]
        copies: dict[int, list[int]] = {}
        for i in range(n):
            keep = keep_of[int(labels[i])]
            if not mass[i] and keep != i and sha[i] is not None and sha[i] == sha[keep]:
                copies.setdefault(keep, []).append(i)
        for keep, others in copies.items():
            found = list(dict.fromkeys(c for j in [keep, *sorted(others, key=ids.__getitem__)]
                                       for c in captions_of[j]))
            if len(found) > 1 or own[keep]:
                merged[keep] = found
        return merged if any(c is not None for c in merged) else None
