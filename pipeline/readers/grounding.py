"""Grounding readers: COCO instances JSON and RefCOCO/RefCOCO+/RefCOCOg as distributed (DESIGN.md, Input formats).

One row per image. Row layout (a contract with the grounding sample builders; all coordinates in original pixels):

- ``images``: [the image file's bytes, as stored]
- ``annotations``: {"width": W, "height": H, "objects": [{"bbox": [x1, y1, x2, y2], "category": name,
  "category_id": int, "ann_id": int, "iscrowd": 0/1}, ...]} sorted by ann_id. COCO's [x, y, w, h] becomes
  corners [x, y, x + w, y + h] (floats, rounded to 6 decimals to drop float noise). RefCOCO objects also carry
  "phrases": [sentences] and "ref_id", one object per ref (sorted by ann_id, then ref_id), referred objects only.
- ``meta``: {"image_id", "file_name", "dropped_objects"} (+ "split" for RefCOCO).

A broken annotation (bbox not 4 numbers, w <= 0 or h <= 0, more than 1 px outside the image, unknown category;
for RefCOCO also a ref whose ann_id is not in the instances file or that has no sentence) is left out of
``objects`` and counted in ``meta["dropped_objects"]``; an image without a usable object still yields a row
(the builder decides). A missing image file drops the row with reason ``missing_file``.

Options (``input.options``):
- coco: ``image_dir`` (default: the JSON's folder).
- refcoco: ``instances`` (default: instances.json beside the pickle), ``image_dir`` (default: the instances
  file's folder), ``split`` (e.g. "val"; default None = all refs).
Relative option paths resolve like ``input.path`` (against the current directory), not against the input file.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import posixpath
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from pipeline.readers.base import Partition, _name, check_options, drop, load_image
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, RecipeError
from pipeline.storage import resolve

# ---------------------------------------------------------------------------------------------- shared helpers
# (also used by the OCR, QA and video readers)


def option_path(spec: InputSpec, key: str, default: str) -> tuple[pafs.FileSystem, str]:
    """(fs, path) of a path option; `default` is an already resolved path on the input's filesystem."""
    value = spec.options.get(key)
    if value is None:
        fs, _ = resolve(spec.path)
        return fs, default
    if not isinstance(value, str) or not value:
        raise RecipeError(f"input.options.{key}: must be a path (got {value!r})")
    return resolve(value)


_CACHE: dict[tuple, Any] = {}


def cached(fs: pafs.FileSystem, path: str, kind: str, build: Callable[[bytes], Any]) -> Any:
    """build(file bytes), cached per process (one entry per kind) while the file's size and mtime hold.

    plan() and every read() of a partition need the same parsed index of a large annotation file; a Ray worker
    reading several partitions parses it once.
    """
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise RecipeError(f"input: file not found: {path}")
    key = (kind, path, info.size, info.mtime_ns)
    hit = _CACHE.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    with fs.open_input_stream(path) as f:
        data = f.read()
    value = build(data)
    _CACHE[kind] = (key, value)
    return value


def load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecipeError(f"input: {what} is not valid JSON ({str(e)[:120]})") from None


def slices(n: int, size: int, path: str, relpath: str) -> list[Partition]:
    """Partitions [start, stop) of n records of one file, `size` records each (one partition when n == 0)."""
    return [Partition(_name(i), path, relpath, start, min(start + size, n))
            for i, start in enumerate(range(0, max(n, 1), size))]


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any decoder failure is a decode_error, never a crash
        return None


# ---------------------------------------------------------------------------------------------- COCO


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def corner_box(bbox: Any, width: float, height: float) -> list[float] | None:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2], or None when broken (w or h <= 0, > 1 px outside the image)."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        return None
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return None
    x2, y2 = x + w, y + h
    if x < -1 or y < -1 or x2 > width + 1 or y2 > height + 1:
        return None
    return [_clean(x), _clean(y), _clean(x2), _clean(y2)]


def _clean(v: float) -> float:
    return round(float(v), 6)


