"""`vlcurate report` and the thumbnails of dropped rows, on a real web-pairs job with a tiny CLIP: every scored
row is plotted (kept and dropped), the recipe's cuts are marked at their values, dropped rows keep a capped
deterministic sample of thumbnails, the job writes the report itself, and headless Chromium draws it."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from jobs.report import WIDTH, plotted
from pipeline import thumbs
from pipeline.recipe import load_recipe
from pipeline.storage import Store
from tests.media import DEMO_IMAGES, REPO

RECIPE = REPO / "jobs" / "recipes" / "web_pairs.yaml"
DEV_PAIRS = REPO.parent / "shared" / "data" / "dev" / "pairs"
# enough captions per image that the CLIP cut drops more than the thumbnail cap with the 5 bundled photos too
# (where ../shared is absent)
CAPTIONS = ("a photo of the {} on a table", "an old picture showing a {} outdoors", "a {} seen from far away",
            "a close view of a {} in daylight", "the {} as seen in a museum", "a blurry snapshot of one {}")


def images() -> list[Path]:
    folder = DEV_PAIRS if DEV_PAIRS.is_dir() else DEMO_IMAGES
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))


@pytest.fixture(scope="module")
def job(ray_local, tmp_path_factory):
    """Each photo with three captions (CLIP keeps the top 30% of them), a file-name caption and a one-word
    caption (dropped by caption_text); dedup off so every copy reaches CLIP. Run through the CLI."""
    from model.clip import build_tiny_clip

    tmp = tmp_path_factory.mktemp("report")
    arch, checkpoint = build_tiny_clip(tmp / "tiny-clip.pt")
    lines = []
    for path in images():
        name = path.stem
        lines += [{"image": str(path), "caption": c.format(name)} for c in CAPTIONS]
        lines += [{"image": str(path), "caption": f"IMG_{len(lines):04d}.jpg"}, {"image": str(path), "caption": name}]
    jsonl = tmp / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp / "out"
    sets = ["input.allow_outside_root=true", "stages.dedup.enabled=false", f"stages.clip_score.arch={arch}",
            f"stages.clip_score.checkpoint={checkpoint}", "input.partition_rows=7"]
    argv = ["run", str(RECIPE), "-o", str(out), "--input", str(jsonl)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return out


def tables(out: Path) -> tuple[list[dict], list[dict]]:
    return pq.read_table(out / "manifest.parquet").to_pylist(), pq.read_table(out / "rejects.parquet").to_pylist()


def histogram(page: str, column: str) -> tuple[str, float, float, list[float]]:
    """The svg of a column's histogram, its axis range and its markers' values."""
    m = re.search(rf'<svg class="histogram" data-column="{column}" data-lo="([^"]+)" data-hi="([^"]+)".*?</svg>',
                  page, re.S)
    assert m, f"no histogram for {column}"
    svg = m.group(0)
    return svg, float(m.group(1)), float(m.group(2)), [float(v) for v in re.findall(r'data-value="([^"]+)"', svg)]


def test_the_job_writes_its_report_and_the_flag_does_not_change_the_job_identity(job):
    assert (job / "report.html").stat().st_size > 1000
    a = load_recipe(str(RECIPE), [])
    b = load_recipe(str(RECIPE), ["output.report=false"])
    assert a.model.output.report is True and b.model.output.report is False
    assert a.identity() == b.identity()


def test_dropped_rows_keep_a_capped_deterministic_sample_of_thumbnails(job):
    _, rejects = tables(job)
    kept = thumbs.load(Store(str(job)))
    clip = [r["id"] for r in rejects if r["drop_reason"] == "clip_score_low"]
    assert len(clip) > thumbs.PER_REASON  # the cap matters
    # dropped in the last step, which read the bytes from the input again
    chosen = [t["id"] for t in kept[("clip_score", "clip_score_low")]]
    assert chosen == sorted(clip, key=thumbs.rank)[: thumbs.PER_REASON]
    caption_reasons = {(r["drop_stage"], r["drop_reason"]) for r in rejects if r["drop_stage"] == "caption_text"}
    assert caption_reasons and caption_reasons <= set(kept)  # dropped in a step that still held the bytes
    for group in kept.values():
        for t in group:
            im = Image.open(io.BytesIO(t["thumb"]))
            assert im.format == "JPEG" and max(im.size) <= thumbs.PX and len(im.getcolors(1 << 24)) > 50


def test_report_plots_every_scored_row_and_marks_the_recipes_cuts(job):
    manifest, rejects = tables(job)
    page = (job / "report.html").read_text()
    svg, lo, hi, markers = histogram(page, "clip_score")
    n = sum(r["clip_score"] is not None for r in manifest + rejects)
    assert f"n={n} ({len(manifest)} kept, {n - len(manifest)} dropped)" in page
    assert len(manifest) < n - len(manifest)  # most were dropped: a kept-only plot would hide the cut
    assert 'class="drop"' in svg and 'class="bar"' in svg
    # keep_top_fraction: the cut is the lowest score kept
    assert markers == [pytest.approx(min(r["clip_score"] for r in manifest))]
    _, lo, hi, markers = histogram(page, "caption_words")
    assert markers == [2.0, 256.0]  # caption_text.min_words, max_words
    assert not re.search(r'data-column="(sha256|phash|id|parent_id|duplicate_of)"', page)
    assert page.count("data:image/jpeg;base64,") >= 10 and not re.search(r'src="(https?:|file:|/)', page)


def test_hash_and_id_columns_are_not_plotted():
    for name in ("sha256", "phash", "duplicate_of", "parent_id", "pack_pos", "image_hash"):
        assert not plotted(name, pa.int64())
    assert plotted("clip_score", pa.float64()) and plotted("n_tokens", pa.int64())
    assert not plotted("boilerplate", pa.bool_())


def test_rejected_render_makes_a_contact_sheet_per_reason(job, tmp_path, capsys):
    _, rejects = tables(job)
    assert main(["inspect", str(job), "--rejected", "--render", str(tmp_path), "--n", "4"]) == 0
    sheets = sorted(p.name for p in tmp_path.iterdir())
    want = sorted({f"rejected-{r['drop_stage']}-{r['drop_reason']}.png" for r in rejects})
    assert sheets == want
    sheet = Image.open(tmp_path / "rejected-clip_score-clip_score_low.png").convert("RGB")
    # 16 thumbnails kept: 16 tiles in rows of 6 -> 3 rows of 128-px pictures
    assert sheet.height > 3 * 128
    tile = sheet.crop((0, 40, 228, 40 + 128))
    assert len(tile.getcolors(1 << 24)) > 100  # a photo, not the grey "no image kept" square


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, size: str) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", f"--window-size={size}", f"--screenshot={png}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert png.exists(), proc.stderr[-2000:]
    return proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_the_marker_at_the_recipes_value(job, tmp_path):
    log = screenshot(job / "report.html", tmp_path / "page.png", "1300,6000")
    assert "Uncaught" not in log and "CONSOLE" not in log.upper().replace("CONSOLE_", ""), log[-2000:]
    shot = Image.open(tmp_path / "page.png").convert("RGB")
    colors = shot.getcolors(maxcolors=1 << 24)
    count = {c: n for n, c in colors}
    assert count.get((0x48, 0x78, 0xa8), 0) > 500  # kept bars
    assert count.get((0xe8, 0xa3, 0x3d), 0) > 500  # dropped bars
    assert count.get((0xff, 0x00, 0xff), 0) > 100  # cut markers
    assert len(colors) > 5000  # thumbnails are drawn (photos), not blank boxes
    # the markers of caption_text.min_words = 2 and max_words = 256, alone on a page: their pixels sit where
    # 2 and 256 map on the axis
    page = (job / "report.html").read_text()
    svg, lo, hi, _ = histogram(page, "caption_words")
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    single = tmp_path / "one.html"
    single.write_text(f"<!doctype html><style>{style}</style><body style='margin:0'>{svg}</body>")
    screenshot(single, tmp_path / "one.png", "400,200")
    one = Image.open(tmp_path / "one.png").convert("RGB")
    xs = sorted({x for x in range(one.width) for y in range(0, 100, 5) if one.getpixel((x, y)) == (255, 0, 255)})
    for value in (2, 256):
        expected = (value - lo) / (hi - lo) * WIDTH
        near = [x for x in xs if abs(x - expected) <= 1.5]
        assert near, (xs, value, expected)
    assert all(min(abs(x - (v - lo) / (hi - lo) * WIDTH) for v in (2, 256)) <= 1.5 for x in xs), xs


# ---- sections read from a job folder written directly (tests/synthetic_job.py), no Ray


def test_report_shows_candidates_per_prompt_and_pass_rates_by_verifier_and_reason(tmp_path):
    from jobs.report import build_report
    from tests.synthetic_job import write_job

    out = write_job(tmp_path / "cot", 300, candidates=4)
    page = Path(build_report(str(out))).read_text()
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    prompts = {c["parent_id"] for c in cands}
    assert f"{len(cands):,} candidates for {len(prompts):,} prompts" in page
    svg, _, _, _ = histogram(page, "candidates per prompt")
    assert f"<b>candidates per prompt</b> n={len(prompts)}, median 4" in page  # one value per prompt
    section = page[page.index("Pass rate by verifier"):]
    for kind in ("math", "vqa", "mc"):
        mine = [c for c in cands if c["cot_kind"] == kind]
        correct = sum(c["cot_correct"] for c in mine)
        passed = sum(c["cot_verdict"] == "pass" for c in mine)
        row = (f"<td>{kind}</td><td>{len(mine):,}</td><td>{correct} ({correct / len(mine):.1%})</td>"
               f"<td>{passed} ({passed / len(mine):.1%})</td>")
        assert row in section, row
    for reason in ("truncated", "too_long", "repetition"):
        failing = [c for c in cands if c["cot_quality_reason"] == reason]
        verified = sum(c["cot_correct"] for c in failing)
        row = (f"<td>quality</td><td>{reason}</td><td>{len(failing)} ({len(failing) / len(cands):.1%})</td>"
               f"<td>{verified:,}</td>")
        assert row in section, row
    wrong = sum(c["cot_verify_reason"] == "wrong_answer" for c in cands)
    assert f"<td>verifier</td><td>wrong_answer</td><td>{wrong} ({wrong / len(cands):.1%})</td><td>0</td>" in section


def test_report_of_a_mix_shows_per_source_counts_and_token_lengths(tmp_path):
    from jobs.report import build_report
    from tests.synthetic_job import write_job

    out = write_job(tmp_path / "mix", 400, mix=True)  # the mix's own manifest schema: no text column
    page = Path(build_report(str(out))).read_text()
    stats = json.loads((out / "stats.json").read_text())
    assert "<h2>Sources</h2>" in page and "<h2>Funnel</h2>" not in page
    for name, s in stats["sources"].items():
        row = (f"<td>{name}</td><td>job</td><td>{s['asked_share']:.2%}</td><td>{s['achieved_share']:.2%}</td>"
               f"<td>{s['samples']:,}</td><td>{s['tokens']:,}</td><td>{s['repeated_samples']:,}</td>")
        assert row in page, row
    assert "source ocr: asked 70 but short" in page
    manifest = pq.read_table(out / "manifest.parquet")
    _, lo, hi, _ = histogram(page, "n_tokens")  # token lengths of the kept samples
    tokens = manifest["n_tokens"].to_pylist()
    assert f"n={len(tokens)} ({len(tokens)} kept, 0 dropped)" in page
    assert lo <= min(tokens) and hi >= max(tokens)


def test_example_images_are_read_from_shard_headers_only():
    """The report reads the few shown kept samples' first images by scanning the shard's tar headers (a GNU
    long name included), and gets the same bytes as reading the whole tar."""
    from jobs.report import _first_images
    from pipeline.tar import iter_entries, tar_bytes

    samples = [(f"{i:032x}" + ("x" * 120 if i == 7 else ""),
                {"0.jpg": bytes([i]) * (i * 37 % 900 + 1), "1.jpg": b"p" * i, "json": b"{}", "input_ids.npy": b"n"})
               for i in range(200)]
    data = tar_bytes(samples)
    want = {samples[3][0], samples[7][0], samples[199][0], "f" * 32}
    got = dict(_first_images(pa.BufferReader(data), want))
    assert got == {k: v for k, s, v in iter_entries(data) if k in want and s == "0.jpg"}
    assert len(got) == 3 and got[samples[7][0]] == bytes([7]) * (7 * 37 % 900 + 1)
