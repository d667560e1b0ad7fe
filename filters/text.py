"""Caption text: normalisation, then quality filters whose ratios are kept as score columns."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

from pydantic import Field, model_validator

from filters.base import Batch, Params, Stage

SCORE_COLUMNS = (
    "caption_words", "caption_chars", "word_rep_ratio", "char_rep_ratio",
    "special_char_ratio", "boilerplate", "language", "language_score",
)  # fmt: skip
_FTFY_CONFIG: Any = None

_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>", re.DOTALL)
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
# zero-width characters, soft hyphen, BOM, and the bidirectional controls (marks U+200E/U+200F/U+061C,
# embeddings and overrides U+202A-U+202E, isolates U+2066-U+2069) that can reorder how a caption displays
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff\u00ad\u061c]")
_WS = re.compile(r"\s+")
_OPEN_SPACE = re.compile(r"([(\[{]) ")
_SPACE_CLOSE = re.compile(r" ([)\]}])")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_OR_RUN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")

_IMAGE_EXT = r"(?:jpe?g|png|gif|webp|bmp|tiff?|heic|avif|svg)"
_FILE_NAME = re.compile(rf"^\S+\.{_IMAGE_EXT}$", re.IGNORECASE)
_CAMERA_NAME = re.compile(
    rf"^(?:img|dsc|dscn|dscf|dcim|pxl|mvimg|gopr|screenshot|screen shot|photo|image|pic)"
    rf"[ _-]?\d[\d _-]*(?:\.{_IMAGE_EXT})?$",
    re.IGNORECASE,
)
_SLUG = re.compile(r"^[^\W_]+(?:[-_]+[^\W_]+){2,}[-_]?$")
_GENERIC = frozenset(
    {
        "image", "images", "img", "photo", "photos", "photograph", "picture", "pictures", "pic", "pics",
        "thumbnail", "thumb", "untitled", "untitled image", "untitled design", "no image", "no photo",
        "no image available", "image not available", "image not found", "image unavailable", "placeholder",
        "default", "default image", "logo", "icon", "banner", "header", "loading", "null", "none",
        "undefined", "alt", "alt text", "n a", "na", "click here", "click to enlarge", "click to view",
        "product image", "main image", "featured image", "image description", "screenshot",
    }
)  # fmt: skip
_BOILERPLATE_PREFIX = re.compile(
    r"^(?:click here|click to (?:enlarge|view|zoom)|image is loading)\b", re.IGNORECASE
)


def normalize_caption(text: str | None) -> str:
    """Repair a web caption: mojibake (ftfy), HTML tags and entities, URLs, invisible characters
    (zero-width, soft hyphen, BOM, bidirectional controls), runs of whitespace, and a CSV-quoted field (``"22"" Frozen Bubble Balloon"`` -> ``22" Frozen Bubble Balloon``).

    ftfy runs with quote uncurling, width folding and ligature folding off, so correct text is left as it is.
    Entities are unescaped twice around tag removal, so escaped tags (``&lt;i&gt;``) go too.
    """
    if not text:
        return ""
    import ftfy

    global _FTFY_CONFIG
    if _FTFY_CONFIG is None:
        _FTFY_CONFIG = ftfy.TextFixerConfig(
            unescape_html=False, uncurl_quotes=False, fix_character_width=False, fix_latin_ligatures=False
        )
    text = ftfy.fix_text(text, _FTFY_CONFIG)
    for _ in range(2):
        text = _TAG.sub(" ", text)
        text = html.unescape(text)
    text = _URL.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = _WS.sub(" ", text).strip()
    text = _OPEN_SPACE.sub(r"\1", _SPACE_CLOSE.sub(r"\1", text))
    return _unquote_csv(text)


def _unquote_csv(text: str) -> str:
    """``"a ""b"" c"`` -> ``a "b" c`` when the whole caption is one CSV-quoted field (every inner quote doubled)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if '"' in inner and '"' not in inner.replace('""', ""):
            return inner.replace('""', '"').strip()
    return text


def caption_words(text: str) -> list[str]:
    """Whitespace tokens holding a letter or digit; each Han/kana character counts as a word."""
    words = []
    for token in text.split():
        for part in _CJK_OR_RUN.findall(token):
            if any(c.isalnum() for c in part):
                words.append(part)
    return words


def word_repetition_ratio(words: list[str], n: int = 3) -> float:
    """Fraction of the words' characters inside repeated word n-grams (Gopher, Rae et al. 2021; the
    ``find_all_duplicate`` scan of datatrove's GopherRepetitionFilter), on lower-cased, punctuation-stripped
    words."""
    norm = [w.strip("\"'.,;:!?()[]{}|-–—").lower() for w in words]
    norm = [w for w in norm if w]
    total = sum(len(w) for w in norm)
    if total == 0 or len(norm) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeated, i = 0, 0
    while i <= len(norm) - n:
        gram = tuple(norm[i : i + n])
        if gram in seen:
            repeated += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated / total


def char_repetition_ratio(text: str, n: int = 10) -> float:
    """Share of character n-gram occurrences taken by the most frequent repeated n-grams (at most
    sqrt(#distinct) of them): the character repetition ratio of BigScience ROOTS / data-juicer."""
    text = text.lower()
    if len(text) < n:
        return 0.0
    freqs = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    n_repeated = sum(1 for f in freqs if f > 1)
    k = min(int(len(freqs) ** 0.5), n_repeated)
    return sum(freqs[:k]) / sum(freqs)


def special_char_ratio(text: str) -> float:
    """Fraction of the non-space characters that are neither letters, marks nor digits (punctuation,
    symbols, emoji)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    special = sum(1 for c in chars if not (c.isalnum() or unicodedata.category(c).startswith("M")))
    return special / len(chars)


def is_boilerplate(text: str) -> bool:
    """Alt text that describes nothing: a file name (``IMG_1234.jpg``, ``7672-eco-cotton-culottes-87-lfs.jpg``),
    a camera/screenshot name, a URL slug of three or more joined words (``my-sisters-prayer``), a generic word
    ("image", "photo", "untitled", "click here" ...) or a "click here" / "Image is loading" prefix."""
    t = text.strip()
    if not t:
        return False
    if _FILE_NAME.match(t) or _CAMERA_NAME.match(t) or _SLUG.match(t) or _BOILERPLATE_PREFIX.match(t):
        return True
    bare = " ".join(re.sub(r"[\W_\d]+", " ", t.lower()).split())
    return bare in _GENERIC


@lru_cache(maxsize=1)
def _language_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability from py3langid's bundled model (no download); ("und", 0.0) if empty."""
    if not text.strip():
        return "und", 0.0
    lang, prob = _language_identifier().classify(text.lower())
    return str(lang), float(prob)


class CaptionText(Stage):
    """Normalise the caption, then drop captions that say little or are not text.

    Score: ``text`` is replaced by ``normalize_caption(text)`` and ``meta["original_caption"]`` keeps the
    original when it changed; columns ``caption_words``, ``caption_chars``, ``word_rep_ratio`` (characters in
    repeated word 3-grams, Gopher), ``char_rep_ratio`` (char 10-grams, BigScience ROOTS), ``special_char_ratio``,
    ``boilerplate`` (bool), ``language`` / ``language_score`` (py3langid, normalised probability).

    Cheap length caps come first and stop the measuring: a caption longer than ``max_raw_chars`` as it came is
    not even normalised, one over ``max_chars`` or ``max_words`` after normalising gets no repetition, symbol,
    boilerplate or language measure (those columns stay null). So a multi-megabyte caption costs a length
    check, not minutes of n-gram counting.

    Several captions of one image (a ``captions`` list column, the first being ``text``, as ``dedup`` leaves
    on the row it keeps): each is normalised and judged alone; those that fail leave the list (with their
    reason in ``meta["dropped_captions"]``), ``text`` becomes the first that passes and the score columns
    are its own. The row is dropped only when none passes, with the first caption's reason.

    Reasons, first that applies:
    - ``empty_caption``: nothing left after normalisation (or no caption at all);
    - ``too_many_chars``: over ``max_raw_chars`` as it came, or ``caption_chars`` over ``max_chars``;
    - ``too_many_words``: ``caption_words`` over ``max_words``;
    - ``boilerplate_caption``: a file name, camera name, slug or generic word instead of a description
      (``drop_boilerplate``);
    - ``too_few_words`` / ``too_few_chars``: under ``min_words`` / ``min_chars``;
    - ``word_repetition``: ``word_rep_ratio`` > ``max_word_rep_ratio`` (SEO keyword stuffing);
    - ``char_repetition``: ``char_rep_ratio`` > ``max_char_rep_ratio``;
    - ``special_characters``: ``special_char_ratio`` > ``max_special_char_ratio``;
    - ``language``: ``languages`` is set and the caption is identified as another language with
      ``language_score`` >= ``min_language_score``; a less certain identification keeps the caption. Short
      alt text is often misidentified (py3langid labels 18% of the sample's mostly English captions as
      something else, Nigerian Pidgin or Luxembourgish for product titles, nearly all below 0.7; at 0.7,
      ``languages: [en]`` drops exactly the 5 French, German, Dutch and Japanese captions). The default
      ``languages: null`` keeps every language (Qwen-VL is multilingual).

    Defaults were read off 1,000 real LAION-style alt texts (tests/data/web_alttext, from img2dataset): they
    drop 36 (26 file names and slugs, 4 word- and 4 char-repetition SEO captions, 2 single words). The word
    and character limits and the special-character ratio never fire there (longest caption: a 204-word
    keyword list; highest special-character ratio 0.18); they stop pathological input.
    """

    class Params(Params):
        min_words: int = Field(default=2, ge=0)
        max_words: int = Field(default=256, ge=1)
        min_chars: int = Field(default=4, ge=0)
        max_chars: int = Field(default=2000, ge=1)
        max_raw_chars: int = Field(default=100_000, ge=1)
        max_word_rep_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
        max_char_rep_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
        max_special_char_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
        drop_boilerplate: bool = True
        languages: list[str] | None = None
        min_language_score: float = Field(default=0.7, ge=0.0, le=1.0)

        @model_validator(mode="after")
        def _raw_cap_above_cap(self) -> CaptionText.Params:
            if self.max_raw_chars < self.max_chars:
                raise ValueError(f"max_raw_chars ({self.max_raw_chars}) must be at least max_chars "
                                 f"({self.max_chars})")
            return self

    kind = "map"
    batch_size = 256

    def measure(self, raw: str | None) -> tuple[str, dict[str, Any]]:
        """The normalised caption and its score columns, measured cheapest first: a caption over a length
        cap gets no further (costly) measure, those columns stay None (``decide`` never reads them)."""
        p = self.params
        cols: dict[str, Any] = dict.fromkeys(SCORE_COLUMNS)
        if raw is not None and len(raw) > p.max_raw_chars:  # not worth normalising
            cols["caption_chars"] = len(raw)
            return raw, cols
        text = normalize_caption(raw)
        cols["caption_chars"] = len(text)
        if not text or len(text) > p.max_chars:
            return text, cols
        words = caption_words(text)
        cols["caption_words"] = len(words)
        if len(words) > p.max_words:
            return text, cols
        lang, prob = identify_language(text)
        cols.update(
            word_rep_ratio=round(word_repetition_ratio(words), 4),
            char_rep_ratio=round(char_repetition_ratio(text), 4),
            special_char_ratio=round(special_char_ratio(text), 4),
            boilerplate=is_boilerplate(text),
            language=lang,
            language_score=round(prob, 4),
        )
        return text, cols

    def reason(self, cols: dict[str, Any]) -> str | None:
        """The drop reason of one caption's score columns (None = keep); the order of ``measure``."""
        p = self.params
        words, chars = cols["caption_words"], cols["caption_chars"]
        if chars == 0:
            return "empty_caption"
        if chars > p.max_chars:
            return "too_many_chars"
        if words > p.max_words:
            return "too_many_words"
        if p.drop_boilerplate and cols["boilerplate"]:
            return "boilerplate_caption"
        if words < p.min_words:
            return "too_few_words"
        if chars < p.min_chars:
            return "too_few_chars"
        if cols["word_rep_ratio"] > p.max_word_rep_ratio:
            return "word_repetition"
        if cols["char_rep_ratio"] > p.max_char_rep_ratio:
            return "char_repetition"
        if cols["special_char_ratio"] > p.max_special_char_ratio:
            return "special_characters"
        if (p.languages is not None and cols["language"] not in p.languages
                and cols["language_score"] >= p.min_language_score):
            return "language"
        return None

    def score(self, batch: Batch) -> Batch:
        n = len(batch["text"])
        texts, metas = [], []
        cols: dict[str, list[Any]] = {k: [] for k in SCORE_COLUMNS}
        old_metas = batch.get("meta") or [None] * n
        old_captions = batch.get("captions") or [None] * n
        new_captions: list[list[str] | None] = []
        for raw, meta, captions in zip(batch["text"], old_metas, old_captions, strict=True):
            meta = dict(meta or {})
            raws = captions or [raw]
            judged = [(r, *self.measure(r)) for r in raws]
            reasons = [self.reason(scores) for _, _, scores in judged]
            passed = [j for j, why in zip(judged, reasons, strict=True) if why is None]
            chosen_raw, text, scores = (passed or judged)[0]
            if chosen_raw is not None and text != chosen_raw:
                meta["original_caption"] = chosen_raw
            if captions:
                dropped = [{"caption": r, "reason": why} for (r, _, _), why in zip(judged, reasons, strict=True) if why]
                if dropped:
                    meta["dropped_captions"] = dropped
                new_captions.append(list(dict.fromkeys(t for _, t, _ in passed)) or None)
            else:
                new_captions.append(None)
            texts.append(text)
            metas.append(meta)
            for k in SCORE_COLUMNS:
                cols[k].append(scores[k])
        out: Batch = {"text": texts, "meta": metas, **cols}
        if "captions" in batch:
            out["captions"] = new_captions
        return out

    def decide(self, batch: Batch) -> list[str | None]:
        return [self.reason({k: batch[k][i] for k in SCORE_COLUMNS}) for i in range(len(batch["id"]))]

    def score_columns(self) -> list[str]:
        return list(SCORE_COLUMNS)
