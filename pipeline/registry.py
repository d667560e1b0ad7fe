"""The one visible table from recipe stage names to stage classes (a recipe may also name `module:Class`)."""

from __future__ import annotations

from filters.base import Stage
from filters.caption import CaptionCheck
from filters.clip import ClipScore
from filters.cot import CotGenerate, CotQuality, CotSelect, CotVerify, CotVisual
from filters.dedup import Dedup
from filters.image import ImageCheck
from filters.relevance import Relevance
from filters.text import CaptionText

STAGES: dict[str, type[Stage]] = {
    "image_check": ImageCheck,
    "caption_check": CaptionCheck,
    "caption_text": CaptionText,
    "dedup": Dedup,
    "clip_score": ClipScore,
    "relevance": Relevance,
    "cot_generate": CotGenerate,
    "cot_verify": CotVerify,
    "cot_quality": CotQuality,
    "cot_visual": CotVisual,
    "cot_select": CotSelect,
}
