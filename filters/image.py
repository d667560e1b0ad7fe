"""Image decode and geometry checks, with normalisation to upright RGB."""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from filters.base import Batch, Params, Stage

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit from the header, before any decode
LOSSLESS = {"PNG", "GIF", "BMP", "TIFF", "WEBP_LOSSLESS", "PPM", "ICO"}
TRUNCATED_MARKERS = ("truncated", "broken data stream", "premature end", "unexpected end", "not enough data")
THUMB_SIDE = 32  # the grayscale thumbnail the pHash works on (filters.dedup)
THUMB_DRAFT_PX = 64  # JPEGs are drafted to at least this many px per side for it


class ImageCheckParams(Params):
    min_side_px: int = 32
    max_side_px: int | None = None
    max_aspect_ratio: float = 200.0
    max_pixels: int | None = None
    max_decode_pixels: int = 178_956_970
    min_file_bytes: int = 1
    max_file_bytes: int | None = 50_000_000
    require_image: bool = True
    full_decode: bool = False
    jpeg_quality: int = 95


class ImageError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """Width and height after EXIF orientation, read from the header (no decode)."""
    w, h = im.size
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not a broken image
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """Normalise mode: CMYK, palette (with transparency), alpha, 16-bit, animated -> 8-bit RGB."""
    notes = []
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
        notes.append("first_frame")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        scale = 257.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        im = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8), "L")
        notes.append("16bit")
    elif mode == "F":
        arr = np.asarray(im)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
        notes.append("float")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append("alpha")
    elif im.mode == "CMYK":
        im = im.convert("RGB")
        notes.append("cmyk")
    elif im.mode != "RGB":
        notes.append(f"mode_{im.mode}")
        im = im.convert("RGB")
    return im, notes


def gray_thumbnail(img: Image.Image) -> np.ndarray:
    """The ``THUMB_SIDE`` x ``THUMB_SIDE`` grayscale (uint8) the pHash is computed from.

    A JPEG not yet loaded is decoded at reduced scale (``Image.draft``: grayscale, at the strongest of 1/8,
    1/4, 1/2 that leaves ``THUMB_DRAFT_PX`` px per side), which is several times faster than a full decode.
    Drafting down to 32 px would be faster still on small images, but it moves hashes about twice as far from
    the full-decode hash (1.6 bits on average, up to 8, against 0.8 and 4 at 64 px, on the dev photos
    re-encoded at 10-200%), so the draft stops at 64. Transparency is flattened on white, then a LANCZOS
    resize to ``THUMB_SIDE`` px.
    """
    if img.format == "JPEG":
        img.draft("L", (THUMB_DRAFT_PX, THUMB_DRAFT_PX))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    gray = img.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8)


