"""Interleaved image–text documents (OBELICS layout): JSON lines with a `texts` and an `images` list of one
length, exactly one of the two non-null at each position, so the document reads texts and images in order.

`input.format: interleaved`. Images are paths relative to the jsonl's folder (or absolute, confined to the input
root as every reader's), or `{"bytes": ...}` / `{"path": ...}` as the jsonl reader takes them; `options:
{texts_column, images_column}` name other fields. A row holds the images in reading order in `images`, the
layout in `annotations` = {"texts": the texts with null where the k-th image goes}, and in `text` the texts
joined by blank lines (what text filters, decontamination and inspect read). Other small fields go to `meta`.

Drop reasons at read: `interleaved_misaligned` (not two lists of one length, or a position with both or neither),
`no_text` (no text at all), an image's own reason (`missing_file`, `path_outside_root`, `url_not_downloaded`,
`decode_error`) naming its position; then `image_check` checks every image, and a document with one bad image is
rejected with that image's reason (`meta.image_error` = "image K: ...") — the document is not kept without it,
since its text refers to it.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow.fs as pafs

from pipeline.readers.base import attach_images, drop
from pipeline.readers.web import JsonlReader
from pipeline.spec import InputSpec

OPTIONS = ("texts_column", "images_column")


def _layout(texts: Any, images: Any) -> str | None:
    """Why the two lists are not one interleaved document, or None."""
    if not isinstance(texts, list) or not isinstance(images, list):
        return "texts and images must both be lists"
    if len(texts) != len(images):
        return f"{len(texts)} texts but {len(images)} images"
    for k, (t, im) in enumerate(zip(texts, images, strict=True)):
        if (t is None) == (im is None):
            return f"position {k}: {'both' if t is not None else 'neither'} text and image"
        if t is not None and not isinstance(t, str):
            return f"position {k}: text is not a string"
    return None


class InterleavedReader(JsonlReader):
    options = OPTIONS

    def convert(self, rec: dict[str, Any], row: dict[str, Any], spec: InputSpec, fs: pafs.FileSystem,
                base: str) -> dict[str, Any]:
        texts_col = spec.options.get("texts_column", "texts")
        images_col = spec.options.get("images_column", "images")
        texts, images = rec.get(texts_col), rec.get(images_col)
        problem = _layout(texts, images)
        if problem:
            return drop(row, "interleaved_misaligned", problem)
        if not any(t and t.strip() for t in texts):
            return drop(row, "no_text")
        if attach_images(row, fs, base, spec, [(f"{images_col}[{k}]", v) for k, v in enumerate(images)
                                               if v is not None]):
            return row
        row["annotations"] = {"texts": texts}
        row["text"] = "\n\n".join(t for t in texts if t)
        row["meta"].update({key: v for key, v in rec.items() if key not in (texts_col, images_col)
                            and (isinstance(v, str | int | bool) or isinstance(v, float) and math.isfinite(v))
                            and len(str(v)) <= 1000})  # url, license ...: small scalars
        return row
