"""Qwen2.5-VL backends behind one interface (model/backends/base.py): ``score_yes_no`` and ``generate``.

``load_backend(kind, model, **options)`` with kind ``transformers`` (in process, CPU or CUDA; the tested
default), ``openai`` (an OpenAI-compatible server; ``model`` is the served name, ``base_url`` its address)
or ``vllm`` (in-process vLLM on CUDA; vLLM is imported only there). A missing or wrong model directory, or
an unknown kind, is a one-line ``BackendError`` before any weights load.
"""

from __future__ import annotations

from typing import Any

from model.backends.base import (
    YES_NO_PROMPT,
    Backend,
    BackendError,
    Candidate,
    Item,
    YesNo,
    check_model_dir,
    yes_no_item,
)
from model.backends.hf import TransformersBackend
from model.backends.openai_api import OpenAIBackend

KINDS = ("transformers", "openai", "vllm")

__all__ = ["KINDS", "YES_NO_PROMPT", "Backend", "BackendError", "Candidate", "Item", "YesNo", "load_backend",
           "yes_no_item"]


def load_backend(kind: str, model: str, **options: Any) -> Backend:
    if kind == "transformers":
        return TransformersBackend(check_model_dir(model), **options)
    if kind == "openai":
        return OpenAIBackend(model, **options)
    if kind == "vllm":
        check_model_dir(model)
        try:  # vLLM is imported here only: it is not a dependency of vlcurate's own environment
            from model.backends.vllm_llm import VLLMBackend
        except ImportError as e:
            raise BackendError(f"backend vllm: cannot import vLLM ({e}); install vlcurate[vllm] in its own "
                               "environment on a CUDA machine") from e
        return VLLMBackend(model, **options)
    raise BackendError(f"backend: unknown kind {kind!r} (known: {', '.join(KINDS)})")
