"""Recipes: YAML validated before anything runs (DESIGN.md, Recipes and the command line).

A wrong key, type or value becomes one `RecipeError` line naming the dotted key and what is allowed.
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
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
    buckets: PositiveInt = 16
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
RESERVED_STAGE_KEYS = ("read", "format", "pack", "scatter")


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


def _stage_class(use: str, key: str) -> type[Stage]:
    from pipeline.registry import STAGES

    if use in STAGES:
        return STAGES[use]
    if ":" in use:
        module, _, name = use.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise RecipeError(f"stages.{key}.use: cannot import {use!r} ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise RecipeError(f"stages.{key}.use: {use!r} is not a Stage class")
        return cls
    raise RecipeError(f"stages.{key}.use: unknown stage {use!r} (known: {', '.join(sorted(STAGES))}, "
                      "or module:Class)")


def _first_error(e: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> RecipeError:
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


def parse_recipe(raw: dict[str, Any]) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError("recipe: the top level must be a mapping (input, stages, format, pack, output)")
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as e:
        raise _first_error(e, "", RecipeModel) from None
    from pipeline.readers import READERS

    if model.input.format not in READERS:
        raise RecipeError(f"input.format: unknown format {model.input.format!r} (allowed: {', '.join(READERS)})")
    specs = []
    for key, cfg in model.stages.items():
        if key in RESERVED_STAGE_KEYS:
            raise RecipeError(f"stages.{key}: the name {key!r} is reserved ({', '.join(RESERVED_STAGE_KEYS)}); "
                              "rename the stage and name its kind with `use:`")
        cfg = dict(cfg or {})
        use = str(cfg.pop("use", key))
        enabled = cfg.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise RecipeError(f"stages.{key}.enabled: must be true or false (got {enabled!r})")
        actors = cfg.pop("actors", 1)
        if not isinstance(actors, int) or actors < 1:
            raise RecipeError(f"stages.{key}.actors: must be a positive integer (got {actors!r})")
        cls = _stage_class(use, key)
        try:
            params = cls.Params.model_validate(cfg)
        except ValidationError as e:
            raise _first_error(e, f"stages.{key}", cls.Params) from None
        if enabled:
            specs.append(StageSpec(key, use, cls, params, actors))
    if model.format is not None:
        specs.append(_format_stage(model.format, [s.key for s in specs]))
    if model.pack is not None and model.pack.enabled:
        from pipeline.pack_stage import PackStage

        if model.format is None:
            raise RecipeError("pack: packing needs each sample's tokens: add a format: section "
                              "(builder, tokenizer), or set pack.enabled: false")

        specs.append(StageSpec("pack", "pack", PackStage, model.pack, 1, section="pack"))
    return Recipe(model, specs, raw)


def _format_stage(spec: FormatSpec, keys: list[str]) -> StageSpec:
    """The `format:` section as a stage (expand), after the recipe's stages; builder and options validated."""
    from formatters.builders import BUILDERS, options_for
    from pipeline.format_stage import Format

    if "format" in keys:
        raise RecipeError("stages.format: the name 'format' is reserved for the format section; rename the stage")
    if spec.builder not in BUILDERS:
        raise RecipeError(f"format.builder: unknown builder {spec.builder!r} (known: {', '.join(BUILDERS)})")
    if spec.max_pixels < spec.min_pixels:
        raise RecipeError(f"format.max_pixels: must be >= format.min_pixels ({spec.min_pixels}) "
                          f"(got {spec.max_pixels})")
    try:
        options_for(spec.builder, spec.options)
    except ValueError as e:
        raise RecipeError(f"format.options.{e}") from None
    return StageSpec("format", "format", Format, spec, 1, section="format")


def load_recipe(path: str, sets: list[str] = (), input_path: str | None = None) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe: file not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe: not valid YAML at{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError("recipe: the top level must be a mapping (input, stages, format, pack, output)")
    for s in sets:
        set_dotted(raw, s)
    if input_path is not None:
        raw.setdefault("input", {})
        if not isinstance(raw["input"], dict):
            raise RecipeError("input: must be a mapping")
        raw["input"]["path"] = input_path
    return parse_recipe(raw)


def check_stages(recipe: Recipe, skip: set[str] = frozenset()) -> None:
    """Each stage validates what its parameters name (files...) before anything runs."""
    for spec in recipe.stages:
        if spec.key in skip:
            continue
        try:
            spec.build().check()
        except ValueError as e:
            raise RecipeError(f"{spec.where}.{e}") from None
