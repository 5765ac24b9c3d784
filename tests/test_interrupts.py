"""Every interruption survived: Ctrl-C (SIGINT to the process group, as a terminal sends it)
or SIGTERM at each point a command can be, sent to the real `invoke` process once a line it
prints shows the point was reached. Each must end with exit 130 (SIGTERM: 143), "vmlab:
interrupted" (or "terminated") as its last line and no traceback, leave no QEMU or SSH
control master running that it started, and the next command must work.

The VM points (start of a golden copy, restore, sync, suite) run the offline Debian guest;
fetch runs against tests/httpserver.py (no VM is needed to download).
"""

from __future__ import annotations

import bz2
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from conftest import INVOKE, Project, qemu_processes
from dragonfly_mirror import ISO, config_for, fake_qemu_env, mirror_files
from httpserver import FileServer
from vmlab import locks
from vmlab.lab import images
from vmlab.qemu.machine import Machine

SHOWN = {signal.SIGINT: (130, "vmlab: interrupted"), signal.SIGTERM: (143, "vmlab: terminated")}
NOISE = re.compile(r"Traceback|Task exception|never retrieved|Exception ignored|\bnans?\b")  # not a progress line's


def ssh_masters() -> Set[int]:
    """Pids of OpenSSH control masters vmlab runs (titled "ssh: RUNTIME/vmlab-UID/TAG.ctl [mux]"), and
    of ssh clients of one (ControlPath in their command line)."""
    runtime = re.escape(os.environ["XDG_RUNTIME_DIR"])  # this module's own (see `lab`): no other lab's
    found = subprocess.run(["pgrep", "-f", rf"^ssh: {runtime}/vmlab-[0-9]+/.*\[mux\]|^ssh .*ControlPath=.*{runtime}"],
                           capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def settled_masters() -> Set[int]:
    """ssh_masters() once no earlier command's background opening of SSH (a restore's or start's
    last step, SharedConnection.open_in_background) is still under way: the master it makes is
    that command's, and must not be counted as the next one's."""
    deadline = time.monotonic() + 30
    for opening in Path(os.environ["XDG_RUNTIME_DIR"]).glob("vmlab-*/*.opening"):
        try:
            pid = int(opening.read_text())
        except (OSError, ValueError):
            continue
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return ssh_masters()


class Running:
    """A real `invoke` command in a project, its stdout and stderr read line by line as they come."""

    def __init__(self, project: Project, *args: str, env: Optional[Dict[str, str]] = None):
        self.masters_before = settled_masters()
        env = dict(os.environ, **(env or {}))
        env.pop("VM", None)
        self.proc = subprocess.Popen([INVOKE, *args], cwd=project.root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: "queue.Queue[Tuple[str, str]]" = queue.Queue()
        self.err: List[str] = []
        self.out: List[str] = []
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()
        self.signalled_at = 0

    def _read(self, name: str, stream) -> None:  # noqa: ANN001
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, "\0eof"))

    def _next(self, timeout: float) -> Optional[Tuple[str, str]]:
        try:
            name, line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line != "\0eof":
            (self.err if name == "err" else self.out).append(line)
        return name, line

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self._next(0.1)
            if got and re.search(pattern, got[1]):
                return got[1]
            if got is None and self.proc.poll() is not None and self.lines.empty():
                break
        raise AssertionError(f"no line matching {pattern!r}; stdout:\n" + "\n".join(self.out) +
                             "\nstderr:\n" + "\n".join(self.err))

    def stop(self, sig: int, after: float = 0.0) -> None:
        """Send `sig` `after` seconds from now, as a terminal does (to the whole process group),
        then wait for the command to end; check the one-line, no-traceback ending."""
        time.sleep(after)
        self.signalled_at = len(self.err)
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        ends = 0
        while ends < 2:
            got = self._next(5)
            if got is None or got[1] == "\0eof":
                ends += 1
        code, line = SHOWN[sig]
        said = "\n".join(self.err)
        assert self.proc.returncode == code, said
        assert self.err and self.err[-1] == line, said
        assert self.err.count(line) == 1 and not NOISE.search(said), said
        assert not NOISE.search("\n".join(self.out)), "\n".join(self.out)
        assert not ssh_masters() - self.masters_before, "an SSH control master this command opened is left"


@pytest.fixture(scope="module")
def runtime_dir() -> Iterator[None]:
    """A runtime folder of this module's own for vmlab's control sockets, so the masters it
    counts are its commands', not those of another lab on the machine."""
    folder = tempfile.mkdtemp(prefix="vmlab-rt-", dir="/tmp")
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = folder
    yield
    for master in ssh_masters():
        os.kill(master, signal.SIGTERM)
    if saved is None:
        del os.environ["XDG_RUNTIME_DIR"]
    else:
        os.environ["XDG_RUNTIME_DIR"] = saved
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(shared_project: Project, vm_ready, runtime_dir) -> Project:
    """A project of the default Debian VM whose golden image is cached (made once if not)."""
    shared_project.write_config("""
        vms:
          default: {}
        sync:
          guest_dir: work
        suites:
          slow: {command: 'echo suite-started; sleep 60'}
          quick: {command: 'cat data.txt'}
        quick: quick
        """)
    (shared_project.root / "data.txt").write_text("data\n")
    if images.golden_of(shared_project.lab().vm()) is None:
        made = shared_project.invoke("vm.golden")
        assert made.returncode == 0, made.stderr
    return shared_project