class _Instances:
    """Index of a COCO instances file: images by id, annotations by image and by id, category names."""

    def __init__(self, data: bytes, what: str) -> None:
        doc = load_json(data, what)
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise RecipeError(f"input: {what} is not a COCO instances file (no 'images' list)")
        self.images: dict[int, dict[str, Any]] = {}
        for im in doc["images"]:
            if isinstance(im, dict) and isinstance(im.get("id"), int):
                self.images.setdefault(im["id"], im)
        self.image_ids = sorted(self.images)
        self.categories = {c["id"]: str(c.get("name", c["id"])) for c in doc.get("categories") or []
                           if isinstance(c, dict) and "id" in c}
        self.by_image: dict[int, list[dict[str, Any]]] = {}
        self.by_id: dict[int, dict[str, Any]] = {}
        self.unattached = 0
        for ann in doc.get("annotations") or []:
            if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
                self.unattached += 1
                continue
            self.by_id.setdefault(ann["id"], ann)
            self.by_image.setdefault(ann.get("image_id"), []).append(ann)
        for anns in self.by_image.values():
            anns.sort(key=lambda a: a["id"])

    def object(self, ann: dict[str, Any], width: float, height: float) -> dict[str, Any] | None:
        box = corner_box(ann.get("bbox"), width, height)
        cat = ann.get("category_id")
        if box is None or cat not in self.categories:
            return None
        return {"bbox": box, "category": self.categories[cat], "category_id": int(cat), "ann_id": int(ann["id"]),
                "iscrowd": 1 if ann.get("iscrowd") else 0}


def _image_row(row: dict[str, Any], im: dict[str, Any], fs: pafs.FileSystem, image_dir: str, spec: InputSpec
               ) -> tuple[dict[str, Any], float | None, float | None]:
    """Load the image of a COCO `images` entry into the row; (row, width, height). Drops on a missing file."""
    file_name = im.get("file_name")
    row["meta"] = {"image_id": im["id"], "file_name": file_name, "dropped_objects": 0}
    data, _, err = load_image(fs, image_dir, file_name, spec)
    if err:
        return drop(row, err, f"{file_name!r} in {image_dir}"[:300]), None, None
    row["images"] = [data]
    width, height = im.get("width"), im.get("height")
    if not (_number(width) and _number(height) and width > 0 and height > 0):
        size = image_size(data)
        if size is None:
            return drop(row, "decode_error", f"{file_name!r}: cannot read the image size"), None, None
        width, height = size
    return row, width, height


class CocoReader:
    """COCO instances JSON -> one row per image (images sorted by id), boxes as corners in original pixels."""

    options = ("image_dir",)

    def _index(self, spec: InputSpec) -> tuple[pafs.FileSystem, str, _Instances]:
        check_options(spec, self.options)
        fs, path = resolve(spec.path)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise RecipeError(f"input.path: format coco needs an instances JSON file, not found: {spec.path}")
        return fs, path, cached(fs, path, "coco", lambda b: _Instances(b, spec.path))

    def plan(self, spec: InputSpec) -> list[Partition]:
        _, path, index = self._index(spec)
        return slices(len(index.image_ids), spec.partition_rows, path, posixpath.basename(path))

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        _, path, index = self._index(spec)
        ifs, image_dir = option_path(spec, "image_dir", posixpath.dirname(path))
        rows = []
        for image_id in index.image_ids[part.start:part.stop]:
            row = new_row(make_id(part.relpath, image_id), f"{part.relpath}#{image_id}")
            row, width, height = _image_row(row, index.images[image_id], ifs, image_dir, spec)
            if row["drop_reason"] is None:
                objects = []
                for ann in index.by_image.get(image_id, []):
                    obj = index.object(ann, width, height)
                    if obj is None:
                        row["meta"]["dropped_objects"] += 1
                    else:
                        objects.append(obj)
                row["annotations"] = {"width": width, "height": height, "objects": objects}
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------- RefCOCO


