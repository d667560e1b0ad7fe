"""model.backends: the transformers backend on the tiny model (batched = one at a time, seeded sampling),
the openai backend against a real `transformers serve` and a minimal fake server, the one-line errors, and
the vLLM names table."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ast  # noqa: E402
import base64  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from model.backends import BackendError, Item, load_backend, yes_no_item  # noqa: E402
from model.backends.hf import TransformersBackend, yes_no_token_ids  # noqa: E402
from model.backends.openai_api import OpenAIBackend  # noqa: E402
from model.tiny import build_tiny_qwen25vl  # noqa: E402
from model.tokenizer import qwen_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LIMITS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "qwen25vl")


@pytest.fixture(scope="module")
def backend(tiny_dir: str) -> TransformersBackend:
    return load_backend("transformers", tiny_dir, device="cpu", batch_size=4, **LIMITS)


def _items() -> list[Item]:
    sizes = [(64, 48), (300, 57), (500, 420), (40, 40), (1000, 90)]
    items = [yes_no_item([Image.new("RGB", s, (37 * i, 200 - 30 * i, 90))], f"caption {i} " * (i + 1))
             for i, s in enumerate(sizes)]
    items.append(Item(images=[Image.new("RGB", (80, 60), (9, 9, 9)), Image.new("RGB", (60, 200))], prompt="Same?"))
    items.append(Item(images=[], prompt="Is the sky blue? Answer yes or no."))
    return items


def test_yes_no_token_ids_cover_the_variants() -> None:
    tok = qwen_tokenizer()
    yes, no = yes_no_token_ids(tok)
    for word, ids in (("yes", yes), ("no", no)):
        for variant in (word, word.capitalize(), word.upper(), " " + word, " " + word.capitalize()):
            (tid,) = tok(variant, add_special_tokens=False)["input_ids"]
            assert tid in ids, variant
    assert not set(yes) & set(no) and tok("not", add_special_tokens=False)["input_ids"][0] not in no


def test_batched_scoring_equals_one_at_a_time(backend: TransformersBackend) -> None:
    items = _items()
    batched = backend.score_yes_no(items)  # batches of 4: mixed sizes, image counts and left padding
    single = [backend.score_yes_no([it])[0] for it in items]
    assert len(batched) == len(items)
    for b, s in zip(batched, single, strict=True):
        assert abs(b.p_yes - s.p_yes) <= 1e-5 and abs(b.mass - s.mass) <= 1e-5 * s.mass
        assert 0 < b.p_yes < 1 and 0 < b.mass <= 1
    assert max(s.p_yes for s in single) - min(s.p_yes for s in single) > 1e-4  # the items do differ


def test_items_sharing_images_encode_them_once(backend: TransformersBackend) -> None:
    """A row's captions share its image objects: the vision tower sees each distinct image once per call, and
    every score equals the item scored alone."""
    photo, other = Image.new("RGB", (300, 200), (200, 90, 30)), Image.new("RGB", (120, 90), (20, 90, 200))
    pair = [Image.new("RGB", (80, 60), (9, 9, 9)), Image.new("RGB", (60, 200))]
    items = [Item([photo], "a red wall"), Item([photo], "a dog on a long caption"), Item(pair, "same?"),
             Item([photo], "a third caption"), Item(pair, "the other question"), Item([other], "blue")]
    seen: list[int] = []
    hook = backend.model.model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        shared = backend.score_yes_no(items)  # batches of 4: [photo x2, pair, photo] and [pair, other]
    finally:
        hook.remove()
    patches = {id(im): backend._inputs([Item([im], "")])["image_grid_thw"].prod().item()
               for im in (photo, other, *pair)}
    assert seen == [patches[id(photo)] + sum(patches[id(im)] for im in pair),
                    sum(patches[id(im)] for im in pair) + patches[id(other)]]
    for got, item in zip(shared, items, strict=True):
        (alone,) = backend.score_yes_no([Item([im.copy() for im in item.images], item.prompt)])
        assert abs(got.p_yes - alone.p_yes) <= 1e-5 and abs(got.mass - alone.mass) <= 1e-5 * alone.mass


def test_scores_are_the_yes_no_share_of_the_next_token(backend: TransformersBackend) -> None:
    import torch

    item = _items()[1]
    inputs = backend._inputs([item])
    with torch.no_grad():
        probs = backend.model(**inputs).logits[0, -1].softmax(-1)
    p_yes, p_no = probs[backend.yes_ids].sum().item(), probs[backend.no_ids].sum().item()
    (got,) = backend.score_yes_no([item])
    assert math.isclose(got.p_yes, p_yes / (p_yes + p_no), rel_tol=1e-5)
    assert math.isclose(got.mass, p_yes + p_no, rel_tol=1e-5)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(57, 300, factor=28, **LIMITS)  # the image reached the model resized to the limits
    assert inputs["image_grid_thw"][0].tolist() == [1, h // 14, w // 14]


def test_generate_is_seeded_and_returns_n(backend: TransformersBackend) -> None:
    items = _items()[:5]
    kw = {"n": 3, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 6}
    first = backend.generate(items, seed=7, **kw)
    assert first == backend.generate(items, seed=7, **kw)
    assert first != backend.generate(items, seed=8, **kw)
    assert [len(c) for c in first] == [3] * 5
    for cands in first:
        for c in cands:
            assert c.finish_reason in ("stop", "length") and 0 <= c.n_tokens <= 6 and isinstance(c.text, str)
            assert c.finish_reason == "stop" or c.n_tokens == 6
    greedy = backend.generate(items[:2], n=2, temperature=0.0, max_new_tokens=4)
    assert greedy[0][0] == greedy[0][1]
    with pytest.raises(BackendError, match="^generate: n"):
        backend.generate(items, n=0)


def test_each_candidate_is_drawn_from_its_own_seed(backend: TransformersBackend) -> None:
    """With seeds, candidate j depends on its item and seeds[j] only: not on the other candidates, nor on n."""
    item = _items()[1]
    kw = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6}
    three = backend.generate([item], n=3, seeds=[11, 12, 13], **kw)[0]
    assert backend.generate([item], n=1, seeds=[12], **kw)[0] == [three[1]]
    assert backend.generate([item, _items()[0]], n=2, seeds=[13, 11], **kw)[0] == [three[2], three[0]]
    assert len({c.text for c in backend.generate([item], n=6, seeds=list(range(6)), **kw)[0]}) > 1
    with pytest.raises(BackendError, match="^generate: seeds gives 2 seed"):
        backend.generate([item], n=3, seeds=[1, 2])


def test_model_path_errors_are_one_line(tmp_path: Path, tiny_dir: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = [("transformers", str(tmp_path / "nope"), "^model: not found: "),
             ("transformers", str(tmp_path / "empty"), "has no config.json"),
             ("transformers", str(tmp_path / "bert"), "is a 'bert' model, not Qwen2.5-VL"),
             ("vllm", str(tmp_path / "nope"), "^model: not found: "),
             ("llamacpp", tiny_dir, "^backend: unknown kind 'llamacpp'")]
    for kind, path, message in cases:
        with pytest.raises(BackendError, match=message) as err:
            load_backend(kind, path)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_is_one_line(tiny_dir: str) -> None:
    with pytest.raises(BackendError, match="^backend vllm: cannot import vLLM") as err:
        load_backend("vllm", tiny_dir)
    assert "\n" not in str(err.value)


def test_vllm_uses_table_covers_every_vllm_call() -> None:
    """make vllm-check checks VLLM_USES against vLLM; here: VLLM_USES lists every vLLM call and keyword
    argument of the backend module, and every attribute it reads from vLLM's results."""
    tree = ast.parse((REPO / "model" / "backends" / "vllm_llm.py").read_text())
    table = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "VLLM_USES")
    used: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "vllm":
                name = node.func.attr
            elif ast.unparse(owner) == "self.llm":
                name = "LLM." + node.func.attr
            else:
                continue
            used.setdefault(name, set()).update(k.arg for k in node.keywords)
    assert used and all(set(args) <= set(table[name]) for name, args in used.items()), used
    result_attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name | ast.Subscript)
                    and ast.unparse(n.value).split("[")[0] in ("output", "c", "lp", "output.outputs")}
    declared = {a for k in ("outputs.RequestOutput", "outputs.CompletionOutput", "logprobs.Logprob")
                for a in table[k]}
    assert result_attrs and result_attrs <= declared, result_attrs - declared


