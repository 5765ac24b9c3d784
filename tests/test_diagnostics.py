"""A failure after QEMU started leaves a diagnostic bundle, and the error names it."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from conftest import INVOKE, Project, alive


def bundle_of(stderr: str) -> Path:
    match = re.search(r"Diagnostics \(console, QEMU log and state, dmesg, mounts\): (\S+)", stderr)
    assert match, stderr
    return Path(match.group(1))


def test_a_boot_that_never_answers_is_stopped_and_leaves_its_console_and_qemu_state(project: Project,
                                                                                     vm_ready) -> None:
    """A swap area in place of the VM's disk: the guest's kernel boots, its initramfs cannot mount
    the root file system and stops in its shell, printing why on the console (the Debian guest
    boots `quiet`, so a boot cut short by the timeout alone may print nothing). Swap, not a blank
    disk: the initramfs waits 30 s for a blank disk to get a file system before it gives up. The
    QEMU pid is read from the pid file while the boot runs, then looked for in /proc after the
    start failed."""
    project.write_config("defaults: {boot_timeout: 30, memory: 900}\n")  # 900: no golden image, a real boot
    assert project.invoke("vm.setup").returncode == 0
    disk = project.root / "vm" / "default" / "disk.qcow2"
    raw = project.root / "swap.raw"
    subprocess.run(["truncate", "-s", "64M", str(raw)], check=True)
    subprocess.run(["mkswap", "-q", str(raw)], check=True)
    disk.unlink()
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(disk)], check=True)
    proc = subprocess.Popen([INVOKE, "vm.start"], cwd=project.root, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = project.root / "vm" / "default" / "qemu.pid"
    qemu_pid = None
    while proc.poll() is None and qemu_pid is None:
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        qemu_pid = int(text) if text.isdigit() else None
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and qemu_pid is not None, stderr
    assert "did not answer within 30s" in stderr
    assert not alive(qemu_pid)  # stopped: seen by the host, not through vmlab's pid file
    console = (project.root / "vm" / "default" / "console.log").read_text(errors="replace")
    last = [line for line in console.splitlines() if line.strip()][-1]
    assert "Last console lines" in stderr and last.strip() in stderr  # what the guest printed last
    assert "Failed to mount /dev/vda as root file system." in stderr
    folder = bundle_of(stderr)
    assert folder.parent == project.root / "vm" / "default" / "diagnostics"
    tail = (folder / "console-tail.txt").read_text()
    assert tail.strip() and tail == "\n".join(console.splitlines()[-200:]) + "\n"
    assert (folder / "qemu.log").read_bytes() == (project.root / "vm" / "default" / "qemu.log").read_bytes()
    assert json.loads((folder / "last-state.json").read_text())["pid"] == qemu_pid  # QEMU's argv, pid, port
    assert json.loads((folder / "qmp-status.json").read_text()) == {"qemu": "not running"}  # it was stopped


def test_a_failed_provision_leaves_dmesg_and_mounts_from_the_running_guest(project: Project, vm_ready) -> None:
    project.write_config("defaults: {memory: 900}\nprofiles:\n  debian: {packages: [no-such-package-vmlab]}\n")
    result = project.invoke("vm.provision", timeout=900)
    assert result.returncode == 1
    assert "provisioning failed" in result.stderr and "no-such-package-vmlab" in result.stderr
    folder = bundle_of(result.stderr)
    status = json.loads((folder / "qmp-status.json").read_text())
    assert status["qemu"] == "running" and status["query-status"]["status"] == "running"
    assert re.search(r"^\[\s*\d+\.\d+\] ", (folder / "dmesg.txt").read_text(), re.MULTILINE)  # kernel lines
    assert " on / type ext4" in (folder / "mount.txt").read_text()
    assert project.invoke("vm.stop").returncode == 0


def test_asking_for_a_snapshot_that_does_not_exist_makes_no_bundle(project: Project, vm_ready) -> None:
    """On a VM of the default shape: a copy of the golden image, started by a restore when one
    is made (else a boot); either way a running VM whose snapshots do not include the name."""
    assert project.invoke("vm.start").returncode == 0
    result = project.invoke("vm.restore", "--name", "nosuch")
    assert result.returncode == 1 and "no snapshot named 'nosuch'" in result.stderr
    assert "Diagnostics" not in result.stderr
    assert not (project.root / "vm" / "default" / "diagnostics").exists()
    assert project.invoke("vm.stop").returncode == 0
