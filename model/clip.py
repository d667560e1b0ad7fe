"""open_clip image-text scorer: an architecture name + a local checkpoint file, never a download.

OpenAI's CLIP weights were trained with QuickGELU: they need the ``-quickgelu`` architectures
(``ViT-L-14-quickgelu``). open_clip loads a checkpoint *file* into whatever architecture it is given without
complaint, and the model then scores slightly but silently wrong; ``warn_quickgelu_mismatch`` tells where the
file's name or format shows its source.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")

TINY_CLIP_ARCH = "vlcurate-tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def ensure_arch(arch: str) -> None:
    """Make ``arch`` known to open_clip: built-in names are; the tiny test architecture is registered here
    (through a config file, open_clip's public way). Raises ValueError for an unknown name."""
    import open_clip

    if arch in open_clip.list_models():
        return
    if arch == TINY_CLIP_ARCH:
        config_dir = Path(tempfile.mkdtemp(prefix="vlcurate-open-clip-"))
        (config_dir / f"{arch}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(config_dir)
        return
    close = [m for m in open_clip.list_models() if m.lower().startswith(arch.lower()[:5])][:8]
    raise ValueError(f"unknown open_clip architecture {arch!r}; similar: {', '.join(close) or 'none'}")


def _is_torchscript(path: Path) -> bool:
    """OpenAI's own releases (``ViT-L-14.pt``) are TorchScript archives: a zip holding ``code/`` and
    ``constants.pkl``; a ``torch.save`` file has neither."""
    if path.suffix not in (".pt", ".pth") or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def warn_quickgelu_mismatch(arch: str, checkpoint_path: str | Path) -> str | None:
    """A warning when the architecture's activation and the checkpoint's source disagree, else None.

    The source is read, where it can be, from (1) the file format: a TorchScript archive is an OpenAI
    release (QuickGELU); (2) an open_clip pretrained tag of the base architecture in the path
    (``laion2b_s34b_b79k``, ``timm--vit_large_patch14_clip_224.openai``, ``dfn2b``...; longest match), whose
    registry entry says whether it was trained with QuickGELU; (3) "openai" anywhere in the path.
    """
    import open_clip

    path = Path(checkpoint_path)
    uses_quick = "quickgelu" in arch.lower()
    base = re.sub(r"-quickgelu", "", arch, flags=re.IGNORECASE)
    norm_path = re.sub(r"[^a-z0-9]+", "_", str(path).lower())
    source: tuple[str, bool] | None = None
    if path.is_file() and _is_torchscript(path):
        source = ("an OpenAI TorchScript release", True)
    else:
        for tag in sorted(open_clip.list_pretrained_tags_by_model(base), key=len, reverse=True):
            norm_tag = re.sub(r"[^a-z0-9]+", "_", tag.lower())
            if re.search(rf"(^|_){re.escape(norm_tag)}(_|$)", norm_path):
                quick = bool(open_clip.get_pretrained_cfg(base, tag).get("quick_gelu", False))
                source = (f"the '{tag}' weights", quick)
                break
        if source is None and re.search(r"(^|_)openai(_|$)", norm_path):
            source = ("OpenAI weights", True)
    if source is None or source[1] == uses_quick:
        return None
    what, quick = source
    if not quick:
        fix = f"use '{base}'"
    elif f"{base}-quickgelu" in open_clip.list_models():
        fix = f"use '{base}-quickgelu'"
    else:
        fix = "use an architecture whose config sets quick_gelu: true"
    return (
        f"checkpoint {str(path)!r} looks like {what}, trained with {'QuickGELU' if quick else 'GELU'}, "
        f"but arch {arch!r} uses {'QuickGELU' if uses_quick else 'GELU'}: {fix} (a file loads silently into "
        f"the wrong activation and every score shifts)"
    )


def _random_model(arch: str, device: str = "cpu") -> Any:
    """open_clip's ``arch`` with random weights (``pretrained=None``), built on ``device`` ("meta": shapes
    only, no memory), without open_clip's warning that the weights are random: here that is the point."""
    import open_clip
    import torch

    ensure_arch(arch)
    logging.disable(logging.WARNING)
    try:
        with torch.device(device):
            return open_clip.create_model(arch, pretrained=None, device=device)
    finally:
        logging.disable(logging.NOTSET)


def checkpoint_mismatch(arch: str, checkpoint_path: str | Path) -> str | None:
    """Why the checkpoint file does not load into ``arch``, in one line, or None when it does.

    The file goes through open_clip's own ``load_checkpoint`` (the path ``load_clip`` takes, with its key
    conversions and position-embedding resizing) into the architecture built on the meta device, so the
    check costs one read of the file and no model memory. Memoised per file version: the CLI and the job
    both check."""
    path = Path(checkpoint_path)
    stat = path.stat()
    return _checkpoint_mismatch(arch, str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _checkpoint_mismatch(arch: str, path: str, _size: int, _mtime_ns: int) -> str | None:
    import open_clip
    from open_clip.factory import load_state_dict

    try:
        model = _random_model(arch, "meta")
    except Exception:  # an architecture that cannot be built without weights: load_clip will say what it is
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loading into meta tensors is a no-op, and says so per tensor
            open_clip.load_checkpoint(model, path, strict=True)
        return None
    except Exception as e:
        failure = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    try:
        state = load_state_dict(path)
    except Exception as e:
        return f"checkpoint {Path(path).name!r} cannot be read as open_clip weights ({type(e).__name__}: {e})"[:400]
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found = {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    differ = [k for k in expected if k in found and found[k] != expected[k]]
    missing = [k for k in expected if k not in found]
    detail = [f"{len(differ)} of {len(expected)} tensors differ in shape (first: {differ[0]} is {found[differ[0]]} "
              f"in the file, {expected[differ[0]]} in the architecture)"] if differ else []
    detail += [f"{len(missing)} missing (first: {missing[0]})"] if missing else []
    return (f"checkpoint {Path(path).name!r} does not fit architecture {arch!r}: "
            f"{'; '.join(detail) or failure}; set the architecture the weights were trained as")


class ClipScorer:
    """Batched, L2-normalised image and text embeddings of one open_clip model (eval mode, no grad)."""

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, device: str, batch_size: int = 64
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """(n, embed_dim) float32, unit rows, for PIL images (converted to RGB)."""
        import torch

        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = torch.stack(
                [self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]]
            )
            with torch.inference_mode():
                emb = self.model.encode_image(
                    self._padded(pixels).to(self.device, dtype=self._dtype()), normalize=True
                )[: len(pixels)]
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.embed_dim), dtype=np.float32)

    def _padded(self, batch: Any) -> Any:
        """The batch padded to `batch_size` rows (repeating its last row). Matrix kernels pick their blocking
        by batch size, so a row's embedding differs in the last bits between batch sizes (not between
        positions in a batch of one size): a fixed size makes scores independent of how rows were batched,
        hence of the job's partitioning."""
        import torch

        missing = self.batch_size - len(batch)
        return batch if missing <= 0 else torch.cat([batch, batch[-1:].expand(missing, *batch.shape[1:])])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, embed_dim) float32, unit rows; texts are truncated to the model's context length."""
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size]))
            with torch.inference_mode():
                emb = self.model.encode_text(self._padded(tokens).to(self.device), normalize=True)[: len(tokens)]
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.embed_dim), dtype=np.float32)

    def score(self, images: list[Any], texts: list[str]) -> np.ndarray:
        """Cosine similarity of each image with its own text, in [-1, 1]."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        return np.concatenate([np.empty(0, dtype=np.float32), *self.score_each(images, [[t] for t in texts])])

    def score_each(self, images: list[Any], texts: list[list[str]]) -> list[np.ndarray]:
        """Cosine similarity of each image with each of its texts (several captions of one image), in
        [-1, 1]: every image is encoded once, the texts of all images go through the text tower together."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} lists of texts")
        if not images:
            return []
        counts = [len(t) for t in texts]
        image_emb = self.encode_images(images)[np.repeat(np.arange(len(images)), counts)]
        sims = np.clip(np.einsum("ij,ij->i", image_emb, self.encode_texts([t for ts in texts for t in ts])), -1, 1)
        return np.split(sims, np.cumsum(counts)[:-1])

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else 0

    def _dtype(self) -> Any:
        return next(self.model.parameters()).dtype