class ThumbnailMemo:
    """Recently computed ``gray_thumbnail``s of encoded images, so that a hash stage running after the image
    check in the same worker does not decode the same JPEG a second time.

    Keyed by content: the length and Python hash of the bytes (cached on the bytes object, so the second
    lookup costs nothing), with 48 sampled bytes compared on lookup. Process-local and bounded (``capacity``
    entries of about 1 KiB, oldest dropped first): a miss only means decoding again, never another result.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int, int], tuple[bytes, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(data: bytes) -> tuple[tuple[int, int], bytes]:
        n = len(data)
        return (n, hash(data)), data[:16] + data[n // 2 : n // 2 + 16] + data[-16:]

    def put(self, data: bytes, pixels: np.ndarray) -> None:
        if not isinstance(data, bytes):
            return
        key, sample = self._key(data)
        with self._lock:
            self._items[key] = (sample, pixels)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, data: bytes) -> np.ndarray | None:
        if not isinstance(data, bytes):
            return None
        key, sample = self._key(data)
        with self._lock:
            hit = self._items.get(key)
        return hit[1] if hit is not None and hit[0] == sample else None


THUMBNAILS = ThumbnailMemo()


def check_image(data: bytes | None, p: ImageCheckParams) -> tuple[bytes, int, int, dict[str, Any]]:
    """Check one encoded image; return (bytes to store, width, height, meta notes) or raise ImageError.

    Geometry is read from the header first, so oversized or misshapen images are rejected before any
    decode. A JPEG that needs no normalisation is decoded with `Image.draft` at reduced scale: Pillow still
    reads the whole entropy-coded stream, so truncation is caught at a fraction of the cost.
    """
    if data is None:
        raise ImageError("no_image")
    if len(data) == 0:
        raise ImageError("empty_file")
    if len(data) < p.min_file_bytes:
        raise ImageError("file_too_small", f"{len(data)} bytes")
    if p.max_file_bytes is not None and len(data) > p.max_file_bytes:
        raise ImageError("file_too_large", f"{len(data)} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError("decode_error", _detail(e)) from None
    except Image.DecompressionBombError as e:
        raise ImageError("decompression_bomb", _detail(e)) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(_classify(e), _detail(e)) from None
    w0, h0 = im.size
    if w0 * h0 > p.max_decode_pixels:
        raise ImageError("decompression_bomb", f"header claims {w0}x{h0}")
    w, h = _upright_size(im)
    if min(w, h) < p.min_side_px:
        raise ImageError("min_side", f"{w}x{h}")
    if p.max_side_px is not None and max(w, h) > p.max_side_px:
        raise ImageError("max_side", f"{w}x{h}")
    if max(w, h) / max(min(w, h), 1) > p.max_aspect_ratio:
        raise ImageError("aspect_ratio", f"{w}x{h}")
    if p.max_pixels is not None and w * h > p.max_pixels:
        raise ImageError("max_pixels", f"{w}x{h}")
    fmt = im.format or "PNG"
    orientation = _orientation(im)
    plain = im.mode in ("RGB", "L") and orientation == 1 and getattr(im, "n_frames", 1) == 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if plain:
                if fmt == "JPEG" and not p.full_decode:
                    im.draft("L", (THUMB_DRAFT_PX, THUMB_DRAFT_PX))
                    im.load()
                    THUMBNAILS.put(data, gray_thumbnail(im))
                else:
                    im.load()
                return data, w, h, {}
            im.load()
            im = ImageOps.exif_transpose(im) if orientation != 1 else im
            rgb, notes = _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise ImageError("decompression_bomb", _detail(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(_classify(e), _detail(e)) from None
    if orientation != 1:
        notes.insert(0, f"exif_orientation_{orientation}")
    lossless = fmt in LOSSLESS and not (fmt == "WEBP" and im.info.get("lossless") is False)
    buf = io.BytesIO()
    if lossless:
        rgb.save(buf, "PNG", optimize=False)
    else:
        rgb.save(buf, "JPEG", quality=p.jpeg_quality)
    return buf.getvalue(), rgb.width, rgb.height, {"normalised": notes, "original_format": fmt}


def _detail(e: BaseException) -> str:
    """The error message without object addresses, so rejects are identical across runs."""
    return re.sub(r" ?<[^>]* at 0x[0-9a-f]+>", "", str(e))[:200]


def _classify(e: BaseException) -> str:
    msg = str(e).lower()
    return "truncated" if any(m in msg for m in TRUNCATED_MARKERS) else "decode_error"


class ImageCheck(Stage):
    """Decode check + geometry limits; normalises EXIF rotation, CMYK, palette/alpha, 16-bit and animations.

    Reasons: `no_image`, `empty_file`, `file_too_small`, `file_too_large`, `decode_error`, `truncated`,
    `decompression_bomb` (header pixels over `max_decode_pixels`), `min_side`, `max_side`, `aspect_ratio`,
    `max_pixels`. A normalised image is re-encoded (PNG when the source was lossless, else JPEG) so the
    trainer decodes exactly the upright RGB image that was measured; `meta.normalised` says what was done.
    Scores: `width`, `height` (of the first image, upright), `image_bytes`, `n_images`.
    """

    Params = ImageCheckParams
    batch_size = 32

    def score(self, batch: Batch) -> Batch:
        p: ImageCheckParams = self.params
        out: Batch = {"images": [], "meta": [], "width": [], "height": [], "image_bytes": [], "n_images": [],
                      "_reason": []}
        for images, meta in zip(batch["images"], batch["meta"], strict=True):
            new_images, reason, width, height = [], None, None, None
            meta = dict(meta)
            if not images and p.require_image:
                reason = "no_image"
            for k, data in enumerate(images or []):
                try:
                    stored, w, h, notes = check_image(data, p)
                except ImageError as e:
                    reason = e.reason
                    meta["image_error"] = f"image {k}: {e}"
                    break
                if notes:
                    meta.setdefault("normalised", {})[str(k)] = notes["normalised"]
                    meta.setdefault("original_format", {})[str(k)] = notes["original_format"]
                if k == 0:
                    width, height = w, h
                new_images.append(stored)
            out["images"].append(new_images if reason is None else [])
            out["meta"].append(meta)
            out["width"].append(width)
            out["height"].append(height)
            out["image_bytes"].append(sum(len(d or b"") for d in images or []))
            out["n_images"].append(len(images or []))
            out["_reason"].append(reason)
        return out

    def decide(self, batch: Batch) -> list[str | None]:
        return list(batch["_reason"])

    def score_columns(self) -> list[str]:
        return ["width", "height", "image_bytes", "n_images"]
