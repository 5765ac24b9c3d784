"""`vm.watch` on a real guest: a run per save, a burst is one run, a newer save cancels, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List

import pytest
import yaml

from conftest import INVOKE, Project

SAMPLE = Path(__file__).parent / "sample-project"


@pytest.fixture(scope="module")
def sample(shared_project: Project, vm_ready) -> Project:
    """The sample project with its VM running and a config of suites that read data/state.txt."""
    shutil.copytree(SAMPLE, shared_project.root, dirs_exist_ok=True, symlinks=True)
    settings = yaml.safe_load((shared_project.root / "vmlab.yaml").read_text())
    settings["suites"]["state"] = {"command": "grep -q good data/state.txt && echo state-ok"}
    settings["suites"]["slow"] = {"command": ("if grep -q long data/state.txt; then sleep 40; "
                                                  "elif grep -q mid data/state.txt; then sleep 3; fi; echo slow-done")}
    (shared_project.root / "watch.yaml").write_text(yaml.safe_dump({**settings, "quick": "state"}))
    (shared_project.root / "data" / "state.txt").write_text("good\n")
    started = shared_project.invoke("vm.start")
    assert started.returncode == 0, started.stderr
    return shared_project


class Watching:
    """`invoke vm.watch` running in the project, its output read line by line as it comes."""

    def __init__(self, project: Project, *args: str):
        self.proc = subprocess.Popen([INVOKE, "vm.watch", "--config", str(project.root / "watch.yaml"), *args],
                                     cwd=project.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; saw:\n" + "\n".join(self.seen))

    def results(self, quiet: float = 1.5) -> List[str]:
        """The result lines that come until none came for `quiet` s."""
        found = []
        while True:
            try:
                line = self.lines.get(timeout=quiet)
            except queue.Empty:
                return found
            self.seen.append(line)
            if re.match(r"\[\d\d:\d\d:\d\d\] run \d+:", line):
                found.append(line)

    def interrupt(self, sig: int = signal.SIGINT) -> str:
        """Send `sig` to the process group (as a terminal's Ctrl-C does); its stderr."""
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        finally:
            self.kill()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.reader.join(timeout=10)  # stdout is read to its end by the reader alone
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def close_control_master(project: Project) -> None:
    project.lab().vm().close_connection()


def control_master_running(project: Project) -> bool:
    conn = project.lab().vm().connection()
    return bool(conn._processes()) or conn.control_path.exists()


def test_watch_runs_on_each_save_a_burst_once_and_ctrl_c_leaves_nothing(sample: Project) -> None:
    state = sample.root / "data" / "state.txt"
    close_control_master(sample)  # `vm.start` leaves one open for the next command: watch opens its own
    watching = Watching(sample)
    try:
        watching.wait_for(r"run 1: PASSED state: 1 passed, 0 failed")  # a first run at start
        assert control_master_running(sample)
        state.write_text("good, edited\n")
        line = watching.wait_for(r"run 2: ", timeout=30)
        assert "PASSED" in line and "1 changed file sent" in line, line
        state.write_text("bad\n")
        assert "run 3: FAILED state: 0 passed, 1 failed" in watching.wait_for(r"run 3: ", timeout=30)
        for i in range(5):  # a burst of saves (an editor's "save all")
            (sample.root / "data" / f"burst{i}.txt").write_text(f"{i}\n")
        state.write_text("good again\n")
        burst = watching.results()
        assert len(burst) == 1 and "run 4: PASSED" in burst[0] and "6 changed files sent" in burst[0], burst
        (sample.root / "notes.tmp").write_text("excluded by the config: no run\n")
        (sample.root / "vm" / "scratch").write_text("the lab's own folder: no run\n")
        assert watching.results() == []
        err = watching.interrupt()
    finally:
        watching.kill()
        for i in range(5):
            (sample.root / "data" / f"burst{i}.txt").unlink(missing_ok=True)
        state.write_text("good\n")
    assert watching.proc.returncode == 130, err
    assert err.strip() == "vmlab: interrupted" and "Traceback" not in err, err
    assert watching.seen[-1].startswith("watch: 4 runs: 3 passed, 1 failed in "), watching.seen[-3:]
    assert not control_master_running(sample)  # watch opened it, watch closed it
    assert sample.invoke("vm.quick", "--config", str(sample.root / "watch.yaml")).returncode == 0  # next works


def test_a_newer_save_cancels_the_run_under_way_unless_finish(sample: Project) -> None:
    state = sample.root / "data" / "state.txt"
    watching = Watching(sample, "--suite", "slow")
    try:
        watching.wait_for(r"run 1: PASSED slow", timeout=60)
        state.write_text("long 1\n")
        time.sleep(1.5)  # run 2 is under way (its suite sleeps 40 s)
        state.write_text("good 2\n")
        assert "run 2: cancelled" in watching.wait_for(r"run 2: ", timeout=10)
        assert "run 3: PASSED" in watching.wait_for(r"run 3: ", timeout=30)
        err = watching.interrupt(signal.SIGTERM)
    finally:
        watching.kill()
    assert watching.proc.returncode == 143 and err.strip() == "vmlab: terminated", err
    assert "1 cancelled" in watching.seen[-1]
    left = sample.invoke("vm.ssh", "-c", "pgrep -x sleep || echo none").stdout.strip()
    assert left == "none"  # the cancelled run was stopped in the guest too

    watching = Watching(sample, "--suite", "slow", "--finish")
    try:
        watching.wait_for(r"run 1: PASSED slow", timeout=60)
        state.write_text("mid 3\n")
        time.sleep(1.0)  # run 2 is under way (its suite sleeps 3 s)
        state.write_text("good 4\n")
        assert "run 2: PASSED" in watching.wait_for(r"run 2: ", timeout=30)  # finished, not cancelled
        assert "run 3: PASSED" in watching.wait_for(r"run 3: ", timeout=30)  # then one for what came meanwhile
        assert watching.results(quiet=2) == []
        watching.interrupt()
    finally:
        watching.kill()
        state.write_text("good\n")
    assert watching.proc.returncode == 130


def test_watch_ignores_what_the_sync_leaves_out(tmp_path: Path) -> None:
    """No VM needed: the sync's rules (vm/, the config's excludes, what git ignores but not
    what it tracks) and editors' temporary files start no run."""
    from vmlab.config import SyncConfig
    from vmlab.watch import Ignored

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.o\nbuild/\n")
    (tmp_path / "build").mkdir()
    for name in ("a.c", "a.o", "tracked.o", "build/x"):
        (tmp_path / name).write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "-f", "tracked.o"], check=True)
    ignored = Ignored(tmp_path, tmp_path / "vm", SyncConfig(excludes=("*.tmp",), gitignore=True))
    kept = ignored.kept({str(tmp_path / n) for n in ("a.c", "a.o", "tracked.o", "build/x")})
    assert kept == {str(tmp_path / "a.c"), str(tmp_path / "tracked.o")}
    assert [ignored(None, str(tmp_path / n)) for n in ("x.tmp", "vm/results", "a.c.swp", "src/a.c")] == \
        [False, False, False, True]
