"""The ``vllm`` backend: an in-process ``vllm.LLM`` on CUDA (``tensor_parallel_size`` GPUs), images as
``multi_modal_data``. Scoring samples one token restricted to the yes/no token ids (``allowed_token_ids``)
and reads the raw log-probabilities vLLM returns: the top ``TOP_LOGPROBS`` tokens plus the sampled one.

This is the only module that imports vLLM; it is not installed in vlcurate's own environment (vLLM 0.33 pins
its torch): ``pip install 'vlcurate[vllm]'`` in a separate one. ``make vllm-check`` checks every name and
argument listed in ``VLLM_USES`` against the installed vLLM (tests/gpu/vllm_check.py), and
tests/model/test_backends.py checks that ``VLLM_USES`` lists every vLLM call made here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import vllm

from model.backends.base import (
    MAX_PIXELS,
    MIN_PIXELS,
    Backend,
    Candidate,
    Item,
    YesNo,
    check_generate_args,
    user_messages,
    yes_no,
)
from model.backends.hf import yes_no_token_ids

TOP_LOGPROBS = 20

# Every vLLM name this module uses -> the arguments / attributes it uses (checked by make vllm-check).
VLLM_USES = {
    "LLM": ("model", "tensor_parallel_size", "dtype", "seed", "max_model_len", "gpu_memory_utilization",
            "limit_mm_per_prompt", "mm_processor_kwargs", "max_logprobs"),
    "LLM.generate": ("prompts", "sampling_params", "use_tqdm"),
    "LLM.get_tokenizer": (),
    "SamplingParams": ("n", "temperature", "top_p", "max_tokens", "seed", "logprobs", "allowed_token_ids"),
    "outputs.RequestOutput": ("outputs",),
    "outputs.CompletionOutput": ("text", "token_ids", "finish_reason", "logprobs"),
    "logprobs.Logprob": ("logprob",),
}


class VLLMBackend(Backend):
    def __init__(self, model: str, tensor_parallel_size: int = 1, max_images: int = 4,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, dtype: str = "bfloat16",
                 max_model_len: int | None = 32768, gpu_memory_utilization: float = 0.9, seed: int = 0) -> None:
        super().__init__(min_pixels, max_pixels)
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
                            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                            limit_mm_per_prompt={"image": max_images},
                            mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
                            max_logprobs=TOP_LOGPROBS)
        self.tokenizer = self.llm.get_tokenizer()
        self.yes_ids, self.no_ids = yes_no_token_ids(self.tokenizer)
        self.stop_ids = {int(self.tokenizer.eos_token_id), int(self.tokenizer.pad_token_id)}

    def _prompts(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        prompts = []
        for item in items:
            text = self.tokenizer.apply_chat_template(user_messages(item), tokenize=False, add_generation_prompt=True)
            prompt: dict[str, Any] = {"prompt": text}
            if item.images:
                prompt["multi_modal_data"] = {"image": self.images(item)}
            prompts.append(prompt)
        return prompts

    def score_yes_no(self, items: Sequence[Item]) -> list[YesNo]:
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS,
                                     allowed_token_ids=self.yes_ids + self.no_ids)
        scores = []
        for output in self.llm.generate(self._prompts(items), sampling_params=params, use_tqdm=False):
            first = output.outputs[0].logprobs[0]  # token id -> Logprob, raw (before the restriction)
            p_yes = sum(math.exp(lp.logprob) for tid, lp in first.items() if tid in self.yes_ids)
            p_no = sum(math.exp(lp.logprob) for tid, lp in first.items() if tid in self.no_ids)
            scores.append(yes_no(p_yes, p_no))
        return scores

    def generate(self, items: Sequence[Item], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 512, seed: int | None = None,
                 seeds: Sequence[int] | None = None) -> list[list[Candidate]]:
        """n candidates per item; with a seed each request is seeded, so results do not depend on batching.
        With seeds, each candidate is its own request with its own seed, all in one batched call."""
        check_generate_args(n, temperature, top_p, max_new_tokens, seeds)
        prompts = self._prompts(items)
        if seeds is None:
            params: Any = vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                              seed=seed)
        else:
            prompts = [p for p in prompts for _ in seeds]
            params = [vllm.SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                          seed=s) for _ in items for s in seeds]
        candidates = []
        for output in self.llm.generate(prompts, sampling_params=params, use_tqdm=False):
            for c in output.outputs:
                ids = list(c.token_ids)
                if ids and ids[-1] in self.stop_ids:
                    ids = ids[:-1]
                candidates.append(Candidate(text=c.text, finish_reason=c.finish_reason or "stop", n_tokens=len(ids)))
        if len(candidates) != n * len(items):
            raise RuntimeError(f"vLLM returned {len(candidates)} candidates, not n={n} for each of {len(items)}")
        return [candidates[i * n:(i + 1) * n] for i in range(len(items))]
