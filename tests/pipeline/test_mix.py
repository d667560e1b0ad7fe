"""vlcurate mix: ratios, determinism, lineage, up-sampling and warnings, pure-text sources, packing,
decontamination (pipeline/mix.py, filters/decontam.py). Source job folders are written synthetically through
the project's own shard writer (pipeline.writers.shard_samples), the layout a finished job has."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.mix import load_mix, parse_mix, read_shard, run_mix, select
from pipeline.recipe import RecipeError
from pipeline.schema import make_id
from pipeline.storage import Store
from pipeline.tar import iter_entries, write_tar
from pipeline.writers import shard_samples
from tests.media import jpeg

SHARDS = 4
DATA = Path(__file__).parents[1] / "data"


def make_job(folder: Path, n: int, seed: int, lo: int = 20, hi: int = 400, images: dict | None = None,
             texts: dict | None = None, input_name: str | None = None) -> Path:
    """A finished formatted job: shards/ with json + input_ids/labels (+ images), manifest.parquet, stats.json.
    Ids are make_id("rows.jsonl", i): two jobs made with the same n share ids (a collision the mix must avoid)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.integers(lo, hi))
        ids = rng.integers(0, 150000, length).tolist()
        text = (texts or {}).get(i, f"question {seed} {i}")
        rows.append({"id": make_id("rows.jsonl", i), "parent_id": None, "source": f"rows.jsonl:{i + 1}",
                     "text": text, "answer": None, "annotations": None, "meta": {"seed": seed},
                     "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
                     "images": [images[i]] if images and i in images else [],
                     "input_ids": ids, "labels": ids, "n_tokens": length})
    return write_job(folder, rows, input_name)


def write_job(folder: Path, rows: list[dict], input_name: str | None = None) -> Path:
    """Formatted rows (id, text, messages, images, meta, input_ids, labels, n_tokens ...) written as a finished
    job folder: shards/ by the project's shard writer, manifest.parquet, stats.json (+ job.json naming
    input.name)."""
    rows = sorted(rows, key=lambda r: r["id"])
    shard_of = {}
    for k in range(SHARDS):
        piece = rows[k::SHARDS]
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        with open(folder / "shards" / f"shard-{k:05d}.tar", "wb") as f:
            write_tar(f, shard_samples(piece, []))
        shard_of.update({r["id"]: f"shard-{k:05d}.tar" for r in piece})
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "shard": [shard_of[r["id"]] for r in rows],
                             "n_tokens": [r["n_tokens"] for r in rows], "text": [r["text"] for r in rows]}),
                   folder / "manifest.parquet")
    (folder / "stats.json").write_text("{}")
    if input_name:
        (folder / "job.json").write_text(json.dumps({"recipe": {"input": {"path": "rows.jsonl", "name": input_name}}}))
    return folder


@pytest.fixture(scope="module")
def jobs3(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    return {name: make_job(root / name, n, seed)
            for name, n, seed in (("caption", 4000, 1), ("ocr", 3000, 2), ("vqa", 3000, 3))}


def mix_of(jobs: dict, weights: dict, **top) -> object:
    return parse_mix({"sources": {n: {"path": str(jobs[n]), "weight": w} for n, w in weights.items()}, **top})


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "_work" not in p.parts}


def test_ratios_by_tokens_within_1pct_deterministic_and_seeded(jobs3, tmp_path):
    weights = {"caption": 0.5, "ocr": 0.3, "vqa": 0.2}
    stats = run_mix(mix_of(jobs3, weights, by="tokens", seed=0), str(tmp_path / "a"), log=lambda m: None)
    assert stats["samples"] > 5000  # over ~10k source samples
    for name, w in weights.items():
        assert abs(stats["sources"][name]["achieved_share"] - w) < 0.01, stats["sources"][name]
    # the binding source (caption: 4000 samples for half the tokens) is taken whole, the others subsampled
    assert stats["sources"]["caption"]["samples"] == 4000
    assert stats["sources"]["ocr"]["samples"] < 3000 and not stats["warnings"]
    written = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert written["sources"]["ocr"]["asked_share"] == 0.3
    run_mix(mix_of(jobs3, weights, by="tokens", seed=0), str(tmp_path / "b"), log=lambda m: None)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert a.keys() == b.keys() and any(k.startswith("shards/") for k in a)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    run_mix(mix_of(jobs3, weights, by="tokens", seed=1), str(tmp_path / "c"), log=lambda m: None)
    ids = [set(pq.read_table(tmp_path / d / "manifest.parquet")["key"].to_pylist()) for d in ("a", "c")]
    assert ids[0] != ids[1]
    assert len(ids[0] ^ ids[1]) > 500  # another seed selects other ocr / vqa samples