def load_clip(
    arch: str,
    checkpoint_path: str | Path,
    device: str = "cpu",
    precision: str | None = None,
    batch_size: int = 64,
) -> ClipScorer:
    """Build ``arch`` and load the local ``checkpoint_path`` (.bin/.pt/.pth/.safetensors) through
    ``open_clip.create_model_and_transforms(arch, pretrained=path)``, the path a user's checkpoint takes.

    ``precision`` defaults to fp16 on CUDA and fp32 on CPU. Warns (``UserWarning``) on a QuickGELU mismatch.
    """
    import open_clip

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    ensure_arch(arch)
    message = warn_quickgelu_mismatch(arch, path)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    if precision is None:
        precision = "fp16" if str(device).startswith("cuda") else "fp32"
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=str(path), device=device, precision=precision
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipScorer(model, preprocess, tokenizer, device, batch_size)


def build_tiny_clip(path: str | Path, seed: int = 0) -> tuple[str, Path]:
    """Save a tiny randomly initialised open_clip model (``pretrained=None``) to ``path`` (.pt, .pth, .bin
    or .safetensors) and return ``(arch, path)`` to load it back with ``load_clip``. Its scores mean
    nothing; it exercises the real loading and scoring path in tests and smoke runs (~7 MB)."""
    import torch

    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"checkpoint suffix must be one of {CHECKPOINT_SUFFIXES}, got {path.name!r}")
    torch.manual_seed(seed)
    model = _random_model(TINY_CLIP_ARCH)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return TINY_CLIP_ARCH, path
