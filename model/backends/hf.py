"""The ``transformers`` backend: Qwen2.5-VL in this process, on CPU or CUDA (bf16 + SDPA there), batched
with left padding. The tested default.

Items of one call that hold the same image objects (a row's several captions, as the relevance stage hands
them) share one pass of the vision tower: its output goes to the language model for each of them
(``mm_encoder_outputs``), so an image is encoded once however many texts are asked about it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from model.backends.base import (
    MAX_PIXELS,
    MIN_PIXELS,
    Backend,
    Candidate,
    Item,
    YesNo,
    answer_word,
    check_generate_args,
    check_model_dir,
    user_messages,
    yes_no,
)


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids of every vocabulary token whose text is a yes / no variant (``answer_word``)."""
    found: dict[str, list[int]] = {"yes": [], "no": []}
    for token, tid in tokenizer.get_vocab().items():
        if len(token) <= 8 and token.lower().rstrip().endswith(("yes", "no")):
            word = answer_word(tokenizer.convert_tokens_to_string([token]))
            if word:
                found[word].append(tid)
    if not found["yes"] or not found["no"]:
        raise ValueError("the tokenizer has no single 'yes' / 'no' token")
    return sorted(found["yes"]), sorted(found["no"])


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TransformersBackend(Backend):
    def __init__(self, model: str, device: str | None = None, dtype: str | None = None, batch_size: int = 8,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                 attn_implementation: str = "sdpa") -> None:
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        super().__init__(min_pixels, max_pixels)
        check_model_dir(model)
        self.torch, self.encoded = torch, BaseModelOutputWithPooling
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_cuda = self.device.startswith("cuda")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if on_cuda else torch.float32)
        self.batch_size = batch_size
        self.processor = AutoProcessor.from_pretrained(
            model, size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model, dtype=torch_dtype, attn_implementation=attn_implementation).to(self.device).eval()
        self.yes_ids, self.no_ids = yes_no_token_ids(self.tokenizer)
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = {int(e) for e in ([eos] if isinstance(eos, int) else eos or [])}
        self.stop_ids.add(int(self.tokenizer.eos_token_id))

    def _inputs(self, items: Sequence[Item]) -> Any:
        texts = [self.tokenizer.apply_chat_template(user_messages(it), tokenize=False, add_generation_prompt=True)
                 for it in items]
        images = [im for it in items for im in self.images(it)]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return inputs.to(self.device)

    def _shared_inputs(self, items: Sequence[Item]) -> Any:
        """``_inputs`` with each distinct set of image objects run through the vision tower once."""
        inputs = self._inputs(items)
        first: dict[tuple[int, ...], int] = {}
        for i, it in enumerate(items):
            first.setdefault(tuple(map(id, it.images)), i)
        if "pixel_values" not in inputs or len(first) == len(items):
            return inputs
        torch = self.torch
        grid = inputs.pop("image_grid_thw")
        pixels = torch.split(inputs.pop("pixel_values"), grid.prod(-1).tolist())
        starts = [0]
        for it in items:
            starts.append(starts[-1] + len(it.images))
        owner = [first[tuple(map(id, it.images))] for it in items]  # the item whose images are encoded
        encoded = sorted({k for i in set(owner) for k in range(starts[i], starts[i + 1])})
        features = self.model.get_image_features(torch.cat([pixels[k] for k in encoded]), grid[encoded],
                                                 return_dict=True).pooler_output
        by_image = dict(zip(encoded, features, strict=True))
        per_image = [by_image[starts[o] + m] for i, o in enumerate(owner) for m in range(len(items[i].images))]
        return {**inputs, "image_grid_thw": grid,
                "mm_encoder_outputs": {"image": self.encoded(pooler_output=tuple(per_image))}}

    def score_yes_no(self, items: Sequence[Item]) -> list[YesNo]:
        out: list[YesNo] = []
        for batch in _batches(items, self.batch_size):
            with self.torch.inference_mode():
                logits = self.model(**self._shared_inputs(batch), logits_to_keep=1, use_cache=False).logits[:, -1]
            probs = logits.float().softmax(-1)
            p_yes = probs[:, self.yes_ids].sum(-1).tolist()
            p_no = probs[:, self.no_ids].sum(-1).tolist()
            out.extend(yes_no(y, n) for y, n in zip(p_yes, p_no, strict=True))
        return out

    def generate(self, items: Sequence[Item], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 512, seed: int | None = None,
                 seeds: Sequence[int] | None = None) -> list[list[Candidate]]:
        """n candidates per item. With a seed the result is the same on every call with the same items and
        batch_size (sampling draws from one generator per batch). With seeds, each candidate is generated
        alone from its own seed (no batching: it depends on its item and seed only)."""
        check_generate_args(n, temperature, top_p, max_new_tokens, seeds)
        sample = temperature > 0
        options = {"do_sample": sample, "temperature": temperature if sample else None,
                   "top_p": top_p if sample else None, "top_k": None, "num_return_sequences": n if sample else 1,
                   "max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if seeds is not None:
            return [[self._generate_one(item, s, {**options, "num_return_sequences": 1}) for s in seeds]
                    for item in items]
        result: list[list[Candidate]] = []
        for batch in _batches(items, self.batch_size):
            inputs = self._inputs(batch)
            if seed is not None:
                self.torch.manual_seed(seed)
            with self.torch.inference_mode():
                out = self.model.generate(**inputs, **options)
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            candidates = [self._candidate(ids) for ids in new for _ in range(1 if sample else n)]
            result.extend(candidates[i * n : (i + 1) * n] for i in range(len(batch)))
        return result

    def _generate_one(self, item: Item, seed: int, options: dict[str, Any]) -> Candidate:
        inputs = self._inputs([item])
        self.torch.manual_seed(seed)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, **options)
        return self._candidate(out[0, inputs["input_ids"].shape[1]:].tolist())

    def _candidate(self, ids: list[int]) -> Candidate:
        stop = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        kept = ids if stop is None else ids[:stop]
        reason = "stop" if stop is not None else "length"
        return Candidate(text=self.tokenizer.decode(kept, skip_special_tokens=True), finish_reason=reason,
                         n_tokens=len(kept))
