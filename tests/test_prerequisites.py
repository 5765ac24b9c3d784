"""Missing host tools or an unusable /dev/kvm end with exit code 2 and what to install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vmlab import accel, host


def test_missing_tools_are_all_listed_with_their_packages(project, tmp_path: Path) -> None:
    """PATH holds only the venv (python, invoke): qemu, qemu-img, ssh, rsync, xorriso are all missing.

    The sbin folders vmlab also searches hold none of these tools on Debian.
    """
    result = project.invoke("vm.start", env={"PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 2, result.stderr
    for tool, package in [("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"),
                          ("ssh", "openssh-client"), ("rsync", "rsync"), ("xorriso", "xorriso")]:
        assert f"{tool} (Debian package {package})" in result.stderr
    assert "apt-get install" in result.stderr
    assert not (project.root / "vm").exists()


def test_forced_kvm_without_a_usable_device_exits_2(project) -> None:
    """Root can open any /dev/kvm, so an unusable one is made by pointing vmlab at a device
    path that does not exist (VMLAB_KVM_DEVICE): the only way to reproduce it as root here."""
    project.write_config("defaults: {accel: kvm}\n")
    result = project.invoke("vm.start", env={"VMLAB_KVM_DEVICE": "/dev/no-such-kvm"})
    assert result.returncode == 2, result.stderr
    assert "accel: kvm is configured but /dev/no-such-kvm does not exist" in result.stderr
    assert not list((project.root / "vm").glob("*/qemu.pid"))


def test_auto_without_kvm_device_picks_tcg_saying_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "kvm")  # see the test above for why
    choice = accel.choose("auto", probe_kernel=lambda: Path("/nonexistent"), cache_dir=tmp_path)
    assert choice.accel == "tcg" and "does not exist" in choice.reason


def test_boot_id_and_qemu_version_are_real() -> None:
    assert len(host.boot_id()) == 36
    assert host.qemu_version()[0].isdigit()
    assert os.path.isabs(host.which("qemu-img") or "")