def vm_folder(project: Project) -> Path:
    return project.root / "vm" / "default"


def ensure_running(project: Project) -> None:
    started = project.invoke("vm.start")
    assert started.returncode == 0, started.stderr


@pytest.mark.parametrize("sig,point,after", [(signal.SIGINT, "a fresh copy of golden image", 0.0),
                                             (signal.SIGINT, "using (TCG|KVM)", 0.3),
                                             (signal.SIGTERM, "using (TCG|KVM)", 0.8)])
def test_start_of_a_golden_copy(lab: Project, sig: int, point: str, after: float) -> None:
    """QEMU starts paused, the snapshot loads through QMP, then SSH (~2 s in all): cut in it."""
    assert lab.invoke("vm.destroy", "--yes").returncode == 0  # the next start is of a fresh golden copy
    run = Running(lab, "vm.start")
    run.wait_for(point)
    run.stop(sig, after)
    assert Machine("default", vm_folder(lab)).pid() is None and not qemu_processes(vm_folder(lab))
    again = lab.invoke("vm.start")
    assert again.returncode == 0 and "restored to 'clean', not booted" in again.stderr, again.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_restore(lab: Project, sig: int) -> None:
    ensure_running(lab)
    assert lab.invoke("vm.snapshot", "--name", "point").returncode == 0
    run = Running(lab, "vm.restore", "--name", "point")
    run.wait_for(r"restoring 'point'")
    run.stop(sig, 0.3)
    again = lab.invoke("vm.restore", "--name", "point")
    assert again.returncode == 0, again.stderr
    assert re.search(r"restored point in [\d.]+s \(state loaded in [\d.]+s\)", again.stdout), again.stdout
    assert lab.invoke("vm.ssh", "-c", "true").returncode == 0


def test_restore_after_a_crash_says_it_started_qemu(lab: Project) -> None:
    ensure_running(lab)
    assert lab.invoke("vm.snapshot", "--name", "point").returncode == 0
    pid = Machine("default", vm_folder(lab)).pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    while Machine("default", vm_folder(lab)).pid():
        time.sleep(0.05)
    again = lab.invoke("vm.restore", "--name", "point")
    assert again.returncode == 0, again.stderr
    assert "restored point in" in again.stdout and "(QEMU started from it)" in again.stdout, again.stdout
    assert "nan" not in again.stdout + again.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sync(lab: Project, sig: int) -> None:
    ensure_running(lab)
    assert lab.invoke("vm.ssh", "-c", "rm -rf work work.vmlab-synced").returncode == 0
    big = lab.root / "big.bin"
    big.write_bytes(os.urandom(64 << 20))  # a few seconds of rsync under TCG
    try:
        run = Running(lab, "vm.sync")
        run.wait_for(r"syncing .* with rsync")
        run.stop(sig, 0.5)
    finally:
        big.unlink()
    quick = lab.invoke("vm.quick")
    assert quick.returncode == 0 and "data" in quick.stdout, quick.stdout + quick.stderr
    assert lab.invoke("vm.ssh", "-c", "test ! -e work/big.bin").returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_suite(lab: Project, sig: int) -> None:
    ensure_running(lab)
    assert lab.invoke("vm.sync").returncode == 0
    lab.lab().vm().close_connection()  # the run opens the master itself
    started = time.time()
    run = Running(lab, "vm.test", "--suite", "slow")
    run.wait_for(r"^suite-started$")
    run.stop(sig)
    (report,) = [json.loads(r.read_text()) for r in (vm_folder(lab) / "results").glob("*/report.json")
                 if json.loads(r.read_text())["started_at"] and "slow" in r.read_text()
                 and r.stat().st_mtime > started]
    assert not report["passed"] and "cut off" in report["suites"][0]["note"]  # never "passed"
    assert lab.invoke("vm.quick").returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_fetch(project: Project, sig: int, runtime_dir) -> None:
    """A download cut half-way: one line, the resumable partial kept (and nothing in the place
    a later run trusts); the next fetch resumes it and verifies the whole."""
    files = mirror_files(4 << 20)
    packed = files[f"/iso-images/{ISO}.bz2"]
    with FileServer(files) as mirror:
        project.write_config(config_for(mirror.url))
        mirror.rate = len(packed) / 20  # 20 s for the whole file
        run = Running(project, "vm.fetch")
        run.wait_for(r"fetching .*\.iso")
        run.stop(sig, 2.0)
        isos = project.root / "cache" / "isos"
        assert not (isos / ISO).exists(), sorted(p.name for p in isos.iterdir())
        assert [p for p in isos.iterdir() if p.name.endswith(".partial") and p.stat().st_size > 0], \
            sorted(p.name for p in isos.iterdir())
        mirror.rate = None
        again = project.invoke("vm.fetch")
        assert again.returncode == 0, again.stderr
        assert (isos / ISO).read_bytes() == bz2.decompress(packed)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_install(project: Project, sig: int, runtime_dir, tmp_path: Path) -> None:
    """An install cut while install.sh runs (tests/fake_qemu.py plays DragonFly's live CD: no
    real VM is needed to drive the installer): one line, the installer's QEMU gone, no installed
    image in the cache, and the next install works."""
    fake = fake_qemu_env(tmp_path / "fake-bin")
    with FileServer(mirror_files(1 << 20)) as mirror:
        project.write_config(config_for(mirror.url))
        assert project.invoke("vm.fetch").returncode == 0
        run = Running(project, "vm.install", env=fake)
        run.wait_for(r"install\.sh, run by PFI")
        run.stop(sig, 0.5)
        assert not qemu_processes(project.root / "vm" / "dfly")
        assert not list((project.root / "cache").glob("*/*/keys/id_ed25519.pub"))  # no installed image
        again = project.invoke("vm.install", env=fake, timeout=300)
        assert again.returncode == 0 and "installed in" in again.stderr, again.stderr