class _SafeUnpickler(pickle.Unpickler):
    """refs(unc).p holds only lists, dicts, strings and numbers: refuse anything that would import code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a refs pickle")


def _load_refs(data: bytes, what: str) -> list[dict[str, Any]]:
    refs = None
    for encoding in ("utf-8", "latin1"):  # Python 2 pickles: str is bytes
        try:
            refs = _SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
            break
        except UnicodeDecodeError:
            continue
        except Exception as e:  # noqa: BLE001 - a broken pickle is a recipe error, named
            raise RecipeError(f"input.path: {what} is not a RefCOCO refs pickle ({str(e)[:120]})") from None
    if not isinstance(refs, list):
        raise RecipeError(f"input.path: {what} is not a RefCOCO refs pickle (expected a list of refs)")
    return [r for r in refs if isinstance(r, dict)]


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class RefCocoReader:
    """RefCOCO/RefCOCO+/RefCOCOg `refs(unc).p` + instances.json -> one row per image with its referred objects."""

    options = ("instances", "image_dir", "split")

    def _load(self, spec: InputSpec) -> tuple[str, _Instances, dict[int, list[dict[str, Any]]], list[int], str]:
        check_options(spec, self.options)
        fs, path = resolve(spec.path)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise RecipeError(f"input.path: format refcoco needs the refs pickle, not found: {spec.path}")
        refs = cached(fs, path, "refcoco_refs", lambda b: _load_refs(b, spec.path))
        ifs, ipath = option_path(spec, "instances", posixpath.join(posixpath.dirname(path), "instances.json"))
        if ifs.get_file_info(ipath).type != pafs.FileType.File:
            raise RecipeError(f"input.options.instances: not found: {ipath}")
        index = cached(ifs, ipath, "refcoco_instances", lambda b: _Instances(b, ipath))
        split = spec.options.get("split")
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ref in refs:
            if split is not None and _text(ref.get("split")) != str(split):
                continue
            by_image.setdefault(ref.get("image_id"), []).append(ref)
        image_ids = sorted(i for i in by_image if isinstance(i, int))
        return path, index, by_image, image_ids, ipath

    def plan(self, spec: InputSpec) -> list[Partition]:
        path, _, _, image_ids, _ = self._load(spec)
        return slices(len(image_ids), spec.partition_rows, path, posixpath.basename(path))

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        _, index, by_image, image_ids, ipath = self._load(spec)
        ifs, image_dir = option_path(spec, "image_dir", posixpath.dirname(ipath))
        rows = []
        for image_id in image_ids[part.start:part.stop]:
            refs = by_image[image_id]
            row = new_row(make_id(part.relpath, image_id), f"{part.relpath}#{image_id}")
            im = index.images.get(image_id)
            if im is None:
                row["meta"] = {"image_id": image_id, "dropped_objects": len(refs)}
                rows.append(drop(row, "missing_image_entry", f"image {image_id} not in {posixpath.basename(ipath)}"))
                continue
            row, width, height = _image_row(row, im, ifs, image_dir, spec)
            splits = sorted({_text(r.get("split")) for r in refs})
            row["meta"]["split"] = splits[0] if len(splits) == 1 else splits
            if row["drop_reason"] is None:
                objects = []
                for ref in sorted(refs, key=lambda r: (_sort_int(r.get("ann_id")), _sort_int(r.get("ref_id")))):
                    ann = index.by_id.get(ref.get("ann_id"))
                    obj = index.object(ann, width, height) if ann is not None else None
                    phrases = [_text(s["sent"]) for s in ref.get("sentences") or []
                               if isinstance(s, dict) and s.get("sent") is not None]
                    if obj is None or not phrases or ann.get("image_id") != image_id:
                        row["meta"]["dropped_objects"] += 1
                        continue
                    obj["phrases"] = phrases
                    obj["ref_id"] = ref.get("ref_id")
                    objects.append(obj)
                row["annotations"] = {"width": width, "height": height, "objects": objects}
            rows.append(row)
        return rows


def _sort_int(v: Any) -> int:
    return v if isinstance(v, int) else -1
