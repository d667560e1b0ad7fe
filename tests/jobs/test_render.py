"""`vlcurate inspect OUT --render DIR` on a real grounding job (dev COCO image, Qwen-VL dialect, image stored
as it came): one PNG per sample, with the boxes of its conversation drawn where the annotation puts them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from formatters.draw import COLORS
from jobs.cli import main
from jobs.inspect import _sample_from_shard
from pipeline.recipe import load_recipe
from pipeline.runner import run_job
from tests.media import REPO

pytestmark = pytest.mark.slow
COCO = REPO / "tests" / "data" / "grounding_coco"


@pytest.fixture(scope="module")
def grounding_job(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "out"
    recipe = load_recipe(str(REPO / "jobs/recipes/grounding.yaml"),
                         [f"input.path={COCO / 'instances.json'}", "format.dialect=qwen-vl"])
    run_job(recipe, str(out), log=lambda m: None)
    return out


def find_offset(rendered: np.ndarray, photo: np.ndarray) -> tuple[int, int]:
    """Where the photo was pasted in the rendered picture: the vertical offset (0..150) at which most pixels of
    its rows 100..300 are the photo's own (the drawn outlines cover a few)."""
    band = photo[100:300]
    for y in range(0, 150):
        if np.mean(np.all(rendered[y + 100:y + 300, :photo.shape[1]] == band, axis=-1)) > 0.9:
            return 0, y
    raise AssertionError("photo not found in the render")


def test_render_draws_every_sample_with_its_boxes(grounding_job, tmp_path, capsys):
    assert main(["inspect", str(grounding_job), "--render", str(tmp_path), "--n", "100", "--json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(docs) >= 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{d['id']}.png" for d in docs)
    cats = [d for d in docs if "Locate every cat " in d["messages"][0]["content"][-1]["text"]]
    assert len(cats) == 1
    (_, stored), = _sample_from_shard(str(grounding_job), cats[0]["shard"], cats[0]["id"])["images"]
    photo = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
    assert photo.shape[:2] == (480, 640)  # qwen-vl: the image is stored as it came
    rendered = np.asarray(Image.open(tmp_path / f"{cats[0]['id']}.png").convert("RGB"))
    assert rendered.shape[0] > photo.shape[0] + 40  # the conversation is under the image
    x0, y0 = find_offset(rendered, photo)
    annotations = json.loads((COCO / "instances.json").read_text())["annotations"]
    boxes = sorted([a["bbox"] for a in annotations if a["category_id"] == 17], key=lambda b: (b[1], b[0]))
    for k, (x, y, w, h) in enumerate(boxes):  # the builder lists them top to bottom
        ym = y0 + round(y + h / 2)
        for edge in (x, x + w):
            xs = [min(max(round(edge) + dx, 0), photo.shape[1] - 1) for dx in (-2, -1, 0, 1)]
            assert any(tuple(rendered[ym, x0 + px]) == COLORS[k] for px in xs), (k, edge)
    # every render holds at least one drawn shape colour (each grounding sample has a box)
    for d in docs:
        im = Image.open(tmp_path / f"{d['id']}.png").convert("RGB")
        assert COLORS[0] in {c for _, c in im.getcolors(1 << 24)}, d["id"]
