"""The same verdicts on the main thread, a plain thread, a Ray task and a (threaded) Ray actor: no signal
handlers, no preexec_fn, nothing that only the main thread may do."""

import threading

import pytest

from filters.verifiers.math import math_equal
from filters.verifiers.sandbox import run_code

# (gold, prediction, limit): generous limits where a verdict is expected (the machine may be loaded), short
# ones where only the deadline ends the case
MATH = [("1/2", "\\boxed{0.5}", 20), ("1,000", "Answer: 1000", 20), ("3", "\\boxed{4}", 20),
        ("2", "\\boxed{9^{9^{9^{9}}}}", 2)]
CODE = [("print(sum(range(10)))", 20), ("assert 1 == 2", 20), ("while True:\n    pass", 2),
        ("x = bytearray(2**30)", 20), ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", 20)]
EXPECTED = ([True, True, False, False], [("ok", "45\n"), ("error", ""), ("timeout", ""), ("memory", ""),
                                         ("error", "")])


def verdicts() -> tuple[list[bool], list[tuple[str, str]], bool]:
    maths = [math_equal(g, p, timeout_s=limit) for g, p, limit in MATH]
    runs = [run_code(c, timeout_s=limit, memory_mb=256) for c, limit in CODE]
    return maths, [(r.status, r.stdout) for r in runs], threading.current_thread() is threading.main_thread()


def test_main_thread_and_a_plain_thread():
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", verdicts()))
    t.start()  # both at once
    assert verdicts() == (*EXPECTED, True)
    t.join(120)
    assert out["v"] == (*EXPECTED, False)


@pytest.mark.slow
def test_ray_task_and_actor(ray_local):
    ray = ray_local
    task = ray.remote(verdicts)
    assert ray.get(task.remote(), timeout=300)[:2] == EXPECTED

    @ray.remote(max_concurrency=2)  # a threaded actor: its methods run off the main thread
    class Verifier:
        def run(self):
            return verdicts()

    actor = Verifier.remote()
    assert ray.get(actor.run.remote(), timeout=300) == (*EXPECTED, False)
