"""formatters.qwen against SPEC-qwen.md §2–§4 and the reference implementations."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from qwen_vl_utils import vision_process as qvu  # noqa: E402
from transformers.models.qwen2_vl import image_processing_qwen2_vl as hf_qwen2_vl  # noqa: E402

from formatters.qwen import (  # noqa: E402
    box_to_pixels,
    convert_box,
    convert_point,
    convert_quad,
    format_box_text,
    format_json_boxes,
    format_quad_text,
    image_grid,
    image_tokens,
    quad_to_pixels,
    smart_resize,
    video_plan,
)

HF_DEFAULT_MAX = 28 * 28 * 1280


def _random_size(rng: random.Random, min_side: int = 14) -> tuple[int, int]:
    """A random (height, width), sides >= min_side, aspect ratio sometimes beyond 200."""
    short = int(math.exp(rng.uniform(math.log(min_side), math.log(3000))))
    ratio = math.exp(rng.uniform(0, math.log(260)))
    long = max(short, int(short * ratio))
    return (short, long) if rng.random() < 0.5 else (long, short)


def _random_limits(rng: random.Random) -> tuple[int, int]:
    lo = rng.choice([784, 3136, 56 * 56, 128 * 784, rng.randrange(784, 200_000)])
    hi = rng.choice([50176, 147456, HF_DEFAULT_MAX, 16384 * 784, 768 * 784, rng.randrange(lo, 20_000_000)])
    return lo, max(lo, hi)


# §3 worked examples


def test_spec_image_examples() -> None:
    assert smart_resize(224, 224) == (224, 224)
    assert image_tokens(224, 224) == 64
    assert smart_resize(1080, 1920) == (1092, 1932)
    assert image_tokens(1080, 1920) == 2691
    assert smart_resize(1080, 1920, max_pixels=HF_DEFAULT_MAX) == (728, 1316)
    assert image_tokens(1080, 1920, max_pixels=HF_DEFAULT_MAX) == 1222
    assert image_grid(1080, 1920) == (1, 78, 138)


def test_aspect_ratio_over_200_raises() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010)
    with pytest.raises(ValueError, match="aspect ratio"):
        image_tokens(3000, 14)
    assert smart_resize(10, 2000)  # exactly 200 is allowed


def test_invalid_sizes_and_limits_raise() -> None:
    with pytest.raises(ValueError):
        smart_resize(0, 100)
    with pytest.raises(ValueError):
        smart_resize(100, 100, min_pixels=10_000, max_pixels=5_000)


def test_smart_resize_matches_transformers() -> None:
    """Sides > 14 px: equal to transformers' Qwen2VLImageProcessor smart_resize on random sizes and limits."""
    rng = random.Random(0)
    checked = 0
    for _ in range(5000):
        h, w = _random_size(rng, min_side=15)
        lo, hi = _random_limits(rng)
        try:
            want = hf_qwen2_vl.smart_resize(h, w, 28, lo, hi)
        except ValueError:
            with pytest.raises(ValueError):
                smart_resize(h, w, 28, lo, hi)
            continue
        assert smart_resize(h, w, 28, lo, hi) == want, (h, w, lo, hi)
        checked += 1
    assert checked > 3000


def test_smart_resize_14px_side_differs_from_transformers() -> None:
    """A 14-px side rounds to 0 in transformers (round(0.5) == 0 lacks the step-2 clamp), which sends the
    image to the min_pixels branch; ours keeps 28. They agree only when ours takes that branch too."""
    rng = random.Random(1)
    differ = 0
    for _ in range(2000):
        long = rng.randrange(14, 2801)
        lo, hi = _random_limits(rng)
        h, w = (14, long) if rng.random() < 0.5 else (long, 14)
        ours = smart_resize(h, w, 28, lo, hi)
        if max(28, round(h / 28) * 28) * max(28, round(w / 28) * 28) < lo:
            assert ours == hf_qwen2_vl.smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)
        else:
            differ += ours != hf_qwen2_vl.smart_resize(h, w, 28, lo, hi)
    assert differ > 0
    assert smart_resize(14, 564) == (28, 560)
    assert hf_qwen2_vl.smart_resize(14, 564, 28, 3136, 16384 * 784) == (28, 364)


def test_smart_resize_matches_qwen_vl_utils_where_nonzero() -> None:
    rng = random.Random(2)
    compared = 0
    for _ in range(5000):
        h, w = _random_size(rng, min_side=14)
        lo, hi = _random_limits(rng)
        try:
            want = qvu.smart_resize(h, w, 28, lo, hi)
        except ValueError:
            with pytest.raises(ValueError):
                smart_resize(h, w, 28, lo, hi)
            continue
        if 0 in want:
            continue
        assert smart_resize(h, w, 28, lo, hi) == want, (h, w, lo, hi)
        compared += 1
    assert compared > 3000
    assert qvu.smart_resize(60, 6000, 28, 3136, 50176)[0] == 0  # SPEC §3: qwen-vl-utils returns 0 here
    assert smart_resize(60, 6000, 28, 3136, 50176)[0] == 28


