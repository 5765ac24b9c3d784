"""Hostile inputs: everything vmlab reads from outside is refused early with one clear line,
or handled exactly; nothing outside vmlab's own folders is touched.

One test per defect of issue 16 (named for its item), and a home for every new input
vmlab accepts: crafted golden exports (traversal, links, devices, missing fields, wrong
checksums, another version), hostile config values, paths with spaces, quotes and
non-ASCII. The parts are real: tar files, the CLI (`project.invoke`), OpenSSH's client and
rsync against a real sshd on 127.0.0.1 (standing in for the guest's: the same programs a
VM runs), git. What is not real is said in the test's docstring.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Dict

from conftest import INVOKE, Project
from vmlab import golden, keys
from vmlab.cache import ArtefactCache


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's error: one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmlab: error: "), result.stderr
    return lines[0]


def tree(folder: Path) -> Dict[str, bytes]:
    """Every file under `folder` and its bytes: to show a folder untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- golden exports: a real golden folder, real tars ---


def make_golden(project: Project, cache: Path, disk_bytes: int = 0) -> golden.Golden:
    """The project's default VM's golden image, in `cache`, from a small real disk.

    Not real: the "clean" snapshot (taking it boots a guest), and the kernel (a few bytes)."""
    lab = project.lab()
    inputs = lab.golden_inputs(lab.vm())
    work = cache.parent / "golden-src"
    work.mkdir(exist_ok=True)
    disk = work / "disk.raw"
    with open(disk, "wb") as f:
        f.write(os.urandom(disk_bytes) if disk_bytes else b"\0" * 2**20)
    (work / "vmlinuz").write_bytes(b"a kernel")
    lab_keys = keys.ensure(work / "keys", "hostile-inputs test")
    return golden.make(ArtefactCache(cache), golden.golden_key(inputs), inputs, disk, {"vmlinuz": work / "vmlinuz"},
                       lab_keys, lambda clean: None)


def members_of(archive: Path) -> Dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


# --- golden export ---


def test_item02_golden_export_is_private_from_its_first_byte(project: Project) -> None:
    cache = project.root / "cache"
    make_golden(project, cache)
    umask = os.umask(0o022)  # a usual umask: a plain create would make the file 0644
    try:
        result = project.invoke("vm.golden-export", "--output", "g.tar", env={"VMLAB_CACHE": str(cache)})
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((project.root / "g.tar").stat().st_mode) == 0o600
    assert "keys/id_ed25519" in members_of(project.root / "g.tar")


def test_item02_golden_export_to_a_missing_folder_is_exit_2_naming_it(project: Project) -> None:
    cache = project.root / "cache"
    make_golden(project, cache)
    result = project.invoke("vm.golden-export", "--output", "no such dir/g.tar", env={"VMLAB_CACHE": str(cache)})
    assert result.returncode == 2
    assert "there is no folder no such dir" in one_line_error(result)
    assert not (project.root / "no such dir").exists()
    assert not [p for p in project.root.rglob("*") if "partial" in p.name]


def test_item02_an_interrupted_golden_export_leaves_nothing_behind(project: Project) -> None:
    """Ctrl-C (SIGINT) while the tar is being written: the process is stopped (SIGSTOP) the
    moment its temporary file appears, so the interrupt lands mid-write every time."""
    cache = project.root / "cache"
    make_golden(project, cache, disk_bytes=96 << 20)
    out = project.root / "out"
    out.mkdir()
    proc = subprocess.Popen([INVOKE, "vm.golden-export", "--output", str(out / "g.tar")], cwd=project.root, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, VMLAB_CACHE=str(cache)))
    deadline = time.monotonic() + 120
    while not list(out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    assert not (out / "g.tar").exists(), "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr
    assert list(out.iterdir()) == []
