"""A project's suites by their own make targets (`make vm-test-NAME`, listed by `make vm-help`), and
a Go project's results as a Go developer reads them (vmlab/runs/readout.py), as its users meet vmlab:
the wheel installed in a venv outside this checkout (tests/test_adoption.py's fixture), `vmlab
init` in the project, real make, and the real Debian guest running the guest's own `go test
-json`; `vmlab watch` shows the same. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from conftest import kill_vms
from test_adoption import run
from test_readout import under
from vmlab.init import INCLUDE

GO_MODULE = Path(__file__).parent / "go-module"
CALC = "example.com/vmlab/gomodule/calc"
SUITES = """\
  go:
    command: go test -json ./...
    format: go-test
    timeout: 1500
  vet:
    command: go vet ./...
"""
SEED_MAKEFILE = """\
build:
\t@echo building

vm-test-unit vm-test-phase4: build
\t@echo "the project's own $@"

vm-test-%-slow:
\t@echo "the project's own pattern for $*"
"""


def init_project(folder: Path, bin_dir: Path, makefile: str = "") -> Path:
    """A Go module set up with `vmlab init --guest debian`, with suites go (go test -json) and vet."""
    shutil.copytree(GO_MODULE, folder)
    if makefile:
        (folder / "Makefile").write_text(makefile)
    done = run(["vmlab", "init", "--guest", "debian"], folder, bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    config = folder / "vmlab.yaml"
    config.write_text(config.read_text().replace("quick: quick\n", SUITES + "quick: quick\n"))
    return folder


def test_vm_help_lists_each_configured_suite_and_an_unknown_one_names_them(vmlab_bin: Path, tmp_path: Path) -> None:
    project = init_project(tmp_path / "calc", vmlab_bin)
    listed = run(["make", "-s", "vm-help"], project, vmlab_bin)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "  make vm-test-go           Run suite go: go test -json ./..." in lines
    assert "  make vm-test-vet          Run suite vet: go vet ./..." in lines
    assert "  make vm-test-quick        Run suite quick: go test ./... (as root)" in lines
    assert any(line.startswith("  make vm-quick ") for line in lines)  # the targets, as before

    unknown = run(["make", "vm-test-nosuch"], project, vmlab_bin)
    assert unknown.returncode == 2  # make's status for a failed recipe; vmlab's own is 2 too
    assert "there is no suite named 'nosuch'; configured suites: quick, go, vet" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    (project / "vmlab.yaml").write_text("suites: {quick: {command: true}\n")  # broken: vmlab says how
    broken = run(["make", "-s", "vm-help"], project, vmlab_bin)
    assert broken.returncode == 0 and "make vm-quick" in broken.stdout and "vmlab.yaml" in broken.stderr


def test_init_keeps_a_makefiles_own_vm_test_targets_and_says_how_to_reach_vmlabs(vmlab_bin: Path,
                                                                                 tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "Makefile").write_text(SEED_MAKEFILE)
    first = run(["vmlab", "init", "--guest", "debian"], seed, vmlab_bin)
    assert first.returncode == 0, first.stderr
    assert "kept Makefile's own vm-test-%-slow, vm-test-phase4, vm-test-unit: make runs your recipes for those " \
           "names, not vmlab's (vmlab's run of any suite: `make vm-test VM_SUITE=NAME`)" in first.stdout
    assert (seed / "Makefile").read_text() == f"{SEED_MAKEFILE}\n{INCLUDE}\n"
    assert "nothing to do" in run(["vmlab", "init", "--guest", "debian"], seed, vmlab_bin).stdout  # said once

    project = init_project(tmp_path / "calc", vmlab_bin, SEED_MAKEFILE)

    mine = run(["make", "-s", "vm-test-unit"], project, vmlab_bin)  # no warning of a clash, and theirs runs
    assert (mine.returncode, mine.stdout, mine.stderr) == (0, "building\nthe project's own vm-test-unit\n", "")
    pattern = run(["make", "-s", "vm-test-e2e-slow"], project, vmlab_bin)
    assert pattern.stdout == "the project's own pattern for e2e\n"  # theirs: its stem is the shorter
    (project / "vmlab.yaml").write_text((project / "vmlab.yaml").read_text().replace(
        "  vet:", "  unit:\n    command: go test -short ./...\n  vet:"))
    lines = run(["make", "-s", "vm-help"], project, vmlab_bin).stdout.splitlines()
    assert "  make vm-test VM_SUITE=unit Run suite unit: go test -short ./... (vm-test-unit is another target)" \
        in lines and "  make vm-test-go           Run suite go: go test -json ./..." in lines


@pytest.fixture(scope="module")
def go_project(vmlab_bin: Path, tmp_path_factory: pytest.TempPathFactory, vm_ready) -> Iterator[Path]:
    """The Go module's project with its VM started from its golden image, which has the guest's
    Go (`make vm-golden` installs what the config lists: golang-go, gcc, libc6-dev). Without
    init's warm-up (tests/test_warm.py's), that image is the one the Go tests share (conftest
    GO_PACKAGES): made once on a machine, found made by later runs."""
    project = init_project(tmp_path_factory.mktemp("go") / "calc", vmlab_bin)
    config = project / "vmlab.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.lstrip().startswith("warm:")))
    try:
        started = run(["make", "-s", "vm-golden", "vm-start", "vm-sync"], project, vmlab_bin, timeout=3600)
        assert started.returncode == 0, started.stdout + started.stderr
        yield project
    finally:
        run(["make", "-s", "vm-stop"], project, vmlab_bin)
        kill_vms(project)


def test_make_vm_test_name_runs_that_suite_of_the_projects_config_read_as_go_developers_read_it(
        go_project: Path, vmlab_bin: Path) -> None:
    shown = run(["make", "-s", "vm-test-go"], go_project, vmlab_bin)
    assert shown.returncode == 2 and "vm-test-go] Error 1" in shown.stderr, shown.stdout + shown.stderr  # a test failed
    out = shown.stdout
    assert under(out, f"✖  {CALC} TestDivide/by_zero") == [
        "    calc_test.go:19: Divide(1, 0) returned error <nil>, want ErrDivideByZero"]
    assert under(out, f"∅  {CALC} TestNeedsNetwork") == ["    calc_test.go:25: no network in the guest"]
    assert re.search(rf"^✖  {re.escape(CALC)} \(\d+(\.\d+)?m?s\)$", out, re.MULTILINE)  # the package, as it ended
    assert re.search(r"^DONE 5 tests, 1 skipped, 2 failures in \d+\.\d{3}s$", out, re.MULTILINE)
    assert '"Action"' not in out and "=== RUN" not in out  # not the stream
    folder = Path(re.findall(r"results: (\S+)", out)[-1])
    (suite,) = json.loads((folder / "report.json").read_text())["suites"]
    assert (suite["name"], suite["tests"], suite["failed"]) == ("go", 5, 2)
    assert '"Action":"fail"' in (folder / "go.log").read_text()  # the stream, whole, in the results folder

    raw = run(["make", "-s", "vm-test-go"], go_project, vmlab_bin, env={"VMLAB_RAW": "1"})
    assert raw.returncode == 2 and re.search(r'^\{"Time":.*"Action":"fail"', raw.stdout, re.MULTILINE)
    assert "DONE" not in raw.stdout and "✖" not in raw.stdout

    # As the seed's per-suite targets did, `make vm-test-NAME` tests the code as it is now: a test
    # written since the last sync runs, with no `make vm-sync` first.
    added = go_project / "calc" / "added_test.go"
    added.write_text('package calc\n\nimport "testing"\n\nfunc TestAdded(t *testing.T) {}\n')
    try:
        edited = run(["make", "-s", "vm-test-go"], go_project, vmlab_bin)
    finally:
        added.unlink()  # the module's other tests count the project's own tests
    assert re.search(r"^DONE 6 tests, 1 skipped, 2 failures in ", edited.stdout, re.MULTILINE), \
        edited.stdout + edited.stderr

    vet = run(["make", "-s", "vm-test-vet"], go_project, vmlab_bin)  # another suite, by its own target
    assert vet.returncode == 0 and re.search(r"^  passed +vet ", vet.stdout, re.MULTILINE), vet.stdout + vet.stderr


class Watching:
    """`vmlab watch` in the project, its output read line by line as it comes."""

    def __init__(self, project: Path, bin_dir: Path, *args: str):
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VM", "VMLAB_CONFIG", "VIRTUAL_ENV")}
        self.proc = subprocess.Popen([str(bin_dir / "vmlab"), "watch", *args], cwd=project, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in self.proc.stdout or []],
                         daemon=True).start()

    def until(self, pattern: str, timeout: float) -> List[str]:
        """The lines up to the first that matches `pattern`."""
        deadline, got = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            try:
                got.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                continue
            self.seen.append(got[-1])
            if re.search(pattern, got[-1]):
                return got
        raise AssertionError(f"no line matching {pattern!r} in {timeout}s; saw:\n" + "\n".join(self.seen))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def test_watch_shows_each_run_read_as_go_developers_read_it(go_project: Path, vmlab_bin: Path) -> None:
    source = go_project / "calc" / "calc.go"
    buggy = source.read_text()
    watching = Watching(go_project, vmlab_bin, "--suite", "go")
    try:
        first = "\n".join(watching.until(r"run 1: ", timeout=600))
        assert "run 1: FAILED go: 2 passed, 2 failed" in first, first
        assert under(first, f"✖  {CALC} TestDivide/by_zero") == [
            "    calc_test.go:19: Divide(1, 0) returned error <nil>, want ErrDivideByZero"]
        assert "DONE 5 tests, 1 skipped, 2 failures in " in first and '"Action"' not in first
        source.write_text(buggy.replace("return 0, nil // the bug", "return 0, ErrDivideByZero // fixed"))
        second = watching.until(r"run 2: ", timeout=600)
        assert "run 2: PASSED go: 4 passed, 0 failed" in second[-1], second
        assert any(re.fullmatch(rf"✓  {re.escape(CALC)} \(\d+(\.\d+)?m?s\)", line) for line in second), second
        shown = "\n".join(second)
        assert under(shown, f"∅  {CALC} TestNeedsNetwork") == ["    calc_test.go:25: no network in the guest"]
        assert "✖" not in shown
        assert any(line.startswith("DONE 5 tests, 1 skipped in ") for line in second), second
    finally:
        source.write_text(buggy)
        status = watching.stop()
    assert status == 130
