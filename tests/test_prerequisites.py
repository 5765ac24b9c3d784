"""Missing host tools or an unusable /dev/kvm end with exit code 2 and what to install."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmlab import guests, host
from vmlab.errors import PrerequisiteMissing
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache
from vmlab.qemu import accel


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


def cached_debian_image(cache: Path) -> Path:
    """The Debian test image's cache entry, under the key vmlab computes for it, holding a small
    real qcow2 and kernel files: a VM can be prepared from it (never booted here)."""
    profile = guests.load("debian")

    def build(out: Path) -> None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(out / "disk.qcow2"), "1G"], check=True)
        (out / "vmlinuz").write_bytes(b"a kernel")
        (out / "initrd.img").write_bytes(b"an initrd")

    return ArtefactCache(cache).get_or_build(builder.kind(profile, "image"), builder.key(profile, "image", {}),
                                             builder.inputs(profile, "image", {}), build, "the test's Debian image")


def test_forced_kvm_that_cannot_be_used_is_refused_before_anything_is_prepared(project, tmp_path: Path) -> None:
    """`accel: kvm` was refused only when QEMU's command line was made: after the image was
    built and the VM's disk made (a 315 MB copy of a golden image). It is checked first now:
    with the image cached no disk is made; with an empty cache nothing is built."""
    project.write_config("defaults: {accel: kvm}\n")
    cache = tmp_path / "cache"
    cached_debian_image(cache)
    env = {"VMLAB_KVM_DEVICE": "/dev/no-such-kvm", "VMLAB_CACHE": str(cache)}
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    for verb in ("vm.start", "vm.golden", "vm.provision"):
        result = project.invoke(verb, env=env)
        assert result.returncode == 2, (verb, result.stderr)
        assert "accel: kvm is configured but /dev/no-such-kvm does not exist" in result.stderr
        assert not list(project.root.glob("vm/*/disk*")), f"{verb} made a disk before refusing"
        assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before
    empty = tmp_path / "empty-cache"
    result = project.invoke("vm.start", env=dict(env, VMLAB_CACHE=str(empty)))
    assert result.returncode == 2 and "accel: kvm is configured but" in result.stderr
    assert not [p for p in empty.rglob("*") if not p.name.endswith(".lock")], "something was built"


def test_auto_without_kvm_device_picks_tcg_saying_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "kvm")  # see the test above for why
    choice = accel.choose("auto", probe_kernel=lambda: Path("/nonexistent"), verdict_dir=tmp_path)
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
