"""Caption normalisation and filters, on real LAION-style alt text (tests/data/web_alttext, from img2dataset)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from filters.text import (
    CaptionText,
    caption_words,
    char_repetition_ratio,
    is_boilerplate,
    normalize_caption,
    word_repetition_ratio,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "web_alttext" / "test_1000.parquet"


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return pq.read_table(DATA, columns=["TEXT"]).column("TEXT").to_pylist()


def run(texts: list[str | None], **params) -> tuple[dict[str, list], list[str | None]]:
    stage = CaptionText(CaptionText.Params(**params))
    batch = {"id": [f"{i:016x}" for i in range(len(texts))], "text": list(texts), "meta": [{}] * len(texts)}
    cols = stage.score(batch)
    return cols, stage.decide({**batch, **cols})


def reason_of(text: str | None, **params) -> str | None:
    return run([text], **params)[1][0]


def test_real_captions_are_in_the_sample(captions):
    for text in (*REAL_REASONS, *REPAIRED, *KEPT):
        assert text in captions, text


REAL_REASONS = {
    "7672-eco-cotton-culottes-87-lfs.jpg": "boilerplate_caption",
    "shaker-heritage-barn-wedding-day007.jpg": "boilerplate_caption",
    "my-sisters-prayer": "boilerplate_caption",
    "Image is loading NWT-Polo-Sport-Ralph-Lauren-Drawstring-Bag-Backpack- 8de65cd444aa4": "boilerplate_caption",
    "apple-watch": "too_few_words",
    "hitachi-solutions.jp": "too_few_words",
    "Vitara See More Kurti with Pant Wholesale Catalog 8 Pcs 6 - Vitara See More Kurti with Pant Wholesale "
    "Catalog 8 Pcs": "word_repetition",
    "Election Reform : Politics and Policy :  Politics and Policy": "word_repetition",
    "pool icon linear on white vector image vector image": "char_repetition",
    "Popular Bathroom Designs Interior Design Gallery Star Bathroom Decor Bathroom Decor": "char_repetition",
}

KEPT = [
    "Banded Dragonfly, Guyana, South America",
    "Big Ben clock against autumn leaves in London, England, UK",
    "Matt Damon",
    "山水双挖 (landscape) (2 works) by zhang fuyang",
    "Обои snow, cars, white carsЗима, снег, автомобили, Bugatti Veyron, Bugatti Veyron",
    "★ Elder Scrolls Online ★ - L36 A Novel Idea",
    "Scorching June 14 for Alabama.jpg",
    "Roos en Lieke in de bus",
]


@pytest.mark.parametrize("text,reason", REAL_REASONS.items())
def test_real_caption_dropped_with_reason(text, reason):
    assert reason_of(text) == reason


@pytest.mark.parametrize("text", KEPT)
def test_real_captions_kept_by_default(text):
    assert reason_of(text) is None


def test_too_many_words_and_chars_on_real_keyword_stuffing(captions):
    stuffed = next(t for t in captions if t.startswith("Cam Newton wife, age, weight"))
    cols, _ = run([stuffed])
    assert cols["caption_words"][0] == 204 and cols["caption_chars"][0] > 1300
    assert reason_of(stuffed) is None  # under the 256 words / 2,000 characters defaults
    assert reason_of(stuffed, max_words=128) == "too_many_words"
    assert reason_of(stuffed, max_chars=1000) == "too_many_chars"


def test_language_filter_drops_only_confident_other_languages(captions):
    _, reasons = run(captions, languages=["en"])
    dropped = sorted(t for t, r in zip(captions, reasons, strict=True) if r == "language")
    assert dropped == sorted(
        [
            "Roos en Lieke in de bus",
            "Socionext hat den Display-Controller SC1711 für den Betrieb von Head-Up-Displays optimiert.",
            "NBA Draft 2019 : un enfant de Guinée Conakry vers les Washington Wizards mais pas que...",
            "CHIMERA GAMESのアーカイブ画像:Vol.7FMX NIGHT SESSION",
            "TRANSFORMERS : L'ÂGE DE L'EXTINCTION - Featurette « TOURNAGE EN CHINE » LE 16 JUILLET 2014 AU CINEMA",
        ]
    )
    assert reason_of("Roos en Lieke in de bus", languages=["en", "nl"]) is None
    cols, _ = run(
        ["Socionext hat den Display-Controller SC1711 für den Betrieb von Head-Up-Displays optimiert."]
    )
    assert cols["language"] == ["de"] and 0.7 <= cols["language_score"][0] <= 1.0


def test_default_drops_on_the_whole_sample(captions):
    _, reasons = run(captions)
    assert Counter(reasons) == {
        None: 964,
        "boilerplate_caption": 26,
        "word_repetition": 4,
        "char_repetition": 4,
        "too_few_words": 2,
    }


def test_synthetic_reasons_the_sample_has_no_example_of():
    assert reason_of(None) == "empty_caption"
    assert reason_of("<br/> https://example.com/a.jpg ") == "empty_caption"
    assert reason_of("a b") == "too_few_chars"
    assert reason_of("SALE!!! ★★★ NOW ★★★ ###") == "special_characters"
    assert reason_of("IMG_1234.jpg") == "boilerplate_caption"
    assert reason_of("Untitled") == "boilerplate_caption"
    assert reason_of("click here to enlarge") == "boilerplate_caption"
    assert reason_of("IMG_1234.jpg", drop_boilerplate=False) == "too_few_words"


REPAIRED = {
    "<a href='http://nymetroparents.com/listing/Yale-New-Haven-Children-s-Hospital-'>Yale-New Haven Children's "
    "Hospital </a>Ribbon Cutting Ceremony.": "Yale-New Haven Children's Hospital Ribbon Cutting Ceremony.",
    "Orchid Jungle<br>Hawaiian Dresses<br>100% Rayon<br>": "Orchid Jungle Hawaiian Dresses 100% Rayon",
    "<b>Game 20: at Denver 109, Clippers 104</b>": "Game 20: at Denver 109, Clippers 104",
    "&quot;Keep Calm&quot; - Blue Canvas": '"Keep Calm" - Blue Canvas',
    "Researcher holding two skulls of the never seen Truong Son muntjac (&lt;i&gt;Truong Son ... / &copy;: "
    "WWF-UK": "Researcher holding two skulls of the never seen Truong Son muntjac (Truong Son ... / ©: WWF-UK",
    "Getting Ready http://www.maharaniweddings.com/gallery/photo/41206 @houseoftalent1": "Getting Ready @houseoftalent1",
    "Hartford\xa0Slim-Fit Linen Trousers": "Hartford Slim-Fit Linen Trousers",
    "\u200bBappi Lahrri Records for New Film by Govind Sakariya": "Bappi Lahrri Records for New Film by Govind Sakariya",
    "Closeup of burning camping bonfire Stock Photo - Royalty-Free, Artist: naumoid                       , Code: "
    "400-04986850": "Closeup of burning camping bonfire Stock Photo - Royalty-Free, Artist: naumoid , Code: "
    "400-04986850",
    '"22"" Frozen Bubble Balloon"': '22" Frozen Bubble Balloon',
    '"KISS ""DESTROYER"""': 'KISS "DESTROYER"',
}