def test_ratios_by_samples(jobs3, tmp_path):
    stats = run_mix(mix_of(jobs3, {"caption": 2, "ocr": 1, "vqa": 1}, by="samples", total=4000), str(tmp_path / "o"),
                    log=lambda m: None)
    assert [stats["sources"][n]["samples"] for n in ("caption", "ocr", "vqa")] == [2000, 1000, 1000]


def test_lineage_and_keys_qualified_by_source(jobs3, tmp_path):
    """Every output sample names its source job and id, found in that job's manifest; the three jobs share
    their ids (same synthetic scheme), yet no two output keys collide."""
    run_mix(mix_of(jobs3, {"ocr": 0.5, "vqa": 0.5}, by="samples"), str(tmp_path / "o"), log=lambda m: None)
    manifest = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    assert len(manifest) == 6000 and len({r["key"] for r in manifest}) == 6000
    source_ids = {n: set(pq.read_table(jobs3[n] / "manifest.parquet")["id"].to_pylist()) for n in ("ocr", "vqa")}
    assert source_ids["ocr"] == source_ids["vqa"]  # the collision the source-qualified key avoids
    originals = {n: all_samples(Store(str(jobs3[n]))) for n in ("ocr", "vqa")}
    seen = 0
    for key, files in all_samples(Store(str(tmp_path / "o"))).items():
        lineage = json.loads(files["json"])["mix"]
        assert lineage["job"] == str(jobs3[lineage["source"]])
        assert lineage["id"] in source_ids[lineage["source"]]
        assert key == f"{lineage['source']}-{lineage['id']}"
        assert files["input_ids.npy"] == originals[lineage["source"]][lineage["id"]]["input_ids.npy"]
        seen += 1
    assert seen == 6000


