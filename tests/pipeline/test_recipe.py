import pytest

from pipeline.recipe import RecipeError, load_recipe, parse_recipe


def base():
    return {"input": {"path": "x.jsonl", "format": "jsonl"}, "stages": {"image_check": {"min_side_px": 64}}}


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r["stages"]["image_check"].update(min_side_px="big"), "stages.image_check.min_side_px:"),
        (lambda r: r["stages"]["image_check"].update(min_sides=3), "stages.image_check.min_sides: unknown key"),
        (lambda r: r["stages"].update(nonsense={}), "stages.nonsense.use: unknown stage 'nonsense'"),
        (lambda r: r["input"].update(format="csv"), "input.format: unknown format 'csv'"),
        (lambda r: r.update(ouput={}), "ouput: unknown key (allowed: format, input, output, pack, stages)"),
        (lambda r: r["input"].pop("path"), "input.path: required key is missing"),
        (lambda r: r["stages"]["image_check"].update(enabled="maybe"), "stages.image_check.enabled"),
        (lambda r: r.update(output={"shard_bytes": "lots"}), "output.shard_bytes"),
        # shards follow the partitions since issue 16: the old bucket count is refused, not ignored
        (lambda r: r.update(output={"buckets": 16}), "output.buckets: unknown key"),
    ],
)
def test_bad_recipes_give_one_line(mutate, message):
    raw = base()
    mutate(raw)
    with pytest.raises(RecipeError) as e:
        parse_recipe(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_lists_allowed_keys():
    raw = base()
    raw["stages"]["image_check"]["max_aspect"] = 3
    with pytest.raises(RecipeError) as e:
        parse_recipe(raw)
    assert "max_aspect_ratio" in str(e.value) and "enabled" in str(e.value)


def test_set_overrides_and_disable(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("input: {path: a.jsonl, format: jsonl}\nstages:\n  image_check: {min_side_px: 64}\n"
                    "  caption_check: {}\n")
    r = load_recipe(str(path), ["stages.image_check.min_side_px=128", "stages.caption_check.enabled=false",
                                "output.shard_bytes=1GB"], input_path="b.jsonl")
    assert [s.key for s in r.stages] == ["image_check"]
    assert r.stages[0].params.min_side_px == 128
    assert r.model.output.shard_bytes == 10**9 and r.input.path == "b.jsonl"
    with pytest.raises(RecipeError, match="--set"):
        load_recipe(str(path), ["nonsense"])


def test_second_stage_of_same_kind(tmp_path):
    raw = base()
    raw["stages"]["strict_check"] = {"use": "image_check", "min_side_px": 512}
    r = parse_recipe(raw)
    assert [(s.key, s.use, s.params.min_side_px) for s in r.stages] == [
        ("image_check", "image_check", 64), ("strict_check", "image_check", 512)]


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_pack_without_format_is_an_error():
    raw = base()
    raw["pack"] = {"max_len": 4096}
    with pytest.raises(RecipeError, match="pack: packing needs each sample's tokens"):
        parse_recipe(raw)
    raw["pack"]["enabled"] = False
    assert [s.key for s in parse_recipe(raw).stages] == ["image_check"]


def test_reserved_stage_names_and_section_keys():
    for name in ("read", "pack", "write", "format"):
        raw = base()
        raw["stages"][name] = {"use": "caption_check"}
        with pytest.raises(RecipeError, match=f"stages.{name}: the name '{name}' is reserved"):
            parse_recipe(raw)
    raw = base()
    raw["format"] = {"builder": "caption_sft", "tokenzier": "x"}
    with pytest.raises(RecipeError, match=r"format.tokenzier: unknown key \(allowed: .*builder.*tokenizer"):
        parse_recipe(raw)


def test_identity_ignores_speed_and_exports():
    raw = base()
    a = parse_recipe(raw).identity()
    raw["stages"]["image_check"]["actors"] = 4
    raw["output"] = {"exports": ["qwen"]}
    assert parse_recipe(raw).identity() == a
    raw["stages"]["image_check"]["min_side_px"] = 65
    assert parse_recipe(raw).identity() != a
