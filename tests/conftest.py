"""Shared fixtures: a real project folder, the real CLI, and the prerequisite policy.

Tests that need a VM run a real QEMU guest (the offline Debian guest, built once
and cached in ~/.cache/vmlab like a user's). Outside CI they are skipped when a
prerequisite is missing, naming it, and the run then exits 2; under CI=true a
missing prerequisite stops the run at once with exit code 2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List, NoReturn, Optional

import pytest

from vmlab import config as config_mod
from vmlab import guests, host
from vmlab.errors import VmlabError
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache
from vmlab.init import TOOL_PACKAGES
from vmlab.lab import Lab
from vmlab.qemu.machine import Machine

pytest_plugins = ["sshd_fixtures"]  # a real sshd on 127.0.0.1 as a stand-in guest: sshd, connect, runtime

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INVOKE = str(Path(sys.executable).parent / "invoke")
VMLAB = str(Path(sys.executable).parent / "vmlab")  # the same tasks as a program of their own (vmlab/cli.py)
_missing_prerequisites: List[str] = []  # what the skipped tests lacked (pytest_runtest_logreport)
SKIPPED_FOR = "prerequisite missing: "


def vm_prerequisite_problem() -> Optional[str]:
    """Why a VM cannot run here, or None."""
    missing = [t for t in host.VM_TOOLS if host.which(t) is None]
    if missing:
        return "host tools missing: " + ", ".join(missing) + " (run scripts/setup)"
    cache = ArtefactCache(config_mod.default_cache_dir())
    profile = guests.load("debian")
    try:
        cached = cache.has(builder.kind(profile, "image"), builder.key(profile, "image", {}))
    except VmlabError as e:
        return str(e)
    if not cached:
        if os.geteuid() != 0:
            return "the Debian test guest is not cached and building it needs root"
        missing = [t for t in builder.BUILD_TOOLS if host.which(t) is None]
        if missing:
            return "image build tools missing: " + ", ".join(missing)
    return None


def prerequisite_missing(problem: str) -> NoReturn:
    """Skip the test naming what is missing (the run then exits 2); under CI, stop the run with exit 2."""
    if IN_CI:
        pytest.exit(f"prerequisite missing under CI: {problem}", returncode=2)
    pytest.skip(SKIPPED_FOR + problem)


@pytest.fixture(scope="session")
def vm_ready() -> None:
    """Depend on this in every test that boots a VM."""
    problem = vm_prerequisite_problem()
    if problem:
        prerequisite_missing(problem)


_interrupted_by: List[int] = []


def _interrupted(signum: int, frame: object) -> NoReturn:
    _interrupted_by.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads the base folder
def pytest_configure(config: pytest.Config) -> None:
    """A CI that cancels or times out a run sends SIGTERM: end it as pytest ends a Ctrl-C, with
    every fixture's teardown, so the VMs the tests started are stopped (by default SIGTERM
    killed pytest outright and left them running). Either ends the run with 128 + the signal,
    as vmlab's own commands do, not pytest's 2, which here means a prerequisite is missing.

    The tests' folders go under a short new folder (/tmp/vt-XXXXXX), not pytest's
    /tmp/pytest-of-USER/pytest-N, to which pytest-xdist adds a folder per worker: a test's
    project path must leave its QEMU sockets under the 107 bytes a unix socket's path may have.
    It is removed after a run that passed, and kept and named after one that did not, without
    its disks and images (_drop_big_files)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = _short_base[0] = tempfile.mkdtemp(prefix="vt-")


_short_base: List[Optional[str]] = [None]  # the tests' folders, when this conftest chose them


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, a missing prerequisite stops the run before any test: checked here, in the process
    that ends the run, because a pytest-xdist worker that stops (prerequisite_missing) is only
    reported as "crashed"."""
    if IN_CI and not hasattr(session.config, "workerinput"):
        problem = vm_prerequisite_problem()
        if problem:
            pytest.exit(f"prerequisite missing under CI: {problem}", returncode=2)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the skips for a missing prerequisite from the reports, which reach the process that
    ends the run also when pytest-xdist's workers ran the tests."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(SKIPPED_FOR):
            _missing_prerequisites.append(reason.removeprefix(SKIPPED_FOR))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _interrupted_by:
        session.exitstatus = 128 + _interrupted_by[0]
    elif exitstatus == 0 and _missing_prerequisites:
        session.exitstatus = 2  # did not finish: tests were skipped for a missing prerequisite
    if _short_base[0] and session.exitstatus == 0:  # every fixture, and so every VM, is gone by now
        shutil.rmtree(_short_base[0], ignore_errors=True)
    elif _short_base[0]:
        _drop_big_files(Path(_short_base[0]))


KEPT_SIZE = 8 * 2**20  # in a failed run's kept folders, files above this are disks and images


def _drop_big_files(folder: Path) -> None:
    """What a failed run keeps is what tells why (logs, records, consoles, diagnostics), not
    the VM disks and golden copies beside them: those were 16-22 GB a run, and three kept
    runs filled this machine's disk and failed the fourth."""
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and path.suffix != ".log" and path.stat().st_size > KEPT_SIZE:
                path.unlink()
        except OSError:
            pass  # a file a leftover process still writes, or already gone


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    for problem in sorted(set(_missing_prerequisites)):
        terminalreporter.write_line(f"tests skipped, exit code 2: {problem}", yellow=True)
    if _short_base[0] and exitstatus != 0:
        terminalreporter.write_line(f"the tests' folders (projects, VM logs; not their disks) are kept in "
                                    f"{_short_base[0]}")


