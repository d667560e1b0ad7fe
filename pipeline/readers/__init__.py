"""Readers: one module per family of input formats; `READERS` maps `input.format` to a reader.

A reader has `plan(spec) -> list[Partition]` (cheap: lists files, counts lines) and
`read(spec, part) -> list[row]`. A record that cannot be read is still a row, with `drop_stage="read"` and a
reason (`invalid_json`, `invalid_utf8`, `missing_file` ...), so it is counted and lands in rejects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.readers.base import Partition, check_not_empty, fingerprint
from pipeline.readers.captions import CocoCaptionsReader, Flickr30kReader
from pipeline.readers.grounding import CocoReader, RefCocoReader
from pipeline.readers.interleaved import InterleavedReader
from pipeline.readers.mc import McJsonlReader
from pipeline.readers.ocr import Icdar2015Reader, WildReceiptReader
from pipeline.readers.qa import (
    GqaReader,
    Gsm8kReader,
    HumanEvalReader,
    MathReader,
    QaJsonlReader,
    VqaV2Reader,
)
from pipeline.readers.video import VideoReader
from pipeline.readers.vl import Nlvr2Reader, SnliVeReader, VisualGenomeQaReader
from pipeline.readers.web import FolderReader, JsonlReader, ParquetReader, WebDatasetReader
from pipeline.spec import InputSpec, Recipe

READERS: dict[str, Any] = {
    "jsonl": JsonlReader(),
    "parquet": ParquetReader(),
    "webdataset": WebDatasetReader(),
    "folder": FolderReader(),
    "coco": CocoReader(),
    "refcoco": RefCocoReader(),
    "icdar2015": Icdar2015Reader(),
    "vqav2": VqaV2Reader(),
    "gqa": GqaReader(),
    "gsm8k": Gsm8kReader(),
    "math": MathReader(),
    "humaneval": HumanEvalReader(),
    "qa_jsonl": QaJsonlReader(),
    "mc_jsonl": McJsonlReader(),
    "interleaved": InterleavedReader(),
    "video": VideoReader(),
    "flickr30k": Flickr30kReader(),
    "coco_captions": CocoCaptionsReader(),
    "snli_ve": SnliVeReader(),
    "nlvr2": Nlvr2Reader(),
    "wildreceipt": WildReceiptReader(),
    "visual_genome_qa": VisualGenomeQaReader(),
}


def reader_for(spec: InputSpec) -> Any:
    return READERS[spec.format]


def check_input(recipe: Recipe, parts: list[Partition], allow_empty: bool = False) -> None:
    """What the plan tells before Ray starts, as a RecipeError: an input without records (unless allowed),
    an input the recipe's format section cannot use (the reader's own `check_recipe`)."""
    reader = reader_for(recipe.input)
    check_not_empty(recipe.input, parts, allow_empty, getattr(reader, "any_records", None))
    check = getattr(reader, "check_recipe", None)
    if check is not None:
        check(recipe)


def iter_rows(spec: InputSpec) -> Iterator[dict[str, Any]]:
    """All rows of an input, in order, without Ray (tests and small tools)."""
    reader = reader_for(spec)
    for part in reader.plan(spec):
        yield from reader.read(spec, part)


__all__ = ["READERS", "Partition", "check_input", "fingerprint", "iter_rows", "reader_for"]