def test_keys_qualified_by_each_jobs_input_name(tmp_path):
    """Two jobs whose inputs share a relative layout (ids coincide by design, issue 14) meet in a mix: each key
    is prefixed by its job's input.name, so none repeats; the same job twice is a one-line error until one
    source sets key_prefix."""
    icdar = make_job(tmp_path / "icdar", 300, seed=1, input_name="icdar2015")
    receipts = make_job(tmp_path / "receipts", 200, seed=2, input_name="wildreceipt")
    ids = [set(pq.read_table(j / "manifest.parquet")["id"].to_pylist()) for j in (icdar, receipts)]
    assert len(ids[0] & ids[1]) == 200  # every id of the smaller job is also an id of the other
    mix = parse_mix({"by": "samples", "sources": {"ocr": {"path": str(icdar), "weight": 1},
                                                  "kie": {"path": str(receipts), "weight": 1, "max_repeat": 2}},
                     "pack": {"max_len": 4096}})
    run_mix(mix, str(tmp_path / "o"), log=lambda m: None)
    manifest = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    keys = [r["key"] for r in manifest]
    assert len(keys) == 600 and len(set(keys)) == 600
    prefix = {"ocr": "icdar2015", "kie": "wildreceipt"}
    for r in manifest:
        assert r["key"] == f"{prefix[r['source']]}-{r['source_id']}" + (f"-{r['copy']}" if r["copy"] else "")
    members = [m for p in pq.read_table(tmp_path / "o" / "packs.parquet").to_pylist() for m in p["members"]]
    assert sorted(members) == sorted(keys)  # packs name the qualified keys too
    for lineage in (json.loads(f["json"])["mix"] for f in all_samples(Store(str(tmp_path / "o"))).values()):
        assert lineage["key_prefix"] == prefix[lineage["source"]]
    twice = {"by": "samples", "sources": {"a": {"path": str(icdar), "weight": 1}, "b": {"path": str(icdar), "weight": 1}}}
    with pytest.raises(RecipeError, match=r"^sources.b: its keys would be prefixed 'icdar2015' like sources.a's"):
        run_mix(parse_mix(twice), str(tmp_path / "t"), log=lambda m: None)
    twice["sources"]["b"]["key_prefix"] = "icdar_again"
    run_mix(parse_mix(twice), str(tmp_path / "t"), log=lambda m: None)
    keys = pq.read_table(tmp_path / "t" / "manifest.parquet")["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 600 and sum(k.startswith("icdar_again-") for k in keys) == 300


def all_samples(store: Store) -> dict:
    out = {}
    for shard in store.list("shards"):
        out.update(read_shard(store, shard))
    return out


def test_shortfall_is_a_warning_and_max_repeat_upsamples(jobs3, tmp_path):
    small = {"caption": 0.5, "ocr": 0.5}
    stats = run_mix(mix_of(jobs3, small, by="samples", total=8000), str(tmp_path / "a"), log=lambda m: None)
    assert stats["sources"]["caption"]["samples"] == 4000 and stats["sources"]["ocr"]["samples"] == 3000
    assert len(stats["warnings"]) == 1 and "source ocr: asked 4,000" in stats["warnings"][0]
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["warnings"] == stats["warnings"]
    assert stats["sources"]["ocr"]["asked"] == 4000 and stats["sources"]["ocr"]["achieved_share"] == pytest.approx(3 / 7, abs=1e-6)
    mix = parse_mix({"by": "samples", "total": 8000, "sources": {
        "caption": {"path": str(jobs3["caption"]), "weight": 0.5},
        "ocr": {"path": str(jobs3["ocr"]), "weight": 0.5, "max_repeat": 2}}})
    stats = run_mix(mix, str(tmp_path / "b"), log=lambda m: None)
    assert stats["sources"]["ocr"]["samples"] == 4000 and stats["sources"]["ocr"]["repeated_samples"] == 1000
    assert not stats["warnings"]
    keys = pq.read_table(tmp_path / "b" / "manifest.parquet")["key"].to_pylist()
    assert len(set(keys)) == 8000 and sum(k.endswith("-1") for k in keys) == 1000


def test_a_quota_too_small_for_its_samples_is_a_warning(tmp_path):
    """By tokens, a small mix whose quota for a source is smaller than its samples: the source cannot give its
    share (the selection takes a sample only when that brings it nearer its quota); the mix says so."""
    small = make_job(tmp_path / "small", 10, seed=1, lo=20, hi=30)
    big = make_job(tmp_path / "big", 2, seed=2, lo=400, hi=500)
    mix = parse_mix({"by": "tokens", "sources": {"small": {"path": str(small), "weight": 0.9},
                                                 "big": {"path": str(big), "weight": 0.1}}})
    stats = run_mix(mix, str(tmp_path / "o"), log=lambda m: None)
    assert stats["sources"]["big"]["samples"] == 0
    assert len(stats["warnings"]) == 1 and stats["warnings"][0].startswith("source big: gave 0 tokens for a quota of ")
    assert "(0.0% of the mix, 10.0% asked)" in stats["warnings"][0]


def test_cap_limits_a_source(jobs3, tmp_path):
    mix = parse_mix({"by": "samples", "sources": {
        "caption": {"path": str(jobs3["caption"]), "weight": 0.5, "cap": 500},
        "ocr": {"path": str(jobs3["ocr"]), "weight": 0.5}}})
    stats = run_mix(mix, str(tmp_path / "o"), log=lambda m: None)
    assert stats["sources"]["caption"]["samples"] == 500 and stats["sources"]["ocr"]["samples"] == 500


def test_select_is_by_hash_not_input_order():
    ids = [make_id("x", i) for i in range(100)]
    a = {ids[i] for i, _ in select(ids, [1] * 100, 30, 0, "s")}
    b = {ids[::-1][i] for i, _ in select(ids[::-1], [1] * 100, 30, 0, "s")}
    assert a == b and len(a) == 30
    assert a != {ids[i] for i, _ in select(ids, [1] * 100, 30, 0, "other")}


@pytest.mark.parametrize(("raw", "message"), [
    ({"sources": {"a": {"path": "x", "weight": 1, "wieght": 2}}}, "sources.a.wieght: unknown key (allowed: cap, "),
    ({"sources": {"a": {"path": "x", "weight": 0}}}, "sources.a.weight: "),
    ({"sources": {"a": {"path": "x", "weight": 1}}, "by": "bytes"}, "by: "),
    ({"sources": {"a.b": {"path": "x", "weight": 1}}}, "sources.a.b: a source name is"),
    ({"sources": {"a": {"path": "x", "weight": 1}}, "pack": {"max_lenn": 3}}, "pack.max_lenn: unknown key"),
    ({"sources": {}}, "sources: name at least one source"),
])
def test_mix_errors_are_one_line_naming_the_key(raw, message):
    with pytest.raises(RecipeError) as e:
        parse_mix(raw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_set_overrides_and_not_a_job_folder(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(f"sources:\n  a: {{path: {tmp_path}, weight: 1}}\n")
    mix = load_mix(str(path), ["sources.a.weight=3", "seed=7"])
    assert mix.sources["a"].weight == 3 and mix.model.seed == 7
    with pytest.raises(RecipeError, match=r"^sources.a.path: .* is not a finished vlcurate job folder"):
        run_mix(mix, str(tmp_path / "o"))



def test_rebuild_after_one_source_changed(jobs3, tmp_path):
    """A source job regenerated (other content, fewer samples): the mix rebuilt into the same folder keeps the
    other sources' selections and equals a clean mix into a new folder."""
    changed = make_job(tmp_path / "vqa2", 2500, seed=9)
    raw = {"by": "samples", "total": 3000, "sources": {
        "caption": {"path": str(jobs3["caption"]), "weight": 2}, "vqa": {"path": str(jobs3["vqa"]), "weight": 1}}}
    run_mix(parse_mix(raw), str(tmp_path / "o"), log=lambda m: None)
    before = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    raw["sources"]["vqa"]["path"] = str(changed)
    run_mix(parse_mix(raw), str(tmp_path / "o"), log=lambda m: None)
    after = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    assert [r for r in before if r["source"] == "caption"] == [r for r in after if r["source"] == "caption"]
    assert {r["source_job"] for r in after if r["source"] == "vqa"} == {str(changed)}
    run_mix(parse_mix(raw), str(tmp_path / "clean"), log=lambda m: None)
    assert files_of(tmp_path / "o") == files_of(tmp_path / "clean")

# ------------------------------------------------------------------------------------------------------------
# pure-text sources and packing


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_chat_and_text_sources_tokenize_like_the_tokenizer_and_pack(tmp_path):
    from model.tokenizer import qwen_tokenizer

    tok = qwen_tokenizer()
    chats = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                           {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(40)]
    chats += ["not json", {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]},
                                        {"role": "assistant", "content": "y"}]},
              {"messages": [{"role": "user", "content": "no answer"}]}]
    docs = [{"text": f"Document {i}. " + "Lorem ipsum dolor sit amet. " * (i % 7 + 1)} for i in range(60)]
    docs.append({"text": "   "})
    mix = parse_mix({"by": "tokens", "pack": {"max_len": 512}, "sources": {
        "chat": {"path": str(write_jsonl(tmp_path / "chat.jsonl", chats)), "kind": "chat", "weight": 0.5},
        "text": {"path": str(write_jsonl(tmp_path / "docs.jsonl", docs)), "kind": "text", "weight": 0.5}}})
    stats = run_mix(mix, str(tmp_path / "o"), log=lambda m: None)
    assert stats["rejected_by_reason"] == {"empty_text": 1, "has_media": 1, "invalid_json": 1,
                                           "no_assistant_turn": 1}
    manifest = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    samples = all_samples(Store(str(tmp_path / "o")))
    checked = set()
    for key, files in samples.items():
        doc = json.loads(files["json"])
        ids = np.load(io.BytesIO(files["input_ids.npy"])).tolist()
        if doc["mix"]["source"] == "chat":
            official = tok.apply_chat_template(doc["messages"], tokenize=False)  # the released chat template
            assert ids == tok(official)["input_ids"]
        else:
            assert ids == tok(doc["text"] + "<|endoftext|>")["input_ids"]
            assert np.load(io.BytesIO(files["labels.npy"])).tolist() == ids  # pretraining: every token trained
        checked.add(doc["mix"]["source"])
        assert next(r for r in manifest if r["key"] == key)["n_tokens"] == len(ids)
    assert checked == {"chat", "text"}
    # packs: every picked sample in exactly one pack, tokens as in its shard, positions restart per member
    assert stats["pack"]["packs"] == len(pq.read_table(tmp_path / "o" / "packs.parquet")) > 0
    packed = pack_members(tmp_path / "o" / "packs")
    assert all(n <= 512 for n in packed.pop("_lengths"))
    for member, (ids, pos, _) in packed.items():
        assert np.array_equal(ids, np.load(io.BytesIO(samples[member]["input_ids.npy"])))
        assert np.array_equal(pos, np.tile(np.arange(len(ids)), (4, 1)))  # text: t = h = w = position
    members_seen = list(packed)
    assert sorted(members_seen) == sorted(samples)