def test_image_tokens_and_grid_match_transformers_image_processor() -> None:
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=HF_DEFAULT_MAX)
    for w, h in [(224, 224), (640, 428), (1920, 1080), (33, 500), (1000, 20)]:
        out = proc(images=[Image.new("RGB", (w, h))], return_tensors="np")
        grid = tuple(int(x) for x in out["image_grid_thw"][0])
        assert grid == image_grid(h, w, max_pixels=HF_DEFAULT_MAX)
        assert image_tokens(h, w, max_pixels=HF_DEFAULT_MAX) == grid[1] * grid[2] // 4


# §4 video plan


def test_spec_video_example() -> None:
    plan = video_plan(total_frames=300, video_fps=30.0, height=360, width=640)
    assert len(plan.frame_indices) == plan.n_frames == 20
    assert (plan.resized_width, plan.resized_height) == (644, 364)
    assert plan.grid_thw == (10, 26, 46)
    assert plan.n_tokens == 2990
    assert plan.sample_fps == 2.0
    assert plan.second_per_grid_t == 1.0
    assert plan.frame_indices[0] == 0 and plan.frame_indices[-1] == 299


def test_video_plan_invalid_input_raises() -> None:
    with pytest.raises(ValueError):
        video_plan(0, 30.0, 360, 640)
    with pytest.raises(ValueError):
        video_plan(100, 0.0, 360, 640)
    with pytest.raises(ValueError):
        video_plan(100, -5.0, 360, 640)
    with pytest.raises(ValueError):
        video_plan(1, 30.0, 360, 640)  # cannot sample 2 frames
    with pytest.raises(ValueError):
        video_plan(100, 30.0, 360, 640, nframes=200)


def _reference_plan(ele: dict, total_frames: int, video_fps: float, height: int, width: int) -> dict:
    """qwen-vl-utils 0.0.14: _read_video_decord's frame choice, then fetch_video's per-frame resize."""
    start, end, count = qvu.calculate_video_frame_range(ele, total_frames, video_fps)
    n = qvu.smart_nframes(ele, total_frames=count, video_fps=video_fps)
    idx = torch.linspace(start, end, n).round().long().tolist()
    sample_fps = n / max(count, 1e-6) * video_fps
    factor = 28
    min_pixels = ele.get("min_pixels", qvu.VIDEO_MIN_TOKEN_NUM * factor * factor)
    total_pixels = ele.get("total_pixels", qvu.MODEL_SEQ_LEN * factor * factor * 0.9)
    max_pixels = max(
        min(qvu.VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / n * qvu.FRAME_FACTOR),
        int(min_pixels * 1.05),
    )
    max_pixels = min(ele.get("max_pixels", max_pixels), max_pixels)
    rh, rw = qvu.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return {"indices": idx, "sample_fps": sample_fps, "size": (rh, rw)}


