"""Test images made on the spot: every awkward case the image check must handle."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.tar import iter_entries

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "jobs" / "demo_data" / "images"


def photo(w: int = 320, h: int = 240, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (gradients + noise), JPEG-friendly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 12, (h, w, 3)) + rng.uniform(0, 80, 3), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(photo(200, 150, 1).convert("CMYK"), "JPEG", quality=90)


def png16() -> bytes:
    arr = (np.linspace(0, 65535, 160 * 120).reshape(120, 160)).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def palette_png_transparent() -> bytes:
    im = photo(128, 96, 2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


def exif_rotated_jpeg(w: int = 300, h: int = 200) -> bytes:
    """Stored w x h (landscape) with EXIF orientation 6: displays as h x w (portrait)."""
    im = photo(w, h, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=90, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [photo(100, 80, s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def webp() -> bytes:
    return encode(photo(180, 120, 4), "WEBP", quality=80)


def jpeg(w: int = 320, h: int = 240, seed: int = 0, quality: int = 90) -> bytes:
    return encode(photo(w, h, seed), "JPEG", quality=quality)


def truncated_jpeg() -> bytes:
    data = jpeg(400, 300, 5)
    return data[: len(data) // 2]


def png_bomb_header(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR claims w x h pixels."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_mixed_dataset(root: Path) -> tuple[Path, dict[str, str | None]]:
    """A jsonl mixing every case of the conservation test; returns (path, expected reason per line source).

    Expected value None = kept; otherwise the drop reason.
    """
    img = root / "img"
    img.mkdir(parents=True, exist_ok=True)
    files = {
        "cmyk.jpg": cmyk_jpeg(), "gray16.png": png16(), "palette.png": palette_png_transparent(),
        "exif6.jpg": exif_rotated_jpeg(), "anim.gif": animated_gif(), "photo.webp": webp(),
        "good1.jpg": jpeg(seed=11), "good2.jpg": jpeg(480, 320, seed=12),
        "truncated.jpg": truncated_jpeg(), "zero.jpg": b"", "text.jpg": b"hello, I am not an image\n",
        "bomb.png": png_bomb_header(),
    }
    for name, data in files.items():
        (img / name).write_bytes(data)
    (img / "camera.png").write_bytes((DEMO_IMAGES / "camera.png").read_bytes())
    good = [("cmyk.jpg", None), ("gray16.png", None), ("palette.png", None), ("exif6.jpg", None),
            ("anim.gif", None), ("photo.webp", None), ("good1.jpg", None), ("good2.jpg", None),
            ("camera.png", None), ("truncated.jpg", "truncated"), ("zero.jpg", "empty_file"),
            ("text.jpg", "decode_error"), ("bomb.png", "decompression_bomb"), ("missing.jpg", "missing_file")]
    lines: list[bytes] = []
    expected: dict[str, str | None] = {}
    for name, reason in good:
        lines.append(json.dumps({"image": f"img/{name}", "caption": f"a picture called {name}"}).encode())
        expected[f"data.jsonl:{len(lines)}"] = reason
    for caption in (None, "", "   \t "):
        lines.append(json.dumps({"image": "img/good1.jpg", "caption": caption}).encode())
        expected[f"data.jsonl:{len(lines)}"] = "empty_caption"
    lines.append(b'{"image": "img/good1.jpg", "caption": "unterminated')
    expected[f"data.jsonl:{len(lines)}"] = "invalid_json"
    lines.append(b'{"image": "img/good1.jpg", "caption": "bad bytes \xff\xfe here"}')
    expected[f"data.jsonl:{len(lines)}"] = "invalid_utf8"
    path = root / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


def qwen_vl_utils_video(path: Path, monkeypatch) -> tuple:
    """qwen-vl-utils' own fetch_video on `path` with the decord backend: (frames float tensor (n, 3, h, w),
    metadata, sample_fps) — the reference our video reader must equal."""
    import pytest

    vp = pytest.importorskip("qwen_vl_utils.vision_process")
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "decord")
    monkeypatch.setattr(vp, "FORCE_QWENVL_VIDEO_READER", "decord")
    vp.get_video_reader_backend.cache_clear()
    try:
        (frames, meta), sample_fps = vp.fetch_video({"video": str(path)}, return_video_sample_fps=True,
                                                    return_video_metadata=True)
    finally:
        vp.get_video_reader_backend.cache_clear()
    return frames, meta, sample_fps


def near_copies(data: bytes) -> dict[str, bytes]:
    """The copies a web crawl holds of one photo (issue 3): 50% size, JPEG quality 40, 2% cropped (1% a side),
    10% brighter, and a byte-for-byte copy."""
    from PIL import ImageEnhance

    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    dx, dy = round(w * 0.01), round(h * 0.01)
    return {
        "original": data,
        "byte_copy": bytes(data),
        "resized_50": encode(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "JPEG", quality=90),
        "jpeg_q40": encode(im, "JPEG", quality=40),
        "crop_2pct": encode(im.crop((dx, dy, w - dx, h - dy)), "JPEG", quality=90),
        "brighter_10pct": encode(ImageEnhance.Brightness(im).enhance(1.1), "JPEG", quality=90),
    }


def samples_in(tars: list[Path]) -> dict[str, dict[str, bytes]]:
    """Every sample of these webdataset tars: key -> {suffix: bytes} (a key.suffix written twice fails)."""
    out: dict[str, dict[str, bytes]] = {}
    for tar in tars:
        for key, suffix, data in iter_entries(tar.read_bytes()):
            assert suffix not in out.setdefault(key, {}), f"{key}.{suffix} written twice"
            out[key][suffix] = data
    return out
