"""Recipes: YAML validated before anything runs (DESIGN.md, Recipes and the command line).

A wrong key, type or value becomes one `RecipeError` line naming the dotted key and what is allowed. The
sections and the parsed ``Recipe`` are data classes in ``pipeline.spec``; this module parses YAML into them,
checking readers, stages and builders against their registries.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from filters.base import Stage
from formatters.builders import BUILDERS, options_for
from pipeline.format_stage import Format
from pipeline.pack_stage import PackStage
from pipeline.readers import READERS
from pipeline.registry import STAGES
from pipeline.spec import (  # noqa: F401  (re-exported: the recipe API in one place)
    COMMON_STAGE_KEYS,
    RESERVED_STAGE_KEYS,
    FormatSpec,
    InputSpec,
    OutputSpec,
    PackSpec,
    Recipe,
    RecipeError,
    RecipeModel,
    Section,
    StageSpec,
    first_error,
    set_dotted,
)


def _stage_class(use: str, key: str) -> type[Stage]:
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


def parse_recipe(raw: dict[str, Any]) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError("recipe: the top level must be a mapping (input, stages, format, pack, output)")
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as e:
        raise first_error(e, "", RecipeModel) from None
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
            raise first_error(e, f"stages.{key}", cls.Params) from None
        if enabled:
            specs.append(StageSpec(key, use, cls, params, actors))
    if model.format is not None:
        specs.append(_format_stage(model.format, [s.key for s in specs]))
    if model.pack is not None and model.pack.enabled:
        if model.format is None:
            raise RecipeError("pack: packing needs each sample's tokens: add a format: section "
                              "(builder, tokenizer), or set pack.enabled: false")

        specs.append(StageSpec("pack", "pack", PackStage, model.pack, 1, section="pack"))
    return Recipe(model, specs, raw)


def _format_stage(spec: FormatSpec, keys: list[str]) -> StageSpec:
    """The `format:` section as a stage (expand), after the recipe's stages; builder and options validated."""
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
