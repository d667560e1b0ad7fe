"""`.ci/run` installs Debian's chromium before `make test` when it is absent and apt-get is usable, and never
fails CI because apt cannot: run with stub commands (make, apt-get, id) on a PATH without chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.media import REPO

TOOLS = ("bash", "dirname", "env", "cat", "timeout")


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def ci(tmp_path):
    """A copy of .ci/run in a fake checkout, and a bin folder of real shell tools plus stubs."""
    root = tmp_path / "repo"
    (root / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", root / ".ci" / "run")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_ / tool)
    log = tmp_path / "calls"
    stub(bin_, "make", f'echo "make $*" >> {log}')
    stub(bin_, "id", "echo 0")

    def run() -> tuple[subprocess.CompletedProcess, str]:
        proc = subprocess.run([str(bin_ / "bash"), str(root / ".ci" / "run")], capture_output=True, text=True,
                              env={"PATH": str(bin_), "HOME": str(tmp_path)}, timeout=60)
        return proc, log.read_text() if log.exists() else ""

    return bin_, log, run


def test_apt_failure_leaves_ci_green_with_a_message(ci):
    bin_, log, run = ci
    stub(bin_, "apt-get", f'echo "apt-get $*" >> {log}; exit 100')
    proc, calls = run()
    assert proc.returncode == 0, proc.stderr
    assert "could not install chromium" in proc.stdout
    assert "apt-get update -qq" in calls and calls.strip().endswith("make test")


def test_chromium_is_installed_non_interactively_before_make_test(ci):
    bin_, log, run = ci
    stub(bin_, "apt-get", f'echo "apt-get $* $DEBIAN_FRONTEND" >> {log}')
    proc, calls = run()
    assert proc.returncode == 0, proc.stderr
    lines = calls.splitlines()
    assert lines == ["apt-get update -qq noninteractive",
                     "apt-get install -y -qq --no-install-recommends chromium noninteractive", "make test"]


def test_nothing_installed_when_chromium_is_present_or_apt_absent(ci):
    bin_, log, run = ci
    proc, calls = run()  # no apt-get on PATH
    assert proc.returncode == 0 and "no apt-get here" in proc.stdout and calls == "make test\n"
    stub(bin_, "apt-get", f'echo "apt-get $*" >> {log}')
    stub(bin_, "chromium", "true")
    log.unlink()
    proc, calls = run()
    assert proc.returncode == 0 and calls == "make test\n" and "chromium" not in proc.stdout


def test_make_failure_still_fails_ci(ci):
    bin_, log, run = ci
    stub(bin_, "make", "exit 2")
    stub(bin_, "chromium", "true")
    proc, _ = run()
    assert proc.returncode == 2


def test_trainer_conformance_runs_after_make_test_where_the_shared_data_is(ci, tmp_path):
    bin_, log, run = ci
    stub(bin_, "chromium", "true")
    proc, calls = run()  # a checkout without ../shared: said, not run
    assert proc.returncode == 0 and calls == "make test\n" and "make conformance) cannot run" in proc.stdout
    (tmp_path / "shared" / "data" / "dev").mkdir(parents=True)
    log.unlink()
    proc, calls = run()
    assert proc.returncode == 0 and calls == "make test\nmake conformance\n"
    stub(bin_, "make", f'echo "make $*" >> {log}; [ "$1" != conformance ]')  # a conformance failure fails CI
    proc, _ = run()
    assert proc.returncode != 0
