"""A failure after QEMU started leaves a diagnostic bundle, and the error names it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import Project


def bundle_of(stderr: str) -> Path:
    match = re.search(r"Diagnostics \(console, QEMU log and state, dmesg, mounts\): (\S+)", stderr)
    assert match, stderr
    return Path(match.group(1))


def test_a_boot_that_never_answers_leaves_console_and_qemu_state(project: Project, vm_ready) -> None:
    project.write_config("defaults: {boot_timeout: 4, memory: 900}\n")  # 900: no golden image, a real boot
    result = project.invoke("vm.start")
    assert result.returncode == 1
    folder = bundle_of(result.stderr)
    assert folder.parent == project.root / "vm" / "default" / "diagnostics"
    assert (folder / "console-tail.txt").exists() and (folder / "qemu.log").exists()
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
    project.write_config("defaults: {memory: 900}\n")
    assert project.invoke("vm.start").returncode == 0
    result = project.invoke("vm.restore", "--name", "nosuch")
    assert result.returncode == 1 and "no snapshot named 'nosuch'" in result.stderr
    assert "Diagnostics" not in result.stderr
    assert not (project.root / "vm" / "default" / "diagnostics").exists()
    assert project.invoke("vm.stop").returncode == 0
