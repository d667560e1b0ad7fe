"""Decontamination: find training samples whose question text or image appears in an evaluation set.

Text: both sides are normalised (NFKC, case-folded, words only: punctuation, case and whitespace never
matter) and cut into word n-grams (``ngram`` words; an eval item shorter than that is one gram of its whole
length). A sample matches an eval item when the sample holds at least ``min_overlap`` of that item's
distinct n-grams, so an eval question copied into a longer prompt or document is caught too.

Images: an exact copy shares the SHA-256 of its bytes; a near copy (resized, re-encoded) has a 64-bit pHash
(``filters.dedup.phash64``, the same hash the dedup stage uses) within ``max_hamming`` bits. A flat image
(hash 0) only matches exactly.

The index is built in memory from (item, text) and (item, bytes) pairs; reading eval files is the caller's
business (pipeline/mix.py).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np

from filters.dedup import phash64

_WORD = re.compile(r"\w+")


def normalize_words(text: str) -> list[str]:
    """The words of a text, NFKC-normalised and case-folded (punctuation and spacing dropped)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def kgrams(words: list[str], k: int) -> set[tuple[str, ...]]:
    """The distinct k-word grams of `words` (none when there are fewer than k words)."""
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


@dataclass(frozen=True)
class Match:
    item: str  # the eval item that matched ("SET:line N" / "SET:relative/path.jpg")
    kind: str  # "text", "image_exact" or "image_near"
    score: float  # text: the fraction of the item's n-grams found; image: hamming distance in bits


class EvalIndex:
    """Eval questions and images to match training samples against."""

    def __init__(self, ngram: int = 8, min_overlap: float = 0.5, max_hamming: int = 4) -> None:
        self.ngram, self.min_overlap, self.max_hamming = ngram, min_overlap, max_hamming
        self._grams: dict[tuple[str, ...], list[int]] = {}
        self._gram_count: list[int] = []
        self._text_items: list[str] = []
        self._lengths: set[int] = set()
        self._sha: dict[str, str] = {}
        self._phash: list[int] = []
        self._image_items: list[str] = []
        self._phash_array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._text_items) + len(self._sha)

    def add_text(self, item: str, text: str) -> None:
        words = normalize_words(text)
        if not words:
            return
        k = min(self.ngram, len(words))
        grams = kgrams(words, k)
        index = len(self._text_items)
        self._text_items.append(item)
        self._gram_count.append(len(grams))
        self._lengths.add(k)
        for g in grams:
            self._grams.setdefault(g, []).append(index)

    def add_image(self, item: str, data: bytes) -> None:
        """Index one eval image (ValueError / OSError from PIL when the bytes are not an image)."""
        h = phash64(data)
        self._sha.setdefault(hashlib.sha256(data).hexdigest(), item)
        if h:
            self._phash.append(h)
            self._image_items.append(item)

    def match_text(self, text: str | None) -> Match | None:
        """The eval item sharing the largest fraction (>= min_overlap) of its n-grams with `text`."""
        if not text or not self._text_items:
            return None
        words = normalize_words(text)
        hits: Counter[int] = Counter()
        for k in self._lengths:
            for g in kgrams(words, k):
                hits.update(self._grams.get(g, ()))
        best = None
        for index, n in hits.items():
            score = n / self._gram_count[index]
            if score >= self.min_overlap and (best is None or (score, -index) > (best[0], -best[1])):
                best = (score, index)
        return None if best is None else Match(self._text_items[best[1]], "text", round(best[0], 4))

    def match_image(self, data: bytes) -> Match | None:
        """The eval image this one copies exactly, or the nearest within max_hamming bits of pHash."""
        exact = self._sha.get(hashlib.sha256(data).hexdigest())
        if exact is not None:
            return Match(exact, "image_exact", 0.0)
        if not self._phash:
            return None
        try:
            h = phash64(data)
        except (OSError, ValueError):  # not an image: nothing to compare
            return None
        if not h:
            return None
        if self._phash_array is None or len(self._phash_array) != len(self._phash):
            self._phash_array = np.array(self._phash, dtype=np.uint64)
        distance = np.bitwise_count(self._phash_array ^ np.uint64(h))
        best = int(np.argmin(distance))
        if distance[best] > self.max_hamming:
            return None
        return Match(self._image_items[best], "image_near", float(distance[best]))
