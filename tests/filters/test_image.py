import io

import pytest
from PIL import Image

from filters.caption import CaptionCheck
from filters.image import ImageCheck, ImageCheckParams
from pipeline.runner import apply_map
from tests import media


def run_check(images, **params):
    stage = ImageCheck(ImageCheckParams(**params), name="image_check")
    rows = [{"id": f"{i:016x}", "images": [d] if d is not None else [], "meta": {}, "drop_stage": None}
            for i, d in enumerate(images)]
    stat = apply_map(stage, rows)
    return rows, stat


@pytest.mark.parametrize(
    "data,reason",
    [
        (media.truncated_jpeg(), "truncated"),
        (b"", "empty_file"),
        (b"plain text, not an image", "decode_error"),
        (media.png_bomb_header(), "decompression_bomb"),
        (media.jpeg(20, 300), "min_side"),
        (media.jpeg(900, 100), "aspect_ratio"),
    ],
)
def test_drop_reasons(data, reason):
    rows, stat = run_check([data], min_side_px=32, max_aspect_ratio=3.0)
    assert rows[0]["drop_reason"] == reason
    assert rows[0]["drop_stage"] == "image_check"
    assert rows[0]["images"] == []
    assert stat["dropped"] == {reason: 1}


def test_missing_image_is_no_image():
    rows, _ = run_check([None])
    assert rows[0]["drop_reason"] == "no_image"


@pytest.mark.parametrize(
    "make,note",
    [
        (media.cmyk_jpeg, "cmyk"),
        (media.png16, "16bit"),
        (media.palette_png_transparent, "palette"),
        (media.animated_gif, "first_frame"),
        (media.exif_rotated_jpeg, "exif_orientation_6"),
    ],
)
def test_normalised_to_upright_rgb(make, note):
    rows, _ = run_check([make()])
    row = rows[0]
    assert row.get("drop_reason") is None
    assert note in row["meta"]["normalised"]["0"]
    im = Image.open(io.BytesIO(row["images"][0]))
    assert im.mode == "RGB"
    assert (im.width, im.height) == (row["width"], row["height"])
    assert getattr(im, "n_frames", 1) == 1
    assert im.getexif().get(0x0112, 1) == 1


def test_exif_rotation_stores_portrait_and_rotates_pixels():
    src = media.photo(300, 200, 3)
    rows, _ = run_check([media.exif_rotated_jpeg()])
    im = Image.open(io.BytesIO(rows[0]["images"][0])).convert("RGB")
    assert im.size == (200, 300)
    # orientation 6 = rotate 90 degrees clockwise for display: the stored top-left comes from the source's
    # bottom-left region
    expected = src.transpose(Image.Transpose.ROTATE_270)
    a = [c for c in im.resize((4, 4)).get_flattened_data()]
    b = [c for c in expected.resize((4, 4)).get_flattened_data()]
    assert max(abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)) < 40


def test_plain_images_kept_byte_for_byte():
    data = media.jpeg(640, 480, 7)
    webp = media.webp()
    rows, _ = run_check([data, webp])
    assert rows[0]["images"][0] == data and rows[1]["images"][0] == webp
    assert (rows[0]["width"], rows[0]["height"]) == (640, 480)


def test_one_bad_row_does_not_fail_the_batch():
    class Exploding(ImageCheck):
        def score(self, batch):
            if any(d == [b"boom"] for d in batch["images"]):
                raise RuntimeError("exploded")
            return super().score(batch)

    stage = Exploding(name="image_check")
    rows = [{"id": str(i), "images": [d], "meta": {}, "drop_stage": None}
            for i, d in enumerate([media.jpeg(seed=1), b"boom", media.jpeg(seed=2)])]
    stat = apply_map(stage, rows)
    assert [r.get("drop_reason") for r in rows] == [None, "stage_error", None]
    assert "exploded" in rows[1]["meta"]["error"]
    assert stat == {"in": 3, "kept": 2, "dropped": {"stage_error": 1}, "seconds": 0.0}


def test_caption_check():
    stage = CaptionCheck(CaptionCheck.Params(min_chars=3), name="caption_check")
    rows = [{"id": str(i), "text": t, "meta": {}, "drop_stage": None, "images": []}
            for i, t in enumerate([None, "", "  \n ", "ab", "a cat"])]
    apply_map(stage, rows)
    assert [r.get("drop_reason") for r in rows] == ["empty_caption"] * 3 + ["short_caption", None]
