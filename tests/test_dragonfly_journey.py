"""A new user's first day with vmlab, on DragonFly, the way they take it (issue 23, item 4).

A Go module whose test mounts a tmpfs (so it must run as root), vmlab installed from its
wheel into a venv of its own (this checkout is not importable), `vmlab init` with its
default guest, and `make vm-quick` from an empty image cache: it must fetch the ISO,
install DragonFly over the serial console, install `go`, start the guest and run the
module's tests, one result per Go test. Then a failing test (exit 1, named), `make
vm-restore`, and `make vm-quick` again.

Mocked, because they cannot exist here: DragonFly's mirror (tests/httpserver.py laid out
by tests/dragonfly_mirror.py, a made-up ISO) and QEMU running DragonFly
(tests/fake_qemu.py, first in PATH, which plays tests/dragonfly_sim.py on the serial
console while installing and tests/dragonfly_guest.py once installed: the host's real
sshd with the installed host key and keys, each command chrooted into the installed
files with DragonFly's stand-ins first in PATH). Real: the installed `vmlab` command and
make, the download and its checks, qemu-img, xorriso, the recipe engine, install.sh and
provision.sh under dash, SSH, rsync, and Go (the host's golang-go, which the guest can
run only once `pkg install go` has put it there; its tmpfs mount is a real one in the
session's own mount namespace).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from conftest import Project, kill_vms, prerequisite_missing, qemu_processes
from dragonfly_mirror import ISO, config_for, fake_qemu_env, mirror_files
from httpserver import FileServer
from test_adoption import run
from test_interrupts import Running, runtime_dir  # noqa: F401 (a fixture: this module's own ssh sockets)

MODULE = "example.com/mounter"
GO_MOD = "module example.com/mounter\n\ngo 1.19\n"
CODE = """\
// Package mounter counts what a folder holds.
package mounter

import "os"

// Count returns how many entries dir holds.
func Count(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	return len(entries), err
}
"""
TEST = """\
package mounter

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

const want = WANT

// A privileged test: it mounts a size-limited tmpfs (DragonFly's mount_tmpfs) and counts in it.
func TestCountOnATmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it mounts a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount_tmpfs", "-s", "1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount_tmpfs: %v: %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := Count(dir); err != nil || got != want {
		t.Fatalf("Count on the tmpfs = %d, %v; want %d", got, err, want)
	}
}

func TestCountOfAMissingFolder(t *testing.T) {
	if _, err := Count("/nonexistent"); err == nil {
		t.Error("no error for a folder that is not there")
	}
}
"""


def go_module(root: Path, want: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "go.mod").write_text(GO_MOD)
    (root / "mounter.go").write_text(CODE)
    (root / "mounter_test.go").write_text(TEST.replace("WANT", str(want)))
    return root


def as_user_edits(config: Path, mirror: str) -> None:
    """What the user changes in the vmlab.yaml `vmlab init` wrote: per-test results, as
    docs/ADOPTING.md shows; and (only because DragonFly's real mirrors cannot be reached from
    here) the mirror to download from."""
    text = config.read_text()
    assert "profile: dragonfly" in text and "packages: [go]" in text, text  # init's default guest, and go for it
    text = text.replace("packages: [go]", f"packages: [go]\n    mirrors: [\"{mirror}\"]")
    text = text.replace("command: 'go test ./...'", "command: 'go test -json ./...'\n    format: go-test")
    config.write_text(text)


@pytest.fixture
def mirror() -> Iterator[FileServer]:
    with FileServer(mirror_files(1 << 20)) as server:
        yield server


@pytest.fixture
def user_env(tmp_path: Path) -> Dict[str, str]:
    """A user's environment: an empty image cache, and QEMU (tests/fake_qemu.py) on PATH."""
    env = fake_qemu_env(tmp_path / "fake-bin")
    env["VMLAB_CACHE"] = str(tmp_path / "image-cache")
    return env


def newest_report(project: Path) -> dict:
    runs = sorted((project / "vm").glob("*/results/*/report.json"), key=os.path.getmtime)
    return json.loads(runs[-1].read_text())


