"""Read vlcurate packs (``OUT/packs/pack-*.tar``, SPEC-qwen §6) as Qwen2.5-VL training inputs.

``PackDataset`` is a ``torch.utils.data.IterableDataset`` for trainers; the pipeline itself never imports
torch or transformers from here: they are imported on first use of ``PackDataset`` (module
``__getattr__``) and when the processor is loaded, so ``import pipeline.pack_dataset`` stays cheap.

Each pack yields one dict of tensors, batch size 1 (a pack already is the batch)::

    input_ids            long   (1, L)
    labels               long   (1, L)       -100 where no loss (SPEC-qwen §1)
    position_ids         long   (4, 1, L)    row 0 text positions restarting at 0 per member,
                                             rows 1-3 each member's own M-RoPE t/h/w
    pixel_values         float  (patches, C·2·14·14)   only when the pack has image members
    image_grid_thw       long   (n_images, 3)
    pixel_values_videos  float  (patches, C·2·14·14)   only when the pack has video members
    video_grid_thw       long   (n_videos, 3)
    second_per_grid_ts   float  (n_videos,)
    cu_seqlens           int32  (n_members + 1,)       NOT a model argument: pop it (see below)

Why position_ids is (4, 1, L): transformers 5.23 ``Qwen2_5_VLTextModel.forward`` takes M-RoPE ids as
(3, batch, L); when they arrive as (4, batch, L) it splits off row 0 as *text* position ids and builds the
attention mask from them (``masking_utils.find_packed_sequence_indices``: a new member starts wherever the
text position does not step by 1), so no token attends across members. That happens only when no
attention mask and no cache are passed. With 3 rows, or with an attention mask, or with ``use_cache=True``,
every member silently attends to the members before it.

Training loop::

    from torch.utils.data import DataLoader
    from pipeline.pack_dataset import PackDataset

    ds = PackDataset("OUT/packs", processor="/models/Qwen2.5-VL-7B-Instruct")  # shuffle=False
    loader = DataLoader(ds, batch_size=None, num_workers=1)  # batch_size=None: packs are batches already
    model.train()
    for batch in loader:
        batch.pop("cu_seqlens")  # never pass it: the vision tower would take it as *its* cu_seqlens
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, use_cache=False)  # no attention_mask: the mask comes from position_ids row 0
        out.loss.backward(); optimizer.step(); optimizer.zero_grad()

Rules: no ``attention_mask``, ``use_cache=False``; read packs in order, no shuffling sampler, when the packs
were ordered by ``balance_packs`` (the order *is* the balancing); keep ``shuffle=False`` then. With
flash-attention-2 transformers derives the varlen boundaries from row 0 as well, so ``cu_seqlens`` is only
for trainers calling a varlen kernel themselves. Shards are split across ranks (torch.distributed
initialised) then across DataLoader workers: rank r reads shards r, r+W, …; give every rank the same number
of packs (a multiple of the world size in shards with equal pack counts), or DDP waits at the end. With
several workers the DataLoader interleaves the workers' packs round-robin.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["PackDataset", "expand_urls", "iter_packs", "pack_model_inputs", "pack_shards_for"]  # noqa: F822 (lazy)

ARRAYS = ("input_ids", "labels", "position_ids", "cu_seqlens")


def expand_urls(urls: list[str] | str) -> list[str]:
    """Shard paths from a folder (its ``*.tar``, sorted), a brace pattern (``pack-{00000..00009}.tar``),
    a glob, one path or URI, or a list of those."""
    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if "://" not in item and os.path.isdir(item):
            out.extend(sorted(glob.glob(os.path.join(item, "*.tar"))))
        elif "{" in item:
            import braceexpand

            out.extend(braceexpand.braceexpand(item))
        elif "://" not in item and any(c in item for c in "*?["):
            out.extend(sorted(glob.glob(item)))
        else:
            out.append(item)
    return out


def _open(url: str) -> Any:
    if "://" in url and not url.startswith("file://"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(url)
        return fs.open_input_stream(path)
    return open(url.removeprefix("file://"), "rb")


def _decode(key: str, files: dict[str, bytes], url: str) -> dict[str, Any]:
    missing = [k for k in ("json", *(f"{a}.npy" for a in ARRAYS)) if k not in files]
    if missing:
        raise ValueError(f"{url}: pack {key} lacks {', '.join(missing)}")
    pack: dict[str, Any] = {"key": key, "json": json.loads(files["json"])}
    for a in ARRAYS:
        pack[a] = np.load(io.BytesIO(files[f"{a}.npy"]), allow_pickle=False)
    names = [n for member in pack["json"]["media"] for n in member]
    absent = [n for n in names if n not in files]
    if absent:
        raise ValueError(f"{url}: pack {key} lacks media {', '.join(absent)}")
    pack["media"] = {n: files[n] for n in names}
    return pack


def iter_packs(url: str) -> Iterator[dict[str, Any]]:
    """The packs of one shard in file order, as numpy: {key, json, input_ids, labels, position_ids,
    cu_seqlens, media: {suffix: bytes}}. A pack's entries are consecutive (as ``pack_tar_bytes`` writes)."""
    with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key: str | None = None
        files: dict[str, bytes] = {}
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            k, _, suffix = base.partition(".")
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if k != key:
                if key is not None:
                    yield _decode(key, files, url)
                key, files = k, {}
            files[suffix] = data
        if key is not None:
            yield _decode(key, files, url)


