"""``math_equal(gold, prediction)``: are two final math answers the same? math-verify (Hugging Face) decides,
in a worker process with a deadline, so a pathological expression (``9^{9^{9^{9}}}``) costs at most
``timeout_s`` and the call works on any thread (math-verify's own timeouts use ``signal.alarm``, which only
the main thread may set: they are switched off here).

Workers are ``python -m filters.verifiers.math`` children speaking one JSON line per question; an idle one is
reused, one past its deadline is killed and the next call starts a fresh one.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from filters.verifiers.answer import extract_answer
from formatters.builders import _BOX_START, last_boxed

log = logging.getLogger(__name__)
_ROOT = Path(__file__).resolve().parents[2]
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER_WORDS = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?)\s+([A-Za-z]{2,}\.?\s*)+$")  # "18 dollars", "5 cm"
_MATH_WORDS = {"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "and", "or", "infty", "inf", "i"}
_WRAP = re.compile(r"^(?:\$+|\\\(|\\\[)(.*?)(?:\$+|\\\)|\\\])$", re.DOTALL)


def gold_answer(text: str) -> str:
    """The final answer of a dataset's gold field: GSM8K's ``#### N``, a MATH solution's last ``\\boxed{}``,
    else the text itself (MATH-500's ``answer``)."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


def clean_answer(answer: str) -> str:
    """Surrounding ``$``/``\\(\\)``, a final full stop, thousands separators (``1,000``; only when the whole
    answer is one number) and plain-word units after a number (``18 dollars``) removed."""
    s = answer.strip()
    m = _WRAP.match(s)
    if m:
        s = m.group(1).strip()
    s = s.rstrip(".").strip()
    m = _NUMBER_WORDS.match(s)
    if m and not {w.lower().rstrip(".") for w in s.split()[1:]} & _MATH_WORDS:
        s = m.group(1)
    bare = s.replace("\\$", "").replace("$", "").strip()
    if _THOUSANDS.match(bare):
        s = bare.replace(",", "")
    return s


def prediction_answer(prediction: str) -> str | None:
    """The prediction's final answer: its last ``\\boxed{}`` or ``Answer:`` line, or the whole prediction when
    it is one short line without either (a bare answer; an unclosed box is none); None otherwise."""
    answer = extract_answer("math", prediction)
    bare = prediction.strip()
    if answer is None and "\n" not in bare and 0 < len(bare) <= 200 and not _BOX_START.search(bare):
        answer = bare
    return answer


def math_equal(gold: str, prediction: str, timeout_s: float = 5.0) -> bool:
    """True when ``prediction``'s final answer (``prediction_answer``) is mathematically equal to ``gold``'s
    (``gold_answer``). No answer, an unparsable one, or a verification over ``timeout_s`` is False."""
    answer = prediction_answer(prediction or "")
    if answer is None or not (gold or "").strip():
        return False
    return _POOL.ask(clean_answer(gold_answer(gold)), clean_answer(answer), timeout_s)


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "filters.verifiers.math"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(_ROOT))
        self.buf = b""
        if self.read(time.monotonic() + 300) != "ready":
            self.kill()
            raise RuntimeError("math-verify worker did not start")

    def read(self, deadline: float) -> str | None:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()  # type: ignore[union-attr]


class _Pool:
    """Idle workers, each used by one call at a time (so any number of threads may ask at once)."""

    def __init__(self) -> None:
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()

    def ask(self, gold: str, answer: str, timeout_s: float) -> bool:
        with self.lock:
            worker = self.idle.pop() if self.idle else None
        worker = worker or _Worker()
        try:
            worker.proc.stdin.write(json.dumps([gold, answer]).encode() + b"\n")  # type: ignore[union-attr]
            worker.proc.stdin.flush()  # type: ignore[union-attr]
            reply = worker.read(time.monotonic() + timeout_s)
        except OSError:
            reply = None
        if reply is None:
            log.warning("math_equal: no verdict within %.1fs for %r vs %r (counted as not equal)",
                        timeout_s, gold[:80], answer[:80])
            worker.kill()
            threading.Thread(target=self.spare, daemon=True).start()  # its replacement starts now
            return False
        with self.lock:
            self.idle.append(worker)
        return reply == "1"

    def spare(self) -> None:
        try:
            worker = _Worker()
        except (OSError, RuntimeError):
            return  # the next call starts one itself
        with self.lock:
            self.idle.append(worker)

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.kill()


_POOL = _Pool()
atexit.register(_POOL.close)


def _serve() -> None:
    """The worker: one JSON ``[gold, answer]`` per line in, ``1`` / ``0`` per line out."""
    from math_verify import parse, verify  # only the worker loads sympy

    def parsed(s: str) -> list:
        return parse(f"\\boxed{{{s}}}", parsing_timeout=None)  # type: ignore[arg-type]

    verify(parsed("1/2"), parsed("0.5"), timeout_seconds=None)  # type: ignore[arg-type]  # lazy imports, now
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, answer = json.loads(line)
        try:
            g, a = parsed(gold), parsed(answer)
            equal = bool(g and a and verify(g, a, timeout_seconds=None))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - an answer math-verify cannot handle is not equal
            equal = False
        out.write("1\n" if equal else "0\n")
        out.flush()


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # math-verify warns on every parse that its timeouts are off
    _serve()