def left_running(project: Path) -> List[str]:
    found = subprocess.run(["pgrep", "-af", str(project)], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_from_nothing_to_per_test_results_with_make_vm_quick(vmlab_bin: Path, tmp_path: Path,  # noqa: F811
                                                             mirror: FileServer, user_env: Dict[str, str]) -> None:
    if not os.path.exists("/usr/bin/go"):
        prerequisite_missing("go for the guest's Go module (Debian package golang-go; scripts/test installs it)")
    project = go_module(tmp_path / "mounter")
    user_env = dict(user_env, PATH=f"{vmlab_bin}:{user_env['PATH']}")  # the installed vmlab, then QEMU
    try:
        init = run(["vmlab", "init"], project, vmlab_bin, env=user_env)
        assert init.returncode == 0, init.stderr
        as_user_edits(project / "vmlab.yaml", mirror.url)

        first = run(["make", "vm-quick"], project, vmlab_bin, env=user_env, timeout=1200)
        said = first.stdout + first.stderr
        assert first.returncode == 0, said[-6000:]
        # one line, before the first long step, says what will happen and what its duration depends on
        plan = [line for line in first.stderr.splitlines() if "has no image yet" in line]
        assert len(plan) == 1, first.stderr
        assert first.stderr.index(plan[0]) < first.stderr.index(f"fetching {ISO}.bz2")
        for step in ("download", "install", "go", "golden image"):
            assert step in plan[0], plan[0]
        for step in (f"{ISO}.bz2 verified", "installing from", "install.sh, run by PFI", "installed in",
                     "installing what the config asks for (go)", "the mount suite passed",
                     "restored to 'clean', not booted", "suite quick: go test -json ./..."):
            assert step in first.stderr, step
        # per-test results, the privileged one among them
        report = newest_report(project)
        assert report["passed"], report
        (quick,) = report["suites"]
        assert (quick["status"], quick["tests"], quick["passed"], quick["failed"]) == ("passed", 2, 2, 0), quick
        junit = ET.parse(Path(report["results_dir"]) / "junit.xml").getroot()
        cases = {c.get("name"): c for c in junit.iter("testcase")}
        assert set(cases) == {"TestCountOnATmpfs", "TestCountOfAMissingFolder"}
        assert {c.get("classname") for c in cases.values()} == {MODULE}

        # a failing test: exit 1, and the summary names it with its message
        go_module(project, want=3)
        failed = run(["vmlab", "quick"], project, vmlab_bin, env=user_env, timeout=600)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "FAIL TestCountOnATmpfs" in failed.stdout and "want 3" in failed.stdout, failed.stdout
        assert "has no image yet" not in failed.stderr and "installing" not in failed.stderr  # made once
        through_make = run(["make", "vm-quick"], project, vmlab_bin, env=user_env, timeout=600)
        assert through_make.returncode == 2 and "Error 1" in through_make.stderr  # make's code for any failure

        # back to clean, and green again
        restored = run(["make", "vm-restore"], project, vmlab_bin, env=user_env, timeout=600)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        go_module(project, want=2)
        again = run(["make", "vm-quick"], project, vmlab_bin, env=user_env, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        assert newest_report(project)["passed"]
        assert run(["make", "vm-stop"], project, vmlab_bin, env=user_env).returncode == 0
        assert not qemu_processes(project / "vm") and not left_running(project), left_running(project)
    finally:
        kill_vms(project)


def test_offline_the_first_start_names_what_is_missing_and_the_command_that_fetches_it(
        vmlab_bin: Path, tmp_path: Path, user_env: Dict[str, str]) -> None:  # noqa: F811
    """No mirror answers (here: a port nobody listens on) and the ISO is not cached: one error
    naming the ISO and the command that fetches it, no flag the user did not pass, exit 2 (a
    prerequisite is missing), and nothing made: no disk, no cache entry, no QEMU."""
    project = go_module(tmp_path / "mounter")
    env = dict(user_env, PATH=f"{vmlab_bin}:{user_env['PATH']}")
    assert run(["vmlab", "init"], project, vmlab_bin, env=env).returncode == 0
    as_user_edits(project / "vmlab.yaml", "http://127.0.0.1:9")
    for argv in (["vmlab", "start"], ["vmlab", "quick"]):
        started = run(argv, project, vmlab_bin, env=env, timeout=300)
        assert started.returncode == 2, started.stderr
        errors = [line for line in started.stderr.splitlines() if line.startswith("vmlab: error:")]
        assert errors == [f"vmlab: error: VM dragonfly cannot be made yet: its ISO {ISO}.bz2 is not in the cache "
                          "and no mirror answers; `vmlab fetch` downloads it once one does."], started.stderr
        assert "--offline" not in started.stderr and "has no image yet" not in started.stderr
        assert "http://127.0.0.1:9/iso-images/md5.txt" in started.stderr  # which mirror, and why, below it
    assert not (project / "vm" / "dragonfly" / "disk.qcow2").exists()
    made = [p for p in Path(user_env["VMLAB_CACHE"]).glob("*/*") if not p.name.endswith(".lock")]
    assert not made and not left_running(project), made
    fetched = run(["vmlab", "fetch"], project, vmlab_bin, env=env, timeout=300)  # the command it named
    assert fetched.returncode == 2 and "no mirror could provide" in fetched.stderr
    image = run(["vmlab", "image"], project, vmlab_bin, env=env, timeout=300)  # asks for keys: never downloads
    assert image.returncode == 2 and "--offline" not in image.stderr, image.stderr
    assert f"ISO {ISO}.bz2 is not in the cache yet; `vmlab fetch` downloads it" in image.stderr, image.stderr


def test_ctrl_c_at_each_step_keeps_what_was_finished_and_the_next_start_picks_it_up(
        project: Project, tmp_path: Path, runtime_dir) -> None:  # noqa: F811, ANN001
    """The first `vm.start`, cut by Ctrl-C (SIGINT to its process group, as a terminal sends it)
    while it downloads, then while it installs, then while it provisions; each leaves no QEMU,
    no half-made cache entry and no VM disk, and the next start goes on from what was kept: the
    download resumes with a Range request, a finished install is not redone. Mocked as in the
    test above; the mirror trickles the ISO so that the download can be cut."""
    with FileServer(mirror_files(1 << 20)) as server:
        project.write_config(config_for(server.url).replace("mirrors:", "packages: [go], mirrors:"))
        fake = fake_qemu_env(tmp_path / "fake-bin")
        cache, folder = project.root / "cache", project.root / "vm" / "dfly"
        path = f"/iso-images/{ISO}.bz2"

        def cut_at(point: str) -> None:
            run = Running(project, "vm.start", "--vm", "dfly", env=fake)
            run.wait_for(point, timeout=300)
            run.stop(signal.SIGINT, 0.5)
            assert not qemu_processes(folder) and not left_running(project.root), left_running(project.root)
            assert not list(cache.glob("*/.*.partial")) and not (folder / "disk.qcow2").exists()

        server.rate = 200_000  # bytes per second: the download takes ~5 s
        cut_at("fetching")
        assert list(cache.glob("isos/*.partial")) and server.sent[path] < len(server.files[path])
        server.rate = None
        cut_at(r"\] install.sh, run by PFI")
        assert server.requests_for(path)[-1], "the download was not resumed with a Range request"
        assert not list(cache.glob("installed/*/manifest.json"))
        cut_at("installing what the config asks for")
        assert list(cache.glob("installed/*/manifest.json")) and not list(cache.glob("golden/*/manifest.json"))
        done = project.invoke("vm.start", "--vm", "dfly", env=fake, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "has no image yet" in done.stderr and "is cached" in done.stderr
        assert "installing from" not in done.stderr and "fetching" not in done.stderr  # both kept
        assert "restored to 'clean', not booted" in done.stderr
        assert project.invoke("vm.stop", "--vm", "dfly").returncode == 0
