"""What a recipe says, as data: its sections (pydantic models), its stages (``StageSpec``), the parsed
``Recipe`` and ``RecipeError``. The readers, stages and writers read these; ``pipeline.recipe`` parses YAML
into them (it needs the registries of readers, stages and builders, which sit above this module)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, PositiveInt, ValidationError

from filters.base import Stage


class RecipeError(ValueError):
    """A recipe problem, reported as one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(Section):
    path: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")  # qualifies keys where several jobs meet (exports)
    format: str = "jsonl"
    image_column: str = "image"
    text_column: str = "caption"
    answer_column: str | None = None
    key_column: str | None = None
    partition_rows: PositiveInt = 1000
    max_caption_bytes: ByteSize | None = ByteSize(64 * 1024)  # longer text: rejected at read, caption_too_long
    allow_outside_root: bool = False  # image/video paths may resolve outside the input root
    options: dict[str, Any] = Field(default_factory=dict)


class FormatSpec(Section):
    """The `format:` section: the sample builder (formatters.builders.BUILDERS) and how samples are measured.

    `tokenizer` is a local tokenizer / model directory; `min_pixels` / `max_pixels` are the image resize
    limits every sample records; `pre_resize` stores images resized to exactly W'xH' (qwen2-vl, qwen2.5-vl);
    `max_tokens` rejects longer samples (`too_many_tokens`); `options` are the builder's own options.
    """

    builder: str
    tokenizer: str | None = None
    dialect: Literal["qwen-vl", "qwen2-vl", "qwen2.5-vl"] = "qwen2.5-vl"
    min_pixels: PositiveInt = 4 * 28 * 28
    max_pixels: PositiveInt = 16384 * 28 * 28
    pre_resize: bool = True
    add_vision_id: bool = False
    max_tokens: PositiveInt | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PackSpec(Section):
    max_len: PositiveInt = 8192
    window: PositiveInt | None = None
    packs_per_step: PositiveInt | None = None
    packs_per_shard: PositiveInt = 256
    enabled: bool = True


class OutputSpec(Section):
    # shards are written per input partition (pipeline/writers.py); shard_bytes splits a partition's shard
    shard_bytes: ByteSize | None = None
    exports: list[Literal["llamafactory", "swift", "qwen", "hf"]] = Field(default_factory=list)
    report: bool = True  # write OUT/report.html when the job ends (jobs/report.py)


class RecipeModel(Section):
    input: InputSpec
    stages: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    format: FormatSpec | None = None
    pack: PackSpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)


COMMON_STAGE_KEYS = ("enabled", "use", "actors")
RESERVED_STAGE_KEYS = ("read", "format", "pack", "write")  # the runner's own steps (stats.json keys)


@dataclass
class StageSpec:
    key: str
    use: str
    cls: type[Stage]
    params: Any
    actors: int
    section: str | None = None  # "format" / "pack": a stage made from that recipe section, not from `stages`

    @property
    def where(self) -> str:
        """The recipe key its parameters live under, for error messages."""
        return self.section or f"stages.{self.key}"

    def build(self) -> Stage:
        return self.cls(self.params, name=self.key)


@dataclass
class Recipe:
    model: RecipeModel
    stages: list[StageSpec]
    raw: dict[str, Any]

    @property
    def input(self) -> InputSpec:
        return self.model.input

    def identity(self) -> dict[str, Any]:
        """What decides the results of a job: the resolved recipe less `actors` and `output.exports`, which
        change how fast it runs or what is exported afterwards, never what is kept (resume compares this)."""
        out = self.resolved()
        for stage in out["stages"].values():
            stage.pop("actors", None)
        out["output"].pop("exports", None)
        out["output"].pop("report", None)
        out["input"].pop("name", None)  # a label: names the keys where jobs meet, never what is kept
        out["stage_order"] = list(out["stages"])  # the identity is compared as sorted JSON: keep the order
        return out

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in (written to job.json)."""
        out = self.model.model_dump(mode="json")
        out["stages"] = {
            s.key: {"use": s.use, "actors": s.actors, **s.params.model_dump(mode="json")}
            for s in self.stages if s.section is None
        }
        return out


def first_error(e: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> RecipeError:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    if err["type"] == "extra_forbidden" and model is not None:
        target: Any = model
        for part in err["loc"][:-1]:
            field = target.model_fields.get(str(part)) if hasattr(target, "model_fields") else None
            ann = getattr(field, "annotation", None)
            options = typing.get_args(ann) or (ann,)  # `FormatSpec | None` -> FormatSpec
            target = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if target is None:
                break
        allowed = sorted(target.model_fields) if target is not None else []
        if prefix.startswith("stages."):
            allowed = sorted([*allowed, *COMMON_STAGE_KEYS])
        return RecipeError(f"{loc}: unknown key (allowed: {', '.join(allowed)})")
    if err["type"] == "missing":
        return RecipeError(f"{loc}: required key is missing")
    return RecipeError(f"{loc}: {err['msg']} (got {err.get('input')!r})")


def set_dotted(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `--set dotted.key=value` (value parsed as YAML: numbers, booleans, lists)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected dotted.key=value")
    key, _, text = assignment.partition("=")
    value = yaml.safe_load(text) if text != "" else ""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value