def pack_shards_for(urls: list[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """Shards one (rank, DataLoader worker) reads: every world-th shard from rank, then every workers-th."""
    return urls[rank::world][worker::workers]


def _rgb(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _size_bounds(areas: list[int]) -> dict[str, int]:
    """Processor size limits under which smart_resize keeps every stored (already resized) image as is."""
    return {"shortest_edge": min(areas), "longest_edge": max(areas)}


def _runs(values: list[Any]) -> list[tuple[int, int]]:
    """[start, end) ranges of equal consecutive values."""
    runs: list[tuple[int, int]] = []
    for i, v in enumerate(values):
        if runs and values[runs[-1][0]] == v:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _load_processors(processor: Any) -> tuple[Any, Any]:
    """(image processor, video processor or None) from a path or a processor object."""
    if isinstance(processor, str | os.PathLike):
        from transformers import AutoImageProcessor, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(os.fspath(processor))
        except (OSError, ValueError, TypeError):
            processor = AutoImageProcessor.from_pretrained(os.fspath(processor))
    image = getattr(processor, "image_processor", processor)
    video = getattr(processor, "video_processor", None)
    return image, video


def pack_model_inputs(pack: dict[str, Any], image_processor: Any, video_processor: Any) -> dict[str, Any]:
    """One decoded pack (``iter_packs``) → the tensors ``Qwen2_5_VLForConditionalGeneration`` takes, plus
    ``cu_seqlens``. Raises ValueError when the processor's grids differ from the pack's recorded grids."""
    import torch

    doc = pack["json"]
    key = pack["key"]
    n = int(pack["input_ids"].size)
    out: dict[str, Any] = {
        "input_ids": torch.from_numpy(pack["input_ids"].astype(np.int64)).reshape(1, n),
        "labels": torch.from_numpy(pack["labels"].astype(np.int64)).reshape(1, n),
        "position_ids": torch.from_numpy(pack["position_ids"].astype(np.int64)).reshape(4, 1, n),
    }
    images, image_grids, image_limits, videos, video_grids, seconds = [], [], [], [], [], []
    limits = doc.get("image_limits") or [[None, None]] * len(doc["media"])
    # frames per temporal patch: the model's (2 for Qwen2-VL / Qwen2.5-VL), as assemble_pack checked
    per_patch = int(getattr(video_processor, "temporal_patch_size", None) or 2)
    for i, names in enumerate(doc["media"]):
        is_video = bool(doc.get("is_video", [False] * len(doc["media"]))[i])
        if not is_video:
            images.extend(_rgb(pack["media"][name]) for name in names)
            image_grids.extend(doc["image_grid_thw"][i])
            image_limits.extend([tuple(limits[i])] * len(names))
            continue
        frames = [np.asarray(_rgb(pack["media"][name])) for name in names]
        grids = doc["video_grid_thw"][i]
        need = [per_patch * int(g[0]) for g in grids]
        if sum(need) != len(frames):
            raise ValueError(
                f"pack {key}: member {doc['members'][i]} has {len(frames)} frames, grids {grids}"
            )
        start = 0
        for k in need:
            clip = frames[start : start + k]
            start += k
            if len({f.shape for f in clip}) != 1:
                raise ValueError(
                    f"pack {key}: frames of one video of member {doc['members'][i]} differ in size"
                )
            videos.append(np.stack(clip))
        video_grids.extend(grids)
        seconds.extend(doc["second_per_grid_ts"][i])
    if images:
        pixel_values, grids = [], []
        # images built under the same limits go through the processor together, in pack order
        for start, end in _runs(image_limits):
            chunk = images[start:end]
            lo, hi = image_limits[start]
            size = ({"shortest_edge": int(lo), "longest_edge": int(hi)} if lo and hi
                    else _size_bounds([im.width * im.height for im in chunk]))
            got = image_processor(images=chunk, size=size, return_tensors="pt")
            pixel_values.append(got["pixel_values"])
            grids.append(got["image_grid_thw"])
        image_grid_thw = torch.cat(grids)
        _check_grids(key, "image", image_grid_thw, image_grids)
        out["pixel_values"] = torch.cat(pixel_values)
        out["image_grid_thw"] = image_grid_thw.long()
    if videos:
        if video_processor is None:
            raise ValueError(f"pack {key} has video members but the processor has no video processor")
        got = video_processor(
            videos=videos,
            size=_size_bounds([v.shape[1] * v.shape[2] for v in videos]),
            do_sample_frames=False,  # the frames stored are the ones the frame plan sampled
            cap_pixels_per_frame=False,
            return_tensors="pt",
        )
        _check_grids(key, "video", got["video_grid_thw"], video_grids)
        out["pixel_values_videos"] = got["pixel_values_videos"]
        out["video_grid_thw"] = got["video_grid_thw"].long()
        out["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    out["cu_seqlens"] = torch.from_numpy(pack["cu_seqlens"].astype(np.int32))
    return out


def _check_grids(key: str, kind: str, got: Any, want: list[list[int]]) -> None:
    got_list = [[int(v) for v in g] for g in got.tolist()]
    want_list = [[int(v) for v in g] for g in want]
    if got_list != want_list:
        raise ValueError(
            f"pack {key}: the processor made {kind} grids {got_list} but the pack records {want_list}; "
            "stored media must be at their smart_resize size (pre_resize) and the processor's patch/merge "
            "sizes must be the model's"
        )


def _make_class() -> type:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class PackDataset(IterableDataset):
        """Packs of vlcurate ``packs/*.tar`` shards as Qwen2.5-VL model inputs (see the module docstring).

        ``urls``: shard paths/URIs, a folder, a brace pattern or a glob. ``processor``: the model's folder
        (``AutoProcessor``; ``AutoImageProcessor`` if it has no full processor) or a processor object; it is
        loaded lazily in each worker. ``shuffle``: shuffle the shard order and the packs inside a shard,
        with ``seed`` + epoch (:meth:`set_epoch`); leave it off when packs were balanced. ``split``:
        ``"shard"`` (rank r reads shards r, r+W, ...) or ``"pack"`` (every rank reads every shard in order and
        keeps packs r, r+W, ...: use it with ``pack.packs_per_step`` so each optimizer step's group of packs
        lands one per rank).
        """

        def __init__(
            self, urls: list[str] | str, processor: str | Any, shuffle: bool = False, *, seed: int = 0,
            split: str = "shard",
        ) -> None:
            super().__init__()
            if split not in ("shard", "pack"):
                raise ValueError(f"split must be 'shard' or 'pack' (got {split!r})")
            if split == "pack" and shuffle:
                raise ValueError("split='pack' keeps the balanced pack order: it cannot shuffle")
            self.split = split
            self.urls = expand_urls(urls)
            if not self.urls:
                raise ValueError(f"no pack shards found at {urls!r}")
            self.processor = processor
            self.shuffle = shuffle
            self.seed = seed
            self.epoch = 0
            self._processors: tuple[Any, Any] | None = None

        def set_epoch(self, epoch: int) -> None:
            """Change the shuffle order (with shuffle=True); call before iterating each epoch."""
            self.epoch = epoch

        def __getstate__(self) -> dict[str, Any]:
            state = dict(self.__dict__)
            state["_processors"] = None  # workers load their own
            return state

        def shards(self) -> list[str]:
            """Shards this process (rank, DataLoader worker) reads, in reading order."""
            urls = list(self.urls)
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(len(urls))
                urls = [urls[i] for i in order]
            rank, world = 0, 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
                if len(urls) < world:
                    raise ValueError(f"{len(urls)} pack shards for {world} ranks: some rank would get none")
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            return pack_shards_for(urls, rank, world, worker, workers)

        def _rank_worker(self) -> tuple[int, int, int, int]:
            rank, world = 0, 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            return rank, world, worker, workers

        def _packs_in_order(self) -> Iterator[dict[str, Any]]:
            """split='pack': pack i of the whole ordered set goes to rank i % world, so each step's group of
            `packs_per_step` balanced packs is spread over the ranks; DataLoader workers take turns."""
            rank, world, worker, workers = self._rank_worker()
            i = 0
            for url in self.urls:
                for pack in iter_packs(url):
                    if i % world == rank and (i // world) % workers == worker:
                        yield pack
                    i += 1

        def __iter__(self) -> Iterator[dict[str, Any]]:
            if self._processors is None:
                self._processors = _load_processors(self.processor)
            image_processor, video_processor = self._processors
            if self.split == "pack":
                for pack in self._packs_in_order():
                    yield pack_model_inputs(pack, image_processor, video_processor)
                return
            for url in self.shards():
                packs: Iterator[dict[str, Any]] = iter_packs(url)
                if self.shuffle:
                    items = list(packs)
                    rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(url.encode())])
                    packs = iter([items[i] for i in rng.permutation(len(items))])
                for pack in packs:
                    yield pack_model_inputs(pack, image_processor, video_processor)

    PackDataset.__module__ = __name__
    PackDataset.__qualname__ = "PackDataset"
    return PackDataset


def __getattr__(name: str) -> Any:
    if name == "PackDataset":
        cls = _make_class()
        globals()["PackDataset"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
