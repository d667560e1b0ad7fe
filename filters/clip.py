"""CLIP score: cosine similarity of an image and its caption under an open_clip model, with a global cut."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from filters.base import Batch, Params, Stage
from filters.pool import best_captions, pool_cut

CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


class ClipScore(Stage):
    """Score image-caption agreement with open_clip, then keep the best over the whole pool.

    ``arch`` is an open_clip architecture name and ``checkpoint`` a local weights file (.bin/.pt/.pth/
    .safetensors); nothing is downloaded. OpenAI-trained weights need the ``-quickgelu`` architectures
    (``ViT-L-14-quickgelu``): a file loads silently into the wrong one, so ``check()`` warns when the
    checkpoint's name or format shows its source and the activation disagrees, and fails (one line, before the
    job) when the file does not load into the architecture at all (another model's weights).

    Score (actor pool, model loaded once per actor in ``setup``): ``clip_score``, the cosine similarity of the
    first image's and the caption's L2-normalised embeddings, in [-1, 1]; null for a row without image or
    caption, which the decision passes through. A row with several captions (a ``captions`` list, as
    ``dedup`` leaves on the copy it keeps) has every caption scored against its image, encoded once:
    ``clip_scores`` holds them (aligned with ``captions``), ``clip_score`` the best, and the decision makes
    the best-scoring caption (the first of equal ones) the row's ``text``. Taking the caption in the
    decision, from stored scores, lets ``regen-sft`` reuse them.

    Decision over the whole pool (reason ``clip_score_low``), at most one of:
    - ``min_clip_score``: drop scores below it (LAION-5B used 0.28 with ViT-B/32);
    - ``keep_top_fraction``: keep the best ``round(fraction * scored rows)``, ties broken by the smaller id
      (DataComp's CLIP-score baseline keeps the top 30% of the pool by OpenAI ViT-L/14 score).
    With neither, the stage only scores.
    """

    class Params(Params):
        arch: str = "ViT-L-14-quickgelu"
        checkpoint: str | None = None
        min_clip_score: float | None = Field(default=None, ge=-1.0, le=1.0)
        keep_top_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
        device: str = "cpu"
        encode_batch_size: int = Field(default=64, ge=1)

        @model_validator(mode="after")
        def _one_rule(self) -> ClipScore.Params:
            if self.min_clip_score is not None and self.keep_top_fraction is not None:
                raise ValueError("set min_clip_score or keep_top_fraction, not both")
            return self

    kind = "global"
    holds_model = True
    batch_size = 64
    decision_params = ("min_clip_score", "keep_top_fraction", "device", "encode_batch_size")

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        if str(self.params.device).startswith("cuda"):
            self.num_gpus = 1.0
        self.scorer: Any = None

    def check(self) -> None:
        from model.clip import checkpoint_mismatch, ensure_arch, warn_quickgelu_mismatch

        p = self.params
        if not p.checkpoint:
            raise ValueError(
                "checkpoint: a local open_clip weights file is required (.bin/.pt/.pth/.safetensors); "
                "nothing is downloaded"
            )
        path = Path(p.checkpoint)
        if not path.is_file():
            raise ValueError(f"checkpoint: file not found: {path}")
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(
                f"checkpoint: expected one of {', '.join(CHECKPOINT_SUFFIXES)}, got {path.name!r}"
            )
        try:
            ensure_arch(p.arch)
        except ValueError as e:
            raise ValueError(f"arch: {e}") from None
        problem = checkpoint_mismatch(p.arch, path)
        if problem:
            raise ValueError(f"arch: {problem}")
        message = warn_quickgelu_mismatch(p.arch, path)
        if message:
            warnings.warn(f"{self.name}: {message}", UserWarning, stacklevel=2)

    def setup(self) -> None:
        from model.clip import load_clip

        if not self.params.checkpoint:
            self.check()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # check() has already said it once, on the driver
            self.scorer = load_clip(
                self.params.arch,
                self.params.checkpoint,
                device=self.params.device,
                batch_size=self.params.encode_batch_size,
            )

    def score(self, batch: Batch) -> Batch:
        from PIL import Image

        if self.scorer is None:
            self.setup()
        n = len(batch["images"])
        captions = batch.get("captions") or [None] * n
        images, texts, rows = [], [], []
        for i, (imgs, text, caps) in enumerate(zip(batch["images"], batch["text"], captions, strict=True)):
            options = caps or ([text] if text else [])
            if imgs and options:
                images.append(Image.open(io.BytesIO(bytes(imgs[0]))))
                texts.append(list(options))
                rows.append(i)
        best: list[float | None] = [None] * n
        each: list[list[float] | None] = [None] * n
        for i, sims in zip(rows, self.scorer.score_each(images, texts), strict=True):
            each[i] = [round(float(s), 6) for s in sims]
            best[i] = max(each[i])
        out: Batch = {"clip_score": best}
        if any(captions):
            out["clip_scores"] = [e if caps else None for e, caps in zip(each, captions, strict=True)]
        return out

    def score_columns(self) -> list[str]:
        return ["clip_score", "clip_scores"]

    def decide_global(self, table: Batch) -> Batch:
        p = self.params
        out: Batch = {"drop_reason": pool_cut(table["id"], table["clip_score"], "clip_score_low",
                                              min_score=p.min_clip_score, keep_top_fraction=p.keep_top_fraction)}
        each = table.get("clip_scores") or [None] * len(table["id"])
        if any(e is not None for e in each):  # several captions: the best-scoring one is the row's caption
            out["text"] = best_captions(table["text"], table["captions"], each)
        return out