# ----------------------------------------------------------------------------------------------------------
# openai backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Fake(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: canned top_logprobs, n choices, and it records the requests."""

    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Fake.requests.append(body)
        top = [{"token": t, "logprob": math.log(p)} for t, p in
               (("Yes", 0.5), (" yes", 0.1), ("No", 0.2), ("NO", 0.05), ("Maybe", 0.1))]
        choice = {"message": {"role": "assistant", "content": "Yes it is."}, "finish_reason": "stop",
                  "logprobs": {"content": [{"token": "Yes", "logprob": math.log(0.5), "top_logprobs": top}]}}
        answer = {"choices": [dict(choice, index=i) for i in range(body.get("n", 1))]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_openai_backend_against_a_fake_server() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        be = OpenAIBackend("qwen", base_url=f"http://127.0.0.1:{server.server_port}/v1", **LIMITS)
        (score,) = be.score_yes_no([yes_no_item([Image.new("RGB", (1000, 90))], "a bar")])
        assert math.isclose(score.p_yes, 0.6 / 0.85) and math.isclose(score.mass, 0.85)
        sent = _Fake.requests[-1]
        assert sent["logprobs"] is True and sent["top_logprobs"] == 20 and sent["max_tokens"] == 1
        image_part, text_part = sent["messages"][0]["content"]
        assert text_part == {"type": "text", "text": 'Does this image show "a bar"? Answer yes or no.'}
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        w, h = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
        assert w % 28 == 0 and h % 28 == 0 and w * h <= LIMITS["max_pixels"]  # smart-resized before sending
        cands = be.generate([Item(images=[], prompt="hi")] * 2, n=3, seed=1, max_new_tokens=5)
        assert [len(c) for c in cands] == [3, 3] and _Fake.requests[-1]["n"] == 3
        assert cands[0][0].text == "Yes it is." and cands[0][0].n_tokens == 4
    finally:
        server.shutdown()


@pytest.mark.slow
def test_openai_backend_against_transformers_serve(tiny_dir: str) -> None:
    """A real OpenAI-compatible server on 127.0.0.1 (`transformers serve` with the tiny model): generate works
    (it ignores `n`, so the backend asks once per candidate) and scoring is refused with one line (it
    answers 200 without log-probabilities)."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
    assert exe, "transformers CLI missing"
    port = _free_port()
    proc = subprocess.Popen([exe, "serve", tiny_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 240
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.time() < deadline, "transformers serve did not start"
                time.sleep(1)
        be = OpenAIBackend(tiny_dir, base_url=f"http://127.0.0.1:{port}/v1", **LIMITS)
        item = yes_no_item([Image.new("RGB", (120, 90), (200, 30, 30))], "a red square")
        cands = be.generate([item], n=2, temperature=1.0, max_new_tokens=4, seed=3)
        assert len(cands) == 1 and len(cands[0]) == 2
        assert all(c.finish_reason in ("stop", "length") and c.n_tokens <= 5 for c in cands[0])
        with pytest.raises(BackendError, match=r"ignored `logprobs`.*needs a server that returns them") as err:
            be.score_yes_no([item])
        assert "\n" not in str(err.value)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
