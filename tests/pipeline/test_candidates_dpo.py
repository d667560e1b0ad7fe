"""The DPO files (pipeline/candidates.py `write_dpo`) without Ray: pairs with and without an image in one
job give a trl.jsonl Arrow's JSON reader reads (one content type per column) and LLaMA-Factory rows whose
`<image>` tags match their images; a text-only job keeps plain string prompts."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.json as paj
import pyarrow.parquet as pq
from PIL import Image

from pipeline.candidates import DPO, write_dpo
from pipeline.storage import WORK, Store


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def cand(i: str, prompt: str, chosen: str | None = None, reason: str | None = None) -> dict:
    return {"id": i, "parent_id": prompt, "prompt": f"{prompt}?\nA. x\nB. y", "cot_text": f"text {i}\nAnswer: B",
            "dpo_chosen": chosen, "cot_reason": reason}


def write(tmp_path, with_image: bool) -> tuple[list[dict], list[dict]]:
    step = tmp_path / WORK / "01-cot_generate"
    step.mkdir(parents=True)
    images = [[png()] if with_image else [], [], [], []]
    pq.write_table(pa.table({"id": ["a0", "a1", "b0", "b1"], "images": images}), step / "00000.parquet")
    cands = [cand("a0", "pa"), cand("a1", "pa", "a0", "wrong_answer"), cand("b0", "pb"),
             cand("b1", "pb", "b0", "text_after_answer")]
    assert write_dpo(Store(str(tmp_path)), "01-cot_generate", cands) == 2
    lines = [json.loads(x) for x in (tmp_path / DPO / "data.jsonl").read_text().splitlines()]
    trl = paj.read_json(tmp_path / DPO / "trl.jsonl").to_pylist()  # fails on a string / list mix
    return lines, trl


def test_image_and_text_only_pairs_in_one_file(tmp_path):
    lines, trl = write(tmp_path, with_image=True)
    assert [x["conversations"][0]["value"].count("<image>") for x in lines] == [1, 0]
    assert [len(x["images"]) for x in lines] == [1, 0] and (tmp_path / DPO / lines[0]["images"][0]).is_file()
    assert [[p["type"] for p in x["prompt"][0]["content"]] for x in trl] == [["image", "text"], ["text"]]
    assert trl[1]["prompt"][0]["content"][0]["text"] == "pb?\nA. x\nB. y" and trl[1]["images"] == []
    assert [x["chosen"][0]["content"] for x in trl] == ["text a0\nAnswer: B", "text b0\nAnswer: B"]


def test_text_only_pairs_keep_string_prompts(tmp_path):
    _, trl = write(tmp_path, with_image=False)
    assert [x["prompt"][0]["content"] for x in trl] == ["pa?\nA. x\nB. y", "pb?\nA. x\nB. y"]
