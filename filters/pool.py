"""Global decisions shared by the model-scored stages (CLIP score, relevance): one cut over the scored pool,
and the best-scoring caption of a row with several."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pool_cut(ids: Sequence[str], scores: Sequence[float | None], reason: str, *, min_score: float | None = None,
             keep_top_fraction: float | None = None, reasons: list[str | None] | None = None) -> list[str | None]:
    """Drop reasons for a threshold (`min_score`: below it is dropped) or a top fraction (the best
    ``round(fraction * scored rows)``, ties broken by the smaller id). Unscored rows (None / NaN) and rows that
    already have a reason in ``reasons`` are neither ranked nor dropped."""
    reasons = list(reasons) if reasons is not None else [None] * len(ids)
    scored = [i for i, s in enumerate(scores) if s is not None and not math.isnan(s) and reasons[i] is None]
    if min_score is not None:
        for i in scored:
            if scores[i] < min_score:
                reasons[i] = reason
    elif keep_top_fraction is not None:
        n_keep = math.floor(keep_top_fraction * len(scored) + 0.5)
        for i in sorted(scored, key=lambda i: (-scores[i], ids[i]))[n_keep:]:
            reasons[i] = reason
    return reasons


def best_captions(texts: Sequence[str | None], captions: Sequence[list[str] | None],
                  each: Sequence[list[float] | None]) -> list[Any]:
    """Per row, the caption with the highest score (the first of equal ones); the row's text when it was not
    scored caption by caption."""
    return [caps[e.index(max(e))] if e else text for text, caps, e in zip(texts, captions, each, strict=True)]
