"""The multiple-choice jsonl reader (pipeline/readers/mc.py) on tests/data/mc, without Ray: options shown in
the question, the letter as the answer, the option texts in annotations; a bad record is a reject with its
reason; the qa builder's prompt shows the options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from formatters.builders import BuildConfig, build, message_text
from pipeline.readers import READERS, iter_rows
from pipeline.readers.mc import parse_options
from pipeline.recipe import InputSpec, RecipeError
from pipeline.schema import make_id

MC = Path(__file__).resolve().parents[1] / "data" / "mc"


def rows(path, **kw) -> list[dict]:
    return list(iter_rows(InputSpec(path=str(path), format="mc_jsonl", **kw)))


def test_questions_with_and_without_an_image():
    a, b, c, d = rows(MC / "mc.jsonl")
    assert [r["drop_reason"] for r in (a, b, c, d)] == [None] * 4
    assert a["id"] == make_id("mc.jsonl", 1) and a["source"].startswith("mc.jsonl")
    assert a["text"] == "What animal is shown in the image?\nA. A cow\nB. A horse\nC. A dog\nD. A cat"
    assert a["answer"] == "B" and a["annotations"] == {"options": ["A cow", "A horse", "A dog", "A cat"]}
    assert a["meta"]["answer_text"] == "A horse"
    assert a["images"] == [(MC / "horse.png").read_bytes()] and b["images"] == a["images"]
    # an object keyed by letter; a text-only question; the letter normalised from "(b)"; other fields in meta
    assert c["text"].splitlines()[1:] == ["A. Venus", "B. Mercury", "C. Mars", "D. Earth"] and c["images"] == []
    assert (c["answer"], c["meta"]["answer_text"]) == ("B", "Mercury")
    assert (d["answer"], d["meta"]["answer_text"], d["meta"]["subject"]) == ("B", "56", "arithmetic")


def test_bad_records_are_rejects_with_a_reason():
    got = rows(MC / "bad.jsonl")
    assert [(r["drop_stage"], r["drop_reason"]) for r in got] == [
        ("read", "bad_answer"), ("read", "bad_options"), ("read", "bad_options"), ("read", "bad_answer"),
        ("read", "missing_field"), ("read", "missing_file"), ("read", "invalid_json")]
    assert "A-C" in got[0]["meta"]["error"]  # "D" is past the three options


def test_renamed_columns_and_an_unknown_option(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"q": "Up or down?", "choices": ["up", "down"], "gold": "b"}) + "\n")
    (row,) = rows(tmp_path / "q.jsonl", text_column="q", answer_column="gold", options={"choices_column": "choices"})
    assert (row["text"], row["answer"], row["annotations"]) == ("Up or down?\nA. up\nB. down", "B",
                                                                {"options": ["up", "down"]})
    with pytest.raises(RecipeError, match="input.options.choice_column: unknown option"):
        rows(tmp_path / "q.jsonl", options={"choice_column": "choices"})


def test_parse_options():
    assert parse_options({"b": "y", "a": "x"}) == ["x", "y"] and parse_options([54, 5.5]) == ["54", "5.5"]
    assert parse_options([True, False]) is None and parse_options([None, "x"]) is None
    assert parse_options(["x", " "]) is None and parse_options("x") is None and parse_options([str(i) for i in
                                                                                                range(27)]) is None


def test_the_qa_sample_shows_the_options():
    assert "mc_jsonl" in READERS
    row = rows(MC / "mc.jsonl")[2]
    (sample,) = build("qa", row, BuildConfig())
    assert "B. Mercury" in message_text(sample["messages"][0]) and message_text(sample["messages"][1]) == "B"
