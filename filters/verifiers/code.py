"""Code answers: the candidate program plus the problem's tests, run in the sandbox (``run_code``)."""

from __future__ import annotations

from filters.verifiers.answer import extract_answer
from filters.verifiers.sandbox import CodeRun, run_code

__all__ = ["CodeRun", "code_program", "run_code", "verify_code"]


def code_program(candidate: str, tests: str, entry_point: str | None = None) -> str:
    """One Python file: the candidate, then the tests, then ``check(entry_point)`` when the tests define a
    ``check`` function to call (HumanEval's layout)."""
    program = f"{candidate.rstrip()}\n\n\n{tests.rstrip()}\n"
    if entry_point:
        program += f"\n\ncheck({entry_point})\n"
    return program


def verify_code(response: str, tests: str, entry_point: str | None = None, *, prompt: str = "",
                timeout_s: float = 10.0, memory_mb: int = 512) -> CodeRun:
    """Run a model's answer against the tests: the code of its fenced block (``extract_answer("code")``; the
    whole response when it has no fence), after ``prompt`` (HumanEval: the signature and docstring the
    completion continues; pass "" when the answer is a whole program). ``passed`` is the verdict."""
    code = extract_answer("code", response)
    code = response if code is None else code
    return run_code(code_program(prompt + code, tests, entry_point), timeout_s=timeout_s, memory_mb=memory_mb)