@pytest.mark.parametrize("raw,fixed", REPAIRED.items())
def test_normalisation_repairs_real_captions(raw, fixed):
    assert normalize_caption(raw) == fixed


def test_normalisation_fixes_mojibake_and_leaves_correct_text_alone():
    # the sample holds no mojibake; these are the classic UTF-8-read-as-cp1252 cases
    assert normalize_caption("cafÃ© au lait") == "café au lait"
    assert normalize_caption("Donâ€™t Stop Believin’") == "Don’t Stop Believin’"
    for text in ("Maverick Viñales, Aleix Espargaro", "“Smart quotes” stay", "a < b and c > d", "ＡＢＣ"):
        assert normalize_caption(text) == text


def test_original_caption_kept_in_meta_only_when_changed():
    stage = CaptionText()
    batch = {
        "id": ["0" * 16, "1" * 16],
        "text": ["&quot;Keep Calm&quot; - Blue Canvas", "Hogsmeade Station"],
        "meta": [{"url": "u"}, None],
    }
    cols = stage.score(batch)
    assert cols["text"] == ['"Keep Calm" - Blue Canvas', "Hogsmeade Station"]
    assert cols["meta"] == [{"url": "u", "original_caption": "&quot;Keep Calm&quot; - Blue Canvas"}, {}]
    assert batch["meta"][0] == {"url": "u"}  # the input is not mutated


def test_score_columns_are_the_documented_ones():
    cols, _ = run(["Hogsmeade Station"])
    assert set(cols) == {"text", "meta", *CaptionText().score_columns()}
    assert cols["caption_words"] == [2] and cols["caption_chars"] == [17] and cols["boilerplate"] == [False]