def pack_members(folder: Path) -> dict:
    """{member: (its input_ids, its 4-row position ids, its image grids)} over a packs/ folder, and under
    "_lengths" each pack's length."""
    out: dict = {"_lengths": []}
    for path in sorted(folder.glob("pack-*.tar")):
        entries: dict = {}
        for key, suffix, data in iter_entries(path.read_bytes()):
            entries.setdefault(key, {})[suffix] = data
        for pack in entries.values():
            meta = json.loads(pack["json"])
            cu = np.load(io.BytesIO(pack["cu_seqlens.npy"]))
            ids, pos = (np.load(io.BytesIO(pack[f"{n}.npy"])) for n in ("input_ids", "position_ids"))
            assert pos.shape == (4, len(ids))
            out["_lengths"].append(len(ids))
            for k, member in enumerate(meta["members"]):
                out[member] = (ids[cu[k]:cu[k + 1]], pos[:, cu[k]:cu[k + 1]], meta["image_grid_thw"][k])
    return out


# ------------------------------------------------------------------------------------------------------------
# decontamination


def test_decontamination_catches_planted_copies(tmp_path):
    """Planted: an exact eval question, the same one re-spaced and re-cased inside a longer prompt, and a
    resized copy of an eval image; the rest of the source is kept."""
    from PIL import Image

    evals = tmp_path / "evals"
    (evals / "images").mkdir(parents=True)
    eval_q = ["How many red apples are on the wooden table next to the window?",
              "Which city is shown on the map in the lower left corner of the poster?"]
    write_jsonl(evals / "mmbench.jsonl", [{"question": q, "answer": "x"} for q in eval_q])
    eval_image = (DATA / "ocr_icdar2015" / "imgs" / "img_1.jpg").read_bytes()  # real photos: pHash is for those
    (evals / "images" / "e1.jpg").write_bytes(eval_image)
    (evals / "images" / "e2.jpg").write_bytes((DATA / "qa" / "vqav2" / "COCO_train2014_000000458752.jpg").read_bytes())
    resized = io.BytesIO()
    im = Image.open(io.BytesIO(eval_image))
    im.resize((im.width * 2 // 3, im.height * 2 // 3)).save(resized, "PNG")
    texts = {3: eval_q[0], 5: "Look closely.  which CITY is shown on the map in the lower-left corner of the "
                              "POSTER ?\nAnswer briefly."}
    others = [DATA / "formats" / "gqa" / "n166008.jpg", DATA / "formats" / "flickr30k" / "4945942737.jpg"]
    images = {7: resized.getvalue(), 8: others[0].read_bytes(), 9: others[1].read_bytes(), 10: jpeg(320, 240)}
    job = make_job(tmp_path / "job", 40, seed=5, texts=texts, images=images)
    mix = parse_mix({"by": "samples", "sources": {"vqa": {"path": str(job), "weight": 1}},
                     "decontam": {"eval_sets": {"mmbench": {"path": str(evals / "mmbench.jsonl")},
                                                "mmbench_img": {"path": str(evals / "images")}}}})
    stats = run_mix(mix, str(tmp_path / "o"), log=lambda m: None)
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    ids = {make_id("rows.jsonl", i): i for i in range(40)}
    caught = {ids[r["id"]]: json.loads(r["meta"]) for r in rejects}
    assert set(caught) == {3, 5, 7}
    assert all(r["drop_reason"] == "contaminated" and r["drop_stage"] == "decontam" for r in rejects)
    assert caught[3]["eval_item"] == "mmbench:1" and caught[5]["eval_item"] == "mmbench:2"
    assert caught[7] == {**caught[7], "eval_item": "mmbench_img:e1.jpg", "match": "image_near"}
    assert stats["samples"] == 37 and stats["rejected_by_reason"] == {"contaminated": 3}


@pytest.mark.slow
def test_mix_of_a_real_ocr_job_packs_members_as_the_job_does(ray_local, tmp_path):
    """A real formatted job (jobs/recipes/ocr.yaml) mixed with a text source and packed: each image member's
    4-row position ids (M-RoPE over its image grid) and tokens equal those in the job's own packs."""
    from pipeline.recipe import load_recipe
    from pipeline.runner import run_job

    root = Path(__file__).parents[2]
    job = tmp_path / "ocr"
    run_job(load_recipe(str(root / "jobs/recipes/ocr.yaml"), ["output.report=false"]), str(job), log=lambda m: None)
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"Document {i} about reading street signs."}
                                                 for i in range(30)])
    mix = parse_mix({"by": "tokens", "pack": {"max_len": 8192}, "sources": {
        "ocr": {"path": str(job), "weight": 0.9}, "text": {"path": str(docs), "kind": "text", "weight": 0.1}}})
    run_mix(mix, str(tmp_path / "o"), log=lambda m: None)

    original, mixed = pack_members(job / "packs"), pack_members(tmp_path / "o" / "packs")
    original.pop("_lengths"), mixed.pop("_lengths")
    images = {r["key"]: r["source_id"] for r in pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
              if r["source"] == "ocr"}
    assert images and any(mixed[k][2] for k in images)
    for key, source_id in images.items():
        ids, pos, grid = mixed[key]
        want = original[source_id]
        assert np.array_equal(ids, want[0]) and np.array_equal(pos, want[1]) and grid == want[2]


