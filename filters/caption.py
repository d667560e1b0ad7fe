"""Caption presence check."""

from __future__ import annotations

from filters.base import Batch, Params, Stage


class CaptionCheckParams(Params):
    min_chars: int = 1


class CaptionCheck(Stage):
    """Drops rows whose caption is null, empty or only whitespace (`empty_caption`), or shorter than
    `min_chars` after stripping (`short_caption`). Score: `caption_chars`."""

    Params = CaptionCheckParams
    batch_size = 1024

    def score(self, batch: Batch) -> Batch:
        return {"caption_chars": [len(t.strip()) if isinstance(t, str) else 0 for t in batch["text"]]}

    def decide(self, batch: Batch) -> list[str | None]:
        reasons: list[str | None] = []
        for n in batch["caption_chars"]:
            reasons.append("empty_caption" if n == 0 else "short_caption" if n < self.params.min_chars else None)
        return reasons

    def score_columns(self) -> list[str]:
        return ["caption_chars"]
