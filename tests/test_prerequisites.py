"""Missing host tools or an unusable /dev/kvm end with exit code 2 and what to install."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from vmlab import accel, host
from vmlab.errors import PrerequisiteMissing


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


def test_tools_in_sbin_are_found_when_path_lacks_sbin(monkeypatch) -> None:
    """A non-root user's PATH often has no sbin folder; the image build's tools live there."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("debootstrap") is None  # so the answer below is vmlab's doing
    assert host.which("debootstrap") == "/usr/sbin/debootstrap"
    assert host.which("mkfs.ext4") == "/usr/sbin/mkfs.ext4"


def test_a_hidden_tool_is_named_with_its_package(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # qemu-img is in /usr/bin, which is not searched now
    with pytest.raises(PrerequisiteMissing) as missing:
        host.require(["qemu-img", "debootstrap"], "building an image")
    message = str(missing.value)
    assert "building an image needs tools that are not installed" in message
    assert "qemu-img (Debian package qemu-utils)" in message and "debootstrap" not in message  # found in sbin
    assert "apt-get install qemu-utils" in message