def test_video_plan_matches_qwen_vl_utils() -> None:
    rng = random.Random(3)
    compared = 0
    for _ in range(1500):
        video_fps = rng.choice([23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0, rng.uniform(0.5, 120)])
        total = rng.choice([rng.randrange(1, 40), rng.randrange(40, 3000), rng.randrange(3000, 200_000)])
        h, w = _random_size(rng, min_side=14)
        ele: dict = {}
        kwargs: dict = {}
        r = rng.random()
        if r < 0.2:
            ele["nframes"] = kwargs["nframes"] = rng.randrange(1, 64)
        elif r < 0.5:
            ele["fps"] = kwargs["fps"] = rng.choice([0.5, 1.0, 2.0, 4.0])
            ele["min_frames"] = kwargs["min_frames"] = rng.choice([1, 2, 4, 8])
            ele["max_frames"] = kwargs["max_frames"] = rng.choice([8, 64, 768])
        if rng.random() < 0.3:
            ele["min_pixels"] = kwargs["min_pixels"] = rng.choice([64 * 784, 128 * 784, 256 * 784])
            ele["max_pixels"] = kwargs["max_pixels"] = rng.choice([256 * 784, 768 * 784, 1024 * 784])
            ele["total_pixels"] = kwargs["total_pixels"] = rng.choice([24576 * 784, 20480 * 784, 90316800])
        if rng.random() < 0.15:
            dur = total / video_fps
            ele["video_start"] = kwargs["video_start"] = rng.uniform(0, dur / 2)
            ele["video_end"] = kwargs["video_end"] = rng.uniform(dur / 2, dur * 1.2)
        try:
            want = _reference_plan(ele, total, video_fps, h, w)
        except (ValueError, AssertionError):
            with pytest.raises(ValueError):
                video_plan(total, video_fps, h, w, **kwargs)
            continue
        plan = video_plan(total, video_fps, h, w, **kwargs)
        assert plan.frame_indices == want["indices"]
        assert plan.sample_fps == pytest.approx(want["sample_fps"], rel=1e-12)
        assert plan.second_per_grid_t == pytest.approx(2 / want["sample_fps"], rel=1e-12)
        n = len(plan.frame_indices)
        assert plan.grid_thw == (n // 2, plan.resized_height // 14, plan.resized_width // 14)
        assert plan.n_tokens == (n // 2) * (plan.resized_height // 28) * (plan.resized_width // 28)
        if 0 not in want["size"]:
            assert (plan.resized_height, plan.resized_width) == want["size"], (total, video_fps, h, w, ele)
            compared += 1
    assert compared > 800


class _FakeBatch:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def asnumpy(self) -> np.ndarray:
        return self.array


class _FakeVideoReader:
    """Stands in for decord.VideoReader: frames are black, of the size the test chooses."""

    frames, fps, height, width = 0, 0.0, 0, 0

    def __init__(self, path: str, *args: object, **kwargs: object) -> None:
        pass

    def __len__(self) -> int:
        return self.frames

    def get_avg_fps(self) -> float:
        return self.fps

    def get_batch(self, idx: list[int]) -> _FakeBatch:
        assert max(idx) < self.frames
        return _FakeBatch(np.zeros((len(idx), self.height, self.width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "frames,fps,height,width,ele",
    [
        (45, 30.0, 48, 64, {}),
        (61, 24.0, 360, 200, {}),
        (30, 29.97, 100, 100, {"nframes": 6}),
        (90, 25.0, 90, 160, {"video_start": 0.5, "video_end": 2.5}),
        (50, 10.0, 30, 400, {"min_pixels": 64 * 784, "max_pixels": 128 * 784}),
    ],
)
def test_video_plan_matches_fetch_video_end_to_end(
    monkeypatch: pytest.MonkeyPatch, frames: int, fps: float, height: int, width: int, ele: dict
) -> None:
    """qwen-vl-utils' own fetch_video with a fake decord reader gives our indices, sample_fps and size."""
    reader = type(
        "Reader", (_FakeVideoReader,), {"frames": frames, "fps": fps, "height": height, "width": width}
    )
    monkeypatch.setitem(sys.modules, "decord", types.SimpleNamespace(VideoReader=reader))
    monkeypatch.setattr(qvu, "get_video_reader_backend", lambda: "decord")
    (video, meta), sample_fps = qvu.fetch_video(
        {"video": "fake.mp4", **ele}, return_video_sample_fps=True, return_video_metadata=True
    )
    plan = video_plan(frames, fps, height, width, **ele)
    assert meta["frames_indices"] == plan.frame_indices
    assert sample_fps == pytest.approx(plan.sample_fps, rel=1e-12)
    assert tuple(video.shape) == (plan.n_frames, 3, plan.resized_height, plan.resized_width)


# §2 grounding dialects


def test_spec_box_example() -> None:
    box = [146, 137, 615, 415]
    assert convert_box(box, 640, 428, "qwen2-vl") == [228, 320, 961, 970]
    assert smart_resize(428, 640) == (420, 644)
    assert convert_box(box, 640, 428, "qwen2.5-vl") == [147, 134, 619, 407]
    assert convert_box(box, 640, 428, "qwen-vl") == [228, 320, 960, 969]


def test_box_text_formats() -> None:
    assert (
        format_box_text("cat", [228, 320, 961, 970], "qwen-vl")
        == "<ref>cat</ref><box>(228,320),(961,970)</box>"
    )
    assert format_box_text("cat", [228, 320, 961, 970], "qwen2-vl") == (
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(228,320),(961,970)<|box_end|>"
    )
    assert format_box_text("", [1, 2, 3, 4], "qwen2-vl") == "<|box_start|>(1,2),(3,4)<|box_end|>"
    assert format_box_text("two", [[1, 2, 3, 4], [5, 6, 7, 8]], "qwen-vl") == (
        "<ref>two</ref><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box>"
    )
    quad = [1, 2, 3, 4, 5, 6, 7, 8]
    assert format_quad_text("OPEN", quad, "qwen-vl") == "<ref>OPEN</ref><quad>(1,2),(3,4),(5,6),(7,8)</quad>"
    assert format_quad_text("OPEN", quad, "qwen2-vl") == (
        "<|object_ref_start|>OPEN<|object_ref_end|><|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|>"
    )
    with pytest.raises(ValueError):
        format_quad_text("OPEN", quad, "qwen2.5-vl")
    with pytest.raises(ValueError):
        convert_box([1, 2, 3, 4], 10, 10, "qwen3-vl")


def test_json_boxes_format() -> None:
    text = format_json_boxes([("cat", [147, 134, 619, 407]), ("nose", [300, 200]), ("狗", [1, 2, 3, 4])])
    assert text == (
        '```json\n[\n\t{"bbox_2d": [147, 134, 619, 407], "label": "cat"},\n'
        '\t{"point_2d": [300, 200], "label": "nose"},\n\t{"bbox_2d": [1, 2, 3, 4], "label": "狗"}\n]\n```'
    )
    assert format_json_boxes([]) == "```json\n[]\n```"
    assert format_json_boxes([("a", [1, 2])], fenced=False) == '[\n\t{"point_2d": [1, 2], "label": "a"}\n]'
    assert format_box_text("cat", [147, 134, 619, 407], "qwen2.5-vl") == (
        '```json\n[\n\t{"bbox_2d": [147, 134, 619, 407], "label": "cat"}\n]\n```'
    )


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _quantum(side: int, dialect: str, resized: int) -> float:
    return side / 1000 if dialect in ("qwen-vl", "qwen2-vl") else side / resized


@pytest.mark.parametrize("dialect", ["qwen-vl", "qwen2-vl", "qwen2.5-vl"])
def test_box_round_trip(dialect: str) -> None:
    """Each coordinate within half a quantum (one quantum where qwen2.5-vl clamps to W'−1); IoU >= 0.95
    for boxes with a short side >= 40 px where the quantum is at most 1 px (a 40-px box in a 4000-px image
    is only 10 qwen2-vl quanta wide and can lose more)."""
    rng = random.Random(hash(dialect) % 1000)
    limits = [(3136, 16384 * 784), (3136, HF_DEFAULT_MAX), (3136, 147456)]
    ious = 0
    for _ in range(3000):
        w, h = (int(math.exp(rng.uniform(math.log(20), math.log(4000)))) for _ in range(2))
        if max(w, h) / min(w, h) > 200:
            continue
        lo, hi = rng.choice(limits)
        rh, rw = smart_resize(h, w, 28, lo, hi)
        x1, x2 = sorted(rng.uniform(0, w) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, h) for _ in range(2))
        if rng.random() < 0.1:
            x1, y1, x2, y2 = 0, 0, w, h
        box = [x1, y1, x2, y2]
        coords = convert_box(box, w, h, dialect, lo, hi)
        assert all(isinstance(c, int) for c in coords)
        upper = {"qwen-vl": 999, "qwen2-vl": 1000}.get(dialect)
        if upper is not None:
            assert all(0 <= c <= upper for c in coords)
        else:
            assert 0 <= min(coords) and coords[0] <= rw - 1 and coords[2] <= rw - 1 and coords[3] <= rh - 1
        back = box_to_pixels(coords, w, h, dialect, lo, hi)
        for i, (v, b) in enumerate(zip(box, back, strict=True)):
            side, resized = (w, rw) if i % 2 == 0 else (h, rh)
            q = _quantum(side, dialect, resized)
            clamped = dialect == "qwen2.5-vl" and coords[i] == resized - 1
            assert abs(v - b) <= (q if clamped else q / 2) + 1e-9, (dialect, w, h, box, coords, back)
        if min(x2 - x1, y2 - y1) >= 40 and max(_quantum(w, dialect, rw), _quantum(h, dialect, rh)) <= 1:
            assert _iou(box, back) >= 0.95, (dialect, w, h, box, coords, back)
            ious += 1
    assert ious > 100


@pytest.mark.parametrize("dialect", ["qwen-vl", "qwen2-vl", "qwen2.5-vl"])
def test_quad_and_point_round_trip(dialect: str) -> None:
    rng = random.Random(7)
    for _ in range(500):
        w, h = rng.randrange(50, 3000), rng.randrange(50, 3000)
        rh, rw = smart_resize(h, w)
        pts = [rng.uniform(0, w) if i % 2 == 0 else rng.uniform(0, h) for i in range(8)]
        back = quad_to_pixels(convert_quad(pts, w, h, dialect), w, h, dialect)
        for i, (v, b) in enumerate(zip(pts, back, strict=True)):
            side, resized = (w, rw) if i % 2 == 0 else (h, rh)
            assert abs(v - b) <= _quantum(side, dialect, resized) + 1e-9
        assert convert_point(pts[:2], w, h, dialect) == convert_quad(pts, w, h, dialect)[:2]
