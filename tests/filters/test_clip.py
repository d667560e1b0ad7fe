"""CLIP score with a tiny open_clip model saved to a file and loaded back the way a real checkpoint is."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from pydantic import ValidationError

from filters.clip import ClipScore
from model.clip import build_tiny_clip, load_clip, warn_quickgelu_mismatch
from tests.media import DEMO_IMAGES, jpeg

PHOTOS = {
    "camera.png": "a person looking at a camera on a tripod",
    "chelsea.png": "a facial photo of a tabby cat",
    "coins.png": "Greek coins from Pompeii",
    "horse.png": "a black-and-white silhouette of a horse",
    "rocket.jpg": "a rocket standing on a launchpad",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str]:
    arch, path = build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip.safetensors")
    return arch, str(path)


def batch_of(n: int) -> dict[str, list]:
    names = list(PHOTOS)
    images, texts = [], []
    for i in range(n):
        if i < len(names):
            images.append([(DEMO_IMAGES / names[i]).read_bytes()])
            texts.append(PHOTOS[names[i]])
        else:
            images.append([jpeg(64 + i, 48, seed=i)])
            texts.append(f"a colourful gradient number {i}")
    return {"id": [f"{i:016x}" for i in range(n)], "images": images, "text": texts}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_tiny_checkpoint_loads_back_through_the_file_path(tmp_path, suffix):
    from PIL import Image

    arch, path = build_tiny_clip(tmp_path / f"tiny{suffix}")
    scorer = load_clip(arch, path)
    images = [Image.open(io.BytesIO(b[0])) for b in batch_of(3)["images"]]
    img = scorer.encode_images(images)
    txt = scorer.encode_texts(["a cat", "a rocket", ""])
    assert img.shape == txt.shape == (3, 32) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    # same seed, same weights, whatever the file format
    again = load_clip(*build_tiny_clip(tmp_path / "again.pt"))
    np.testing.assert_allclose(again.encode_texts(["a cat"]), scorer.encode_texts(["a cat"]), atol=1e-6)


def test_scores_are_cosines_and_batching_does_not_change_them(tiny):
    arch, path = tiny
    stage = ClipScore(ClipScore.Params(arch=arch, checkpoint=path, encode_batch_size=3))
    stage.check()
    stage.setup()
    batch = batch_of(8)
    scores = stage.score(batch)["clip_score"]
    assert len(scores) == 8 and all(-1.0 <= s <= 1.0 for s in scores)
    one_by_one = [stage.score({k: [v[i]] for k, v in batch.items()})["clip_score"][0] for i in range(8)]
    # every model call runs at the fixed encode batch size, so scores are bit-identical however rows were
    # batched (hence whatever the job's partitioning)
    assert scores == one_by_one
    split = stage.score({k: v[:5] for k, v in batch.items()})["clip_score"] + \
        stage.score({k: v[5:] for k, v in batch.items()})["clip_score"]
    assert split == scores


def test_rows_without_image_or_caption_are_not_scored(tiny):
    arch, path = tiny
    stage = ClipScore(ClipScore.Params(arch=arch, checkpoint=path))
    stage.setup()
    batch = batch_of(3)
    batch["images"][1] = []
    batch["text"][2] = ""
    scores = stage.score(batch)["clip_score"]
    assert scores[0] is not None and scores[1] is None and scores[2] is None


def table(scores: list[float | None]) -> dict[str, list]:
    return {"id": [f"{i:016x}" for i in range(len(scores))], "clip_score": scores}


@pytest.mark.parametrize("n", [1, 7, 10, 100, 333])
def test_keep_top_fraction_keeps_30_percent_of_scored_rows(n):
    rng = np.random.default_rng(n)
    scores = [round(float(s), 2) for s in rng.uniform(-0.2, 0.5, n)]  # rounding makes ties
    out = ClipScore(ClipScore.Params(checkpoint="x", keep_top_fraction=0.3)).decide_global(table(scores))
    kept = [i for i, r in enumerate(out["drop_reason"]) if r is None]
    assert abs(len(kept) - 0.3 * n) <= 1
    assert set(out["drop_reason"]) <= {None, "clip_score_low"}
    worst_kept = min(((scores[i], -i) for i in kept), default=(float("inf"), 0))
    for i, r in enumerate(out["drop_reason"]):
        if r is not None:  # every dropped row ranks below every kept one (score, then smaller id first)
            assert (scores[i], -i) < worst_kept


def test_keep_top_fraction_is_deterministic_and_ignores_unscored_rows():
    scores = [0.2, None, 0.2, 0.1, 0.3, float("nan"), 0.2, 0.05, 0.2, 0.0]
    stage = ClipScore(ClipScore.Params(checkpoint="x", keep_top_fraction=0.5))
    out = stage.decide_global(table(scores))["drop_reason"]
    # 8 scored rows -> keep 4: 0.3, then the ties at 0.2 by id (rows 0, 2, 6); row 8 at 0.2 is dropped
    assert [i for i, r in enumerate(out) if r is None] == [0, 1, 2, 4, 5, 6]
    order = [9, 3, 7, 0, 5, 2, 8, 1, 4, 6]
    shuffled = {"id": [table(scores)["id"][i] for i in order], "clip_score": [scores[i] for i in order]}
    again = dict(zip(shuffled["id"], stage.decide_global(shuffled)["drop_reason"], strict=True))
    assert again == dict(zip(table(scores)["id"], out, strict=True))


def test_min_clip_score_and_score_only():
    scores = [0.31, 0.28, None, 0.35, 0.1]
    out = ClipScore(ClipScore.Params(checkpoint="x", min_clip_score=0.3)).decide_global(table(scores))
    assert out["drop_reason"] == [None, "clip_score_low", None, None, "clip_score_low"]
    assert (
        ClipScore(ClipScore.Params(checkpoint="x")).decide_global(table(scores))["drop_reason"] == [None] * 5
    )


def test_check_requires_a_checkpoint_file(tmp_path, tiny):
    arch, path = tiny
    with pytest.raises(ValueError, match="^checkpoint: "):
        ClipScore(ClipScore.Params(arch=arch)).check()
    with pytest.raises(ValueError, match="^checkpoint: file not found"):
        ClipScore(ClipScore.Params(arch=arch, checkpoint=str(tmp_path / "missing.pt"))).check()
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="^checkpoint: expected one of"):
        ClipScore(ClipScore.Params(arch=arch, checkpoint=str(tmp_path / "weights.onnx"))).check()
    with pytest.raises(ValueError, match="^arch: unknown open_clip architecture"):
        ClipScore(ClipScore.Params(arch="ViT-Q-99", checkpoint=path)).check()


def test_params_take_one_decision_rule():
    with pytest.raises(ValidationError, match="not both"):
        ClipScore.Params(checkpoint="x", min_clip_score=0.3, keep_top_fraction=0.3)
    with pytest.raises(ValidationError):
        ClipScore.Params(checkpoint="x", keep_top_fraction=1.5)
    assert ClipScore(ClipScore.Params(checkpoint="x", device="cuda")).num_gpus == 1.0
    assert ClipScore(ClipScore.Params(checkpoint="x")).num_gpus == 0.0


def test_quickgelu_mismatch_is_detected_where_the_source_shows(tmp_path, tiny):
    arch, path = tiny
    assert warn_quickgelu_mismatch("ViT-L-14", "/models/clip-vit-l-14-openai.safetensors") is not None
    assert "ViT-L-14-quickgelu" in warn_quickgelu_mismatch(
        "ViT-L-14", "/hf/timm--vit_large_patch14_clip_224.openai/m.bin"
    )
    assert warn_quickgelu_mismatch("ViT-L-14-quickgelu", "/models/clip-vit-l-14-openai.safetensors") is None
    laion = "/hf/models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_pytorch_model.bin"
    assert warn_quickgelu_mismatch("ViT-B-32", laion) is None
    assert "use 'ViT-B-32'" in warn_quickgelu_mismatch("ViT-B-32-quickgelu", laion)
    assert warn_quickgelu_mismatch("ViT-L-14", "/models/my-finetune.safetensors") is None  # cannot tell
    # the stage warns in check(), on the driver, with the real file
    openai_named = tmp_path / "tiny-openai.safetensors"
    openai_named.write_bytes(open(path, "rb").read())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ClipScore(ClipScore.Params(arch=arch, checkpoint=str(openai_named))).check()
    assert any("QuickGELU" in str(w.message) for w in caught)


def test_embeddings_do_not_depend_on_batch_composition(tiny):
    """Matrix kernels block by batch size, so without a fixed batch size a row's embedding changes in the last
    bits with the rows around it; the scorer pads every call to its batch size, so they are bit-identical."""
    from PIL import Image

    scorer = load_clip(*tiny, batch_size=8)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8)) for i in range(10)]
    whole = scorer.encode_images(images)
    assert np.array_equal(whole, np.concatenate([scorer.encode_images(images[:1]), scorer.encode_images(images[1:7]),
                                                 scorer.encode_images(images[7:])]))
    texts = [f"caption number {i} about a thing" for i in range(10)]
    assert np.array_equal(scorer.encode_texts(texts),
                          np.concatenate([scorer.encode_texts(texts[:3]), scorer.encode_texts(texts[3:])]))


def test_every_caption_of_a_row_is_scored_with_the_image_encoded_once(tiny):
    arch, path = tiny
    stage = ClipScore(ClipScore.Params(arch=arch, checkpoint=path, encode_batch_size=4))
    stage.setup()
    photo = [(DEMO_IMAGES / "rocket.jpg").read_bytes()]
    captions = ["a rocket standing on a launchpad", "a tabby cat", "Greek coins from Pompeii", "a rocket"]
    multi = {"id": ["0" * 16, "1" * 16], "images": [photo, batch_of(2)["images"][1]],
             "text": [captions[0], "a facial photo of a tabby cat"], "captions": [captions, None]}
    encoded = []
    encode_images = stage.scorer.encode_images
    stage.scorer.encode_images = lambda images: encoded.append(len(images)) or encode_images(images)
    cols = stage.score(multi)
    assert encoded == [2]  # two rows, two images: not one per caption
    # each caption's score is bit-identical to scoring it as the only caption of a row of its own
    alone = stage.score({"id": [f"{i:016x}" for i in range(4)], "images": [photo] * 4, "text": captions})
    assert cols["clip_scores"][0] == alone["clip_score"]
    assert cols["clip_score"][0] == max(alone["clip_score"]) and cols["clip_scores"][1] is None
    assert cols["clip_score"][1] == stage.score({k: v[1:] for k, v in multi.items()})["clip_score"][0]
    assert "clip_scores" not in stage.score({k: multi[k] for k in ("id", "images", "text")})


def test_the_best_scoring_caption_becomes_the_text():
    table = {
        "id": ["0" * 16, "1" * 16, "2" * 16],
        "text": ["a cat on a sofa", "a horse", "a red car"],
        "captions": [["a cat on a sofa", "a rocket on its launchpad", "a white rocket"], None, ["a red car", "car"]],
        "clip_scores": [[0.12, 0.31, 0.31], None, [0.2, 0.1]],
        "clip_score": [0.31, 0.25, 0.2],
    }
    out = ClipScore(ClipScore.Params(checkpoint="x", keep_top_fraction=0.67)).decide_global(table)
    assert out["text"] == ["a rocket on its launchpad", "a horse", "a red car"]  # ties: the first
    assert out["drop_reason"] == [None, None, "clip_score_low"]
    assert "text" not in ClipScore(ClipScore.Params(checkpoint="x")).decide_global(
        {k: table[k] for k in ("id", "clip_score")})


def test_check_refuses_a_checkpoint_of_another_architecture(tiny, tmp_path):
    arch, path = tiny
    ClipScore(ClipScore.Params(arch=arch, checkpoint=path)).check()  # the right one passes
    for wrong in ("ViT-B-32", "RN50"):
        with pytest.raises(ValueError, match="^arch: checkpoint 'tiny-clip.safetensors' does not fit "
                                             f"architecture '{wrong}': .* tensors differ in shape") as e:
            ClipScore(ClipScore.Params(arch=wrong, checkpoint=path)).check()
        assert "\n" not in str(e.value) and len(str(e.value)) < 400
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="^arch: checkpoint 'garbage.pt' cannot be read as open_clip weights"):
        ClipScore(ClipScore.Params(arch=arch, checkpoint=str(garbage))).check()