class Project:
    """A user's project folder: vmlab.yaml, a one-line tasks.py, and its vm/ state."""

    def __init__(self, root: Path):
        self.root = root
        (root / "tasks.py").write_text("from vmlab.tasks import ns  # noqa: F401\n")

    def write_config(self, text: str) -> Path:
        path = self.root / "vmlab.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    def lab(self) -> Lab:
        return Lab(config_mod.load(cwd=self.root))

    def invoke(self, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 900,
               input: Optional[str] = None, program: str = INVOKE) -> subprocess.CompletedProcess:
        """Run the real CLI in the project, as a user would (`program`: invoke, or VMLAB)."""
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("VM", None)
        full_env.pop("VMLAB_CONFIG", None)
        full_env.update(env or {})
        return subprocess.run([program, *args], cwd=self.root, env=full_env, capture_output=True, text=True,
                              timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)


def alive(pid: int) -> bool:
    """Running, as a user means it, read from /proc (not from vmlab's pid file): a zombie
    waiting for init to reap it is not running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def qemu_processes(folder: Path) -> List[str]:
    """QEMU processes started for a VM folder, read from /proc (not from vmlab's own records)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(folder) in cmdline:
            found.append(proc.name)
    return found


def kill_vms(root: Path) -> None:
    """Kill any QEMU still running for a VM of the project at `root`, and wait until it is gone."""
    for state_dir in (root / "vm").glob("*/"):
        machine = Machine(state_dir.name, state_dir)
        pid = machine.pid()  # only if it is still this VM's QEMU
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while machine.pid() and time.monotonic() < deadline:
                time.sleep(0.05)


@pytest.fixture
def project(tmp_path: Path):
    """A project folder; any QEMU its VMs left running is killed at the end, whatever happened."""
    yield Project(tmp_path)
    kill_vms(tmp_path)


@pytest.fixture(scope="module")
def shared_project(tmp_path_factory: pytest.TempPathFactory):
    """One project for a whole test module (tests that share a running VM), cleaned the same way."""
    root = tmp_path_factory.mktemp("proj")
    yield Project(root)
    kill_vms(root)


@pytest.fixture(scope="session")
def vmlab_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vmlab built as a wheel and installed into a fresh venv of the system's python3: vmlab
    as a project that adopts it has it (tests/test_adoption.py, tests/test_suite_targets.py)."""
    work = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
                    str(Path(__file__).resolve().parents[1])], check=True, capture_output=True)
    wheel = next((work / "dist").glob("vmlab-*.whl"))
    system_python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable  # a user's
    subprocess.run([system_python, "-m", "venv", str(work / "venv")], check=True)
    subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True)
    return work / "venv" / "bin"


def cache_without_golden_images(folder: Path) -> Path:
    """A cache of a test's own that shares the machine's built and fetched images (its other
    kinds, by symbolic links) but holds no golden image: a VM of this cache boots from its base
    image whatever golden images other tests, or earlier runs, left in the shared cache."""
    shared = config_mod.default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for kind in shared.iterdir() if shared.is_dir() else ():
        if kind.is_dir() and kind.name != "golden":
            (folder / kind.name).symlink_to(kind)
    return folder


# The packages `vmlab init` gives a Go module's Debian guest. The Go tests (test_go_suite,
# test_suite_targets, test_warm) ask for these, so they share one golden image: cached by its
# inputs, made by the first of them on a machine and restored by the rest, run after run.
GO_PACKAGES = "[" + TOOL_PACKAGES["go"]["linux"] + "]"

RUN_MARK = "VMLAB_TEST_RUN"  # in the environment of every process this test run starts, QEMU included


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_behind(tmp_path_factory: pytest.TempPathFactory):
    """Fail the run if any QEMU this run started outlives the tests: one run from a test folder,
    or one that carries this run's mark in its environment, wherever it runs (the QEMU that
    vm.golden boots to take the clean snapshot runs in the cache, ~/.cache/vmlab for some tests).
    QEMUs of other runs on the machine carry another mark and are left alone."""
    base = str(tmp_path_factory.getbasetemp())
    mark = f"{RUN_MARK}={os.getpid()}-{time.time_ns()}".encode()
    os.environ[RUN_MARK] = mark.decode().split("=", 1)[1]
    yield
    leaked = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ours = mark in (pid_dir / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if "qemu-system" in cmdline and (base in cmdline or ours):
                leaked.append(int(pid_dir.name))
                os.kill(int(pid_dir.name), signal.SIGKILL)
    assert not leaked, f"QEMU processes left behind by tests (now killed): {leaked}"
