"""The suite's own exit-code policy (tests/conftest.py), run as pytest in a child process.

A test that needs a VM where a prerequisite is missing is skipped naming it, and the run
exits 2 ("did not finish"), never 0; under CI=true the run stops at once with exit 2.
The missing prerequisite is made by a PATH without QEMU (the real tools stay installed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """A copy of the suite's conftest with two tests: one needs a VM, one does not."""
    for name in ("conftest.py", "sshd_fixtures.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_two.py").write_text("def test_needs_a_vm(vm_ready):\n    pass\n\n\n"
                                          "def test_needs_nothing():\n    pass\n")
    return tmp_path


def run(suite: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    clean.update(PATH=str(Path(sys.executable).parent), **env)  # the venv only: no qemu-system, no qemu-img
    command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "--rootdir", str(suite),
               "--basetemp", str(suite / "tmp"), *args, str(suite)]  # its folders in this test's, not /tmp
    return subprocess.run(command, cwd=suite, env=clean, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist workers"])
def test_a_missing_prerequisite_skips_naming_it_and_the_run_exits_2(suite: Path, workers: list) -> None:
    """Also when pytest-xdist's workers run the tests (scripts/test does): the skips reach the
    process that ends the run through their reports."""
    result = run(suite, *workers)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert "tests skipped, exit code 2: host tools missing: qemu-system-x86_64" in result.stdout


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist workers"])
def test_under_ci_a_missing_prerequisite_stops_the_run_with_2(suite: Path, workers: list) -> None:
    result = run(suite, *workers, CI="true")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "prerequisite missing under CI: host tools missing: qemu-system-x86_64" in result.stdout
    assert "passed" not in result.stdout  # stopped at the VM test, which comes first: nothing after it ran