@pytest.mark.parametrize("name", ["stage1_pairs", "stage2_multitask", "stage4_sft"])
def test_stage_recipes_build_from_their_sources(name, tmp_path):
    """Each stage recipe in jobs/recipes is a mix (told from a recipe by its keys) that validates and builds:
    its sources repointed with --set at small finished jobs, chat / text files and eval sets, every source
    gives samples, keys are unique, and a pack section packs them all."""
    from pipeline.mix import is_mix_file

    path = Path(__file__).parents[2] / "jobs" / "recipes" / f"{name}.yaml"
    assert is_mix_file(str(path)) and not is_mix_file(str(path.with_name("ocr.yaml")))
    mix = load_mix(str(path))
    assert mix.model.format.tokenizer in (None, "qwen2.5-vl")  # the built-in tokenizer for text sources
    sets = ["total=null"]
    for k, (source, spec) in enumerate(mix.sources.items()):
        if spec.kind == "job":
            where = make_job(tmp_path / source, 200, seed=k)
        elif spec.kind == "chat":
            where = write_jsonl(tmp_path / f"{source}.jsonl", [{"messages": [
                {"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]} for i in range(50)])
        else:
            where = write_jsonl(tmp_path / f"{source}.jsonl", [{"text": f"Plain text {i}. " * 20} for i in range(50)])
        sets.append(f"sources.{source}.path={where}")
    for eval_name, es in mix.eval_sets.items():
        if es.path.endswith(".jsonl"):
            where = write_jsonl(tmp_path / f"{eval_name}.jsonl", [{es.column: "What colour is the bus parked at the "
                                                                              "corner of the street?"}])
        else:
            (where := tmp_path / eval_name).mkdir()
            (where / "e.jpg").write_bytes(jpeg(64, 48))
        sets.append(f"decontam.eval_sets.{eval_name}.path={where}")
    stats = run_mix(load_mix(str(path), sets), str(tmp_path / "o"), log=lambda m: None)
    assert all(s["samples"] > 0 for s in stats["sources"].values()), stats["sources"]
    keys = pq.read_table(tmp_path / "o" / "manifest.parquet")["key"].to_pylist()
    assert len(keys) == len(set(keys)) == stats["samples"]
    if mix.model.pack is not None:
        members = [m for p in pq.read_table(tmp_path / "o" / "packs.parquet").to_pylist() for m in p["members"]]
        assert sorted(members) == sorted(keys)