def test_helpers():
    assert caption_words("一只小猫 on grass!") == ["一", "只", "小", "猫", "on", "grass!"]
    assert caption_words(" -- | ") == []
    assert word_repetition_ratio("a b c a b c".split()) == 0.5
    assert word_repetition_ratio("one two".split()) == 0.0
    assert char_repetition_ratio("short") == 0.0
    assert char_repetition_ratio("abcdefghijk" * 5) > CaptionText.Params().max_char_rep_ratio
    assert (
        is_boilerplate("DSC_0036") and is_boilerplate("photo 3") and is_boilerplate("Screenshot_2020-01-01")
    )
    assert not is_boilerplate("Scorching June 14 for Alabama.jpg") and not is_boilerplate("Yamaha MT-09 SP")


COSTLY = ("word_rep_ratio", "char_rep_ratio", "special_char_ratio", "boilerplate", "language", "language_score")


def test_length_caps_run_before_any_costly_measure(monkeypatch):
    """A multi-megabyte caption is rejected on its length alone: it is not normalised, and no repetition,
    symbol, boilerplate or language measure runs on it (issue 9: 50 MB took 65 s before too_many_words)."""
    import filters.text as text_module

    def costly(*_a, **_k):
        raise AssertionError("a costly measure ran on a caption over a length cap")

    for name in ("normalize_caption", "word_repetition_ratio", "char_repetition_ratio", "special_char_ratio",
                 "is_boilerplate", "identify_language"):
        monkeypatch.setattr(text_module, name, costly)
    huge = "buy cheap shoes online " * 200_000  # 4.6 MB
    cols, reasons = run([huge])
    assert reasons == ["too_many_chars"] and cols["caption_chars"] == [len(huge)]
    assert all(cols[k] == [None] for k in (*COSTLY, "caption_words"))
    assert cols["text"] == [huge] and "original_caption" not in cols["meta"][0]


def test_caps_after_normalising_skip_the_costly_measures():
    long_text = "a fine red bicycle leaning on a wall, " * 100  # 3,800 characters
    many_words = " ".join(f"w{i}" for i in range(300))  # 300 words, 1,389 characters
    cols, reasons = run([long_text, many_words, "<b>a fine red bicycle</b>"])
    assert reasons == ["too_many_chars", "too_many_words", None]
    for k in COSTLY:
        assert cols[k][:2] == [None, None] and cols[k][2] is not None, k
    assert cols["caption_words"] == [None, 300, 4]


def test_bidirectional_controls_are_stripped():
    spoofed = "\u202egnp.exe\u202c holiday \u2066photo\u2069 of \u202aa\u202b \u202cbeach\u202d at \u200fdusk\u200e"
    assert normalize_caption(spoofed) == "gnp.exe holiday photo of a beach at dusk"
    for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        assert normalize_caption(f"a red{c} bicycle") == "a red bicycle", hex(ord(c))
    assert normalize_caption("עברית and English") == "עברית and English"  # right-to-left text itself stays


def test_each_caption_of_a_row_is_judged():
    stage = CaptionText()
    batch = {
        "id": ["0" * 16, "1" * 16, "2" * 16],
        "text": ["IMG_1234.jpg", "Untitled", "a red bicycle on a wall"],
        "captions": [
            ["IMG_1234.jpg", "a dog <i>running</i> on the beach", "a dog running on the beach", "dog"],
            ["Untitled", "apple-watch"],
            None,
        ],
        "meta": [{}, {}, {}],
    }
    cols = stage.score(batch)
    reasons = stage.decide({**batch, **cols})
    assert reasons == [None, "boilerplate_caption", None]
    # the bad captions leave the list; the first good one is the text, its scores the row's
    assert cols["text"][0] == "a dog running on the beach" and cols["captions"][0] == ["a dog running on the beach"]
    assert cols["caption_words"][0] == 6
    assert cols["meta"][0]["dropped_captions"] == [
        {"caption": "IMG_1234.jpg", "reason": "boilerplate_caption"}, {"caption": "dog", "reason": "too_few_words"}]
    assert cols["meta"][0]["original_caption"] == "a dog <i>running</i> on the beach"
    # none passes: the row goes, with its first caption's reason
    assert [d["reason"] for d in cols["meta"][1]["dropped_captions"]] == ["boilerplate_caption", "too_few_words"]
    assert cols["captions"][2] is None and cols["text"][2] == "a red bicycle on a wall"
