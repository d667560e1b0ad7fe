"""The one visible table from recipe stage names to stage classes (a recipe may also name `module:Class`)."""

from __future__ import annotations

from filters.base import Stage
from filters.caption import CaptionCheck
from filters.image import ImageCheck

STAGES: dict[str, type[Stage]] = {
    "image_check": ImageCheck,
    "caption_check": CaptionCheck,
}
