"""Caption text: normalisation, then quality filters whose ratios are kept as score columns."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

from pydantic import Field

from filters.base import Batch, Params, Stage

SCORE_COLUMNS = (
    "caption_words", "caption_chars", "word_rep_ratio", "char_rep_ratio",
    "special_char_ratio", "boilerplate", "language", "language_score",
)  # fmt: skip
_FTFY_CONFIG: Any = None

_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>", re.DOTALL)
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
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
    """Repair a web caption: mojibake (ftfy), HTML tags and entities, URLs, invisible characters, runs of
    whitespace, and a CSV-quoted field (``"22"" Frozen Bubble Balloon"`` -> ``22" Frozen Bubble Balloon``).

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

    Reasons, first that applies:
    - ``empty_caption``: nothing left after normalisation (or no caption at all);
    - ``boilerplate_caption``: a file name, camera name, slug or generic word instead of a description
      (``drop_boilerplate``);
    - ``too_few_words`` / ``too_many_words``: ``caption_words`` outside [``min_words``, ``max_words``];
    - ``too_few_chars`` / ``too_many_chars``: ``caption_chars`` outside [``min_chars``, ``max_chars``];
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
        max_word_rep_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
        max_char_rep_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
        max_special_char_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
        drop_boilerplate: bool = True
        languages: list[str] | None = None
        min_language_score: float = Field(default=0.7, ge=0.0, le=1.0)

    kind = "map"
    batch_size = 256

    def score(self, batch: Batch) -> Batch:
        texts, metas = [], []
        cols: dict[str, list[Any]] = {k: [] for k in SCORE_COLUMNS}
        old_metas = batch.get("meta") or [None] * len(batch["text"])
        for raw, meta in zip(batch["text"], old_metas, strict=True):
            text = normalize_caption(raw)
            meta = dict(meta or {})
            if raw is not None and text != raw:
                meta["original_caption"] = raw
            texts.append(text)
            metas.append(meta)
            words = caption_words(text)
            lang, prob = identify_language(text)
            cols["caption_words"].append(len(words))
            cols["caption_chars"].append(len(text))
            cols["word_rep_ratio"].append(round(word_repetition_ratio(words), 4))
            cols["char_rep_ratio"].append(round(char_repetition_ratio(text), 4))
            cols["special_char_ratio"].append(round(special_char_ratio(text), 4))
            cols["boilerplate"].append(is_boilerplate(text))
            cols["language"].append(lang)
            cols["language_score"].append(round(prob, 4))
        return {"text": texts, "meta": metas, **cols}

    def decide(self, batch: Batch) -> list[str | None]:
        p = self.params
        allowed = set(p.languages) if p.languages is not None else None
        reasons: list[str | None] = []
        for i in range(len(batch["id"])):
            words, chars = batch["caption_words"][i], batch["caption_chars"][i]
            if chars == 0:
                reason = "empty_caption"
            elif p.drop_boilerplate and batch["boilerplate"][i]:
                reason = "boilerplate_caption"
            elif words < p.min_words:
                reason = "too_few_words"
            elif words > p.max_words:
                reason = "too_many_words"
            elif chars < p.min_chars:
                reason = "too_few_chars"
            elif chars > p.max_chars:
                reason = "too_many_chars"
            elif batch["word_rep_ratio"][i] > p.max_word_rep_ratio:
                reason = "word_repetition"
            elif batch["char_rep_ratio"][i] > p.max_char_rep_ratio:
                reason = "char_repetition"
            elif batch["special_char_ratio"][i] > p.max_special_char_ratio:
                reason = "special_characters"
            elif (
                allowed is not None
                and batch["language"][i] not in allowed
                and batch["language_score"][i] >= p.min_language_score
            ):
                reason = "language"
            else:
                reason = None
            reasons.append(reason)
        return reasons

    def score_columns(self) -> list[str]:
        return list(SCORE_COLUMNS)
