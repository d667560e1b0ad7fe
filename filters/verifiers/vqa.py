"""VQA answers: ``vqa_accuracy`` (VQA v2), ``anls`` (OCR answers, DocVQA / ST-VQA) and ``mc_letter``."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from filters.verifiers.answer import answer_line

# VQA v2's answer normalisation (the evaluation script of Antol et al. / Goyal et al.): punctuation, periods
# not before a digit, number words up to ten, articles, and apostrophe-less contractions restored.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # the script's period pattern, as it behaves
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's "
    "should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're "
    "there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's "
    "won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _spellings(word: str) -> set[str]:
    """``couldn't've`` -> every spelling with one or more of its apostrophes left out."""
    parts = word.split("'")
    out = set()
    for keep in itertools.product(("'", ""), repeat=len(parts) - 1):
        out.add(parts[0] + "".join(k + p for k, p in zip(keep, parts[1:], strict=True)))
    out.discard(word)
    return out


_CONTRACTIONS = {s: w for w in _CONTRACTED for s in _spellings(w)}


def normalize_vqa_answer(answer: str) -> str:
    """The VQA v2 evaluation's normalisation of one answer."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    strip_all = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCT:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA v2 accuracy: for each of the (10) human answers, min(1, #other humans who gave the prediction / 3),
    averaged; prediction and answers normalised alike (``normalize_vqa_answer``). No answers -> 0."""
    if not answers:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    matches = sum(g == pred for g in gts)
    # leave-one-out: the left-out answer is a match or not; the others' matches are counted
    return sum(min(1.0, (matches - (g == pred)) / 3) for g in gts) / len(gts)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5, max_chars: int = 2000) -> float:
    """Average Normalised Levenshtein Similarity of one prediction (Biten et al. 2019): the best over the
    answers of 1 - distance / longer length, on lower-cased, whitespace-collapsed text; 0 when that normalised
    distance is ``threshold`` or more. Texts over ``max_chars`` score 0 (not compared: the cost is quadratic)."""
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for answer in answers:
        gold = " ".join(answer.lower().split())
        if not pred and not gold:
            return 1.0
        if max(len(pred), len(gold)) > max_chars:
            continue
        dist = levenshtein(pred, gold) / max(len(pred), len(gold))
        best = max(best, 1.0 - dist if dist < threshold else 0.0)
    return best


_LETTER = re.compile(r"^[\s*_(\[]*([A-Z])[*_]*(?:[.:)\]]|\s*$)")
_OPTION_IS = re.compile(r"\b(?:option|choice)\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)


def mc_letter(text: str | None, n_options: int) -> str | None:
    """The chosen option letter (``A``..) of a multiple-choice answer, or None when it cannot be read: the
    ``Answer:`` line (or the whole text when it is a single line) must be one letter or start with one and a
    delimiter (``B``, ``(B)``, ``B.``, ``**B**``, ``B) text``; not ``A cat``) or say ``option B``; a letter past ``n_options`` is None. Never a guess."""
    if not text or n_options < 1:
        return None
    answer = answer_line(text)
    if answer is None:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            return None
        answer = lines[0]
    m = _LETTER.match(answer) or _OPTION_IS.search(answer)
    if m is None:
        return None
    letter = m.group(1).upper()
    return letter if ord(letter) - ord("A") < min(n_options, 26) else None
