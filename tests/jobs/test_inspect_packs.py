"""`vlcurate inspect OUT --packs --render DIR` on the packed OCR job (jobs/recipes/ocr.yaml, real Qwen2.5-VL
vocabulary, 8,192-token packs): one PNG per pack shown, its members' token spans on a bar where the pack tar puts
them, each member's image as a thumbnail framed in its span's colour."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from formatters.draw import COLORS, UNFILLED
from jobs.cli import main
from pipeline.recipe import load_recipe
from pipeline.runner import run_job
from tests.media import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packed_job(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "out"
    recipe = load_recipe(str(REPO / "jobs/recipes/ocr.yaml"),
                         [f"input.path={REPO / 'tests/data/ocr_icdar2015'}", "output.report=false"])
    run_job(recipe, str(out), log=lambda m: None)
    return out


def bar_row(im: Image.Image) -> int:
    """The first pixel row of the span bar: member 0's colour at the left edge."""
    return next(y for y in range(im.height) if im.getpixel((0, y)) == COLORS[0])


def test_packs_render_members_with_their_token_spans(packed_job, tmp_path, capsys):
    table = {r["pack"]: r for r in pq.read_table(packed_job / "packs.parquet").to_pylist()}
    max_len = json.loads((packed_job / "job.json").read_text())["recipe"]["pack"]["max_len"]
    assert main(["inspect", str(packed_job), "--packs", "--render", str(tmp_path), "--n", "100", "--json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    shown = [d for d in docs if d["kind"] == "pack"]
    assert len(shown) == len(table) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"pack-{d['pack']}.png" for d in shown)
    assert any(len(d["members"]) > 1 for d in shown)  # members really share packs
    for d in shown:
        im = Image.open(d["rendered"]).convert("RGB")
        y = bar_row(im) + 10
        width = im.width
        lengths = table[d["pack"]]["lengths"]
        start = 0
        for k, n in enumerate(lengths):  # each member's colour across the middle of its span
            mid = (start + n / 2) / max_len * width
            assert im.getpixel((int(mid), y)) == COLORS[k % len(COLORS)], (d["pack"], k)
            start += n
        end = start / max_len * width
        assert start < max_len and im.getpixel((min(int(end) + 2, width - 1), y)) == UNFILLED  # not filled
        # each member tile is framed in its colour and holds the member's image (a photo: many colours)
        below = im.crop((0, y + 20, width, im.height))
        colors = {c for _, c in below.getcolors(1 << 24)}
        assert all(COLORS[k % len(COLORS)] in colors for k in range(len(lengths)))
        assert len(colors) > 500
        assert table[d["pack"]]["n_tokens"] == start  # the tar's spans add up to the pack's tokens


def test_report_shows_the_pack_fill(packed_job):
    from jobs.report import build_report

    page = open(build_report(str(packed_job))).read()
    packs = pq.read_table(packed_job / "packs.parquet").to_pylist()
    summary = json.loads((packed_job / "stats.json").read_text())["stages"]["pack"]["summary"]
    fill = sum(p["n_tokens"] for p in packs) / (len(packs) * 8192)
    assert summary["fill"] == pytest.approx(fill, abs=1e-6)
    assert f"<h2>Packing</h2><p>{len(packs)} packs, fill {summary['fill']:.4%}" in page
    assert f'<b>fill per pack</b> n={len(packs)}, median' in page  # one series: no kept / dropped split