def build_processes(cache: Path) -> List[str]:
    """Processes of a build into `cache` (the builder's shell and what it runs name its folders)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(cache) in (proc / "environ").read_bytes().decode(errors="replace"):
                found.append(proc.name)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_medium_build(project: Project, sig: int, runtime_dir, vm_ready) -> None:
    """The rehearsal's install medium built from Debian packages (~100 s), cut by a SIGTERM to
    vmlab alone (a service manager's stop: the builder gets no signal of its own): one line, the
    whole build stopped, nothing mounted or cached, and nothing that would stop the next build:
    what is left is the cache's lock files alone, each free at once. The cache is then as a
    fresh one is, whose build test_rehearsal's module runs (rebuilding here cost ~100 s and
    showed nothing more)."""
    if os.geteuid() != 0:
        pytest.skip("building the medium needs root")
    cache = project.root / "cache"
    project.write_config(f"""
        vms:
          r: {{profile: rehearsal}}
        cache_dir: {cache}
        """)
    (cache / "debs").mkdir(parents=True)
    for deb in (Path(os.environ.get("VMLAB_CACHE", Path.home() / ".cache" / "vmlab")) / "debs").glob("*.deb"):
        os.symlink(deb, cache / "debs" / deb.name)  # no download: the packages a cached build fetched
    run = Running(project, "vm.setup")
    run.wait_for(r"building the rehearsal medium")
    time.sleep(8)  # into debootstrap
    run.signalled_at = len(run.err)
    os.kill(run.proc.pid, sig)  # vmlab alone, not its process group
    run.stop(sig)
    assert not build_processes(cache)
    assert str(cache) not in Path("/proc/mounts").read_text()
    left = list(cache.glob("rehearsal-medium/*")) + list(cache.glob("rehearsal-medium/.*"))
    assert left and all(p.name.endswith(".lock") for p in left), left
    for lock in left:
        with locks.held(lock, "the medium's build", wait=False):  # locks.Busy if anything still held it
            pass


def test_provision(project: Project, runtime_dir, vm_ready) -> None:
    """Provisioning (apt in a guest booted from the base image) cut by Ctrl-C: one line, its QEMU
    gone, the VM not marked provisioned, and the next provision works."""
    project.write_config("defaults: {memory: 900}\nprofiles:\n  debian: {packages: [tree]}\n")
    run = Running(project, "vm.provision")
    run.wait_for(r"installing what the config asks for", timeout=300)
    run.stop(signal.SIGINT, 3.0)
    folder = project.root / "vm" / "default"
    assert Machine("default", folder).pid() is None and not qemu_processes(folder)
    assert not (folder / "provisioned.json").exists()
    again = project.invoke("vm.provision", timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert project.invoke("vm.stop").returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_during_a_run(lab: Project, sig: int) -> None:
    """vm.watch cut while a run's suite is under way (tests/test_watch.py cuts it idle)."""
    ensure_running(lab)
    lab.lab().vm().close_connection()  # watch opens the master itself
    run = Running(lab, "vm.watch", "--suite", "slow")
    run.wait_for(r"^suite-started$")
    run.stop(sig)
    assert run.out[-1].startswith("watch: 1 run: 0 passed, 0 failed, 1 cancelled in "), run.out
    quick = lab.invoke("vm.quick")
    assert quick.returncode == 0, quick.stderr
