"""Several captions per image: Flickr30k (Entities sentence files) and COCO captions JSON (DESIGN.md, Input formats).

One row per image: ``images`` = [the image's bytes], ``text`` = the first caption, ``captions`` = every caption
of the image in source order (a list of strings; the caption stages and the caption builders read it), ``meta``
= {"image_id", "file_name", ...}.

- ``flickr30k``: input.path is the Flickr30k(-Entities) folder. Captions come from ``Sentences/*.txt`` (or
  ``sentences/``, ``input.options.sentences_dir``), one file per image named by its id, five lines in
  Flickr30k-Entities markup: ``[/EN#18/people A man] in [/EN#20/clothing a hat]`` becomes ``A man in a hat``
  (the tokenised spaces before punctuation removed: ``water .`` -> ``water.``). The phrases are kept in
  ``annotations`` = {"phrases": [[{"phrase", "entity_id", "types"}, ...] per caption]}. Images are
  ``{image_dir}/{id}.jpg``: ``input.options.image_dir``, default ``flickr30k-images/`` in the folder when it
  exists, else the folder itself. A line whose markup does not parse is left out and counted in
  ``meta["bad_lines"]``. id = make_id(sentence file relative to the folder, image id).
- ``coco_captions``: ``captions_*.json`` (``images`` + ``annotations`` with ``image_id`` and ``caption``), one
  row per image in id order, captions in annotation-id order (stripped); ``input.options.image_dir``, default
  the JSON's folder. An annotation without a caption string is counted in ``meta["bad_annotations"]``. id =
  make_id(JSON file name, image id). A file that is not valid JSON is one line naming it.

Drop reasons: ``no_caption`` (no usable caption), ``missing_file`` / ``no_image`` (the image), ``invalid_utf8``
(a sentence file).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import pyarrow.fs as pafs

from pipeline.readers.base import Partition, cap_text, check_options, drop
from pipeline.readers.grounding import _Instances, option_path, slices
from pipeline.readers.vl import attach_image, one_json_file
from pipeline.schema import make_id, new_row
from pipeline.spec import InputSpec, RecipeError
from pipeline.storage import resolve

_ENTITY = re.compile(r"\[/EN#(\d+)((?:/[^\s/\[\]]+)+)\s+([^\[\]]*)\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")


def strip_entities(line: str) -> tuple[str, list[dict[str, Any]]] | None:
    """A Flickr30k-Entities sentence -> (plain caption, its phrases), or None when the markup does not parse."""
    phrases: list[dict[str, Any]] = []

    def plain(m: re.Match[str]) -> str:
        phrases.append({"phrase": m.group(3).strip(), "entity_id": m.group(1), "types": m.group(2)[1:].split("/")})
        return m.group(3)

    text = _ENTITY.sub(plain, line)
    if "[" in text or "]" in text or "/EN#" in text:
        return None
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    return (text, phrases) if text else None


def _captioned(row: dict[str, Any], captions: list[str], spec: InputSpec) -> dict[str, Any]:
    """text = the first caption, captions = all; `no_caption` without one; the length cap on the text."""
    if not captions:
        return drop(row, "no_caption")
    row["text"], row["captions"] = captions[0], captions
    return cap_text(row, spec)


class Flickr30kReader:
    options = ("sentences_dir", "image_dir")

    def _layout(self, spec: InputSpec) -> tuple[str, pafs.FileSystem, str, pafs.FileSystem, str]:
        check_options(spec, self.options)
        fs, root = resolve(spec.path)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            raise RecipeError(f"input.path: format flickr30k needs the Flickr30k folder (with Sentences/): "
                              f"{spec.path}")

        def first_dir(names: list[str]) -> str:
            for name in names:
                if fs.get_file_info(posixpath.join(root, name)).type == pafs.FileType.Directory:
                    return posixpath.join(root, name)
            return root

        sfs, sentences = option_path(spec, "sentences_dir", first_dir(["Sentences", "sentences"]))
        ifs, images = option_path(spec, "image_dir", first_dir(["flickr30k-images"]))
        return root, sfs, sentences, ifs, images

    @staticmethod
    def _files(fs: pafs.FileSystem, folder: str) -> list[str]:
        sel = pafs.FileSelector(folder, recursive=False)
        return sorted(i.path for i in fs.get_file_info(sel)
                      if i.type == pafs.FileType.File and i.path.endswith(".txt"))

    def plan(self, spec: InputSpec) -> list[Partition]:
        root, sfs, sentences, _, _ = self._layout(spec)
        files = self._files(sfs, sentences)
        if not files:
            raise RecipeError(f"input.path: no sentence .txt files in {sentences}")
        return slices(len(files), spec.partition_rows, root, ".")

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        root, sfs, sentences, ifs, images = self._layout(spec)
        rows = []
        for path in self._files(sfs, sentences)[part.start:part.stop]:
            rel = posixpath.relpath(path, root)
            image_id = posixpath.splitext(posixpath.basename(path))[0]
            row = new_row(make_id(rel, image_id), rel)
            row["meta"] = {"image_id": image_id, "file_name": f"{image_id}.jpg", "bad_lines": 0}
            with sfs.open_input_stream(path) as f:
                raw = f.read()
            try:
                lines = raw.decode("utf-8-sig").splitlines()
            except UnicodeDecodeError as e:
                rows.append(drop(row, "invalid_utf8", f"{rel}: {e}"[:200]))
                continue
            parsed = [strip_entities(line) for line in lines if line.strip()]
            row["meta"]["bad_lines"] = sum(p is None for p in parsed)
            parsed = [p for p in parsed if p is not None]
            row["annotations"] = {"phrases": [phrases for _, phrases in parsed]}
            row = _captioned(row, [text for text, _ in parsed], spec)
            rows.append(attach_image(row, ifs, images, [row["meta"]["file_name"]], spec)
                        if row["drop_reason"] is None else row)
        return rows


class CocoCaptionsReader:
    options = ("image_dir",)

    def _index(self, spec: InputSpec) -> tuple[str, _Instances]:
        return one_json_file(spec, self.options, "coco_captions", "a captions_*.json file", _Instances)

    def plan(self, spec: InputSpec) -> list[Partition]:
        path, index = self._index(spec)
        return slices(len(index.image_ids), spec.partition_rows, path, posixpath.basename(path))

    def read(self, spec: InputSpec, part: Partition) -> list[dict[str, Any]]:
        path, index = self._index(spec)
        ifs, image_dir = option_path(spec, "image_dir", posixpath.dirname(path))
        rows = []
        for image_id in index.image_ids[part.start:part.stop]:
            row = new_row(make_id(part.relpath, image_id), f"{part.relpath}#{image_id}")
            anns = index.by_image.get(image_id, [])
            captions = [a["caption"].strip() for a in anns
                        if isinstance(a.get("caption"), str) and a["caption"].strip()]
            row["meta"] = {"image_id": image_id, "file_name": index.images[image_id].get("file_name"),
                           "bad_annotations": len(anns) - len(captions)}
            row = _captioned(row, captions, spec)
            rows.append(attach_image(row, ifs, image_dir, [row["meta"]["file_name"]], spec)
                        if row["drop_reason"] is None else row)
        return rows
