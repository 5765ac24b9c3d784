"""The accelerator probe: KVM is used only once it has booted a real kernel on this host."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Project, prerequisite_missing
from vmlab import config, guests, host
from vmlab.errors import PrerequisiteMissing
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache
from vmlab.qemu import accel


@pytest.fixture(scope="module")
def kernel(vm_ready) -> Path:
    cache = ArtefactCache(config.default_cache_dir())
    return builder.ensure(cache, guests.load("debian"), "image", {}) / "vmlinuz"


def kvm_boots_linux(kernel: Path, seconds: int = 10) -> bool:
    """Ground truth, independent of vmlab: does this kernel reach its panic under KVM, with the
    CPU a VM gets there (-cpu host)? (TCG gets there in ~5 s here, a working KVM in a fraction.)"""
    out = subprocess.run(["timeout", str(seconds), "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
                          "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
                          "-append", "console=ttyS0 panic=-1", "-serial", "stdio"],
                         capture_output=True, text=True, check=False).stdout
    return "Kernel panic" in out


def probe_processes() -> list:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "vmlab-probe-" in line and "qemu-system" in line]


def test_probe_matches_what_kvm_really_does_and_never_hangs(kernel: Path) -> None:
    started = time.monotonic()
    choice = accel.probe(kernel)
    assert time.monotonic() - started < accel.PROBE_LIMIT
    assert choice.accel == ("kvm" if kvm_boots_linux(kernel) else "tcg"), choice.reason
    assert choice.reason and "\n" not in choice.reason  # one line for the user
    assert probe_processes() == []


def test_verdict_is_remembered_until_the_host_reboots(kernel: Path, tmp_path: Path) -> None:
    verdict = tmp_path / "accel-verdict.json"
    first = accel.choose("auto", lambda: kernel, tmp_path)
    probed_at = json.loads(verdict.read_text())["probed_at"]
    started = time.monotonic()
    again = accel.choose("auto", lambda: Path("/kernel/never/needed"), tmp_path)
    assert time.monotonic() - started < 1.0  # no second probe
    assert again.accel == first.accel and "kept until the host reboots" in again.reason
    saved = json.loads(verdict.read_text())
    verdict.write_text(json.dumps(dict(saved, boot_id="an-earlier-boot")))
    after_reboot = accel.choose("auto", lambda: kernel, tmp_path)
    assert json.loads(verdict.read_text())["probed_at"] > probed_at  # probed afresh
    assert after_reboot.accel == first.accel


def test_forced_choices_are_not_probed(tmp_path: Path) -> None:
    started = time.monotonic()
    tcg = accel.choose("tcg", lambda: pytest.fail("accel: tcg probed KVM"), tmp_path)
    assert tcg.qemu_args() == ["-accel", "tcg"]
    if accel.kvm_usable() is None:
        kvm = accel.choose("kvm", lambda: pytest.fail("accel: kvm probed KVM"), tmp_path)
        assert kvm.qemu_args() == ["-accel", "kvm", "-cpu", "host"]
    else:
        with pytest.raises(PrerequisiteMissing, match="accel: kvm is configured but"):
            accel.choose("kvm", lambda: pytest.fail("accel: kvm probed KVM"), tmp_path)
    assert time.monotonic() - started < 0.1
    assert not (tmp_path / "accel-verdict.json").exists()


def test_a_verdict_is_dropped_when_qemu_changes(tmp_path: Path) -> None:
    """A new QEMU may behave differently under KVM: the verdict is kept for the host's boot
    and QEMU version it was made with. (Written by hand; no kernel is booted.)"""
    if accel.kvm_usable() is not None:
        prerequisite_missing(f"a usable /dev/kvm (the verdict is only read then): {accel.kvm_usable()}")
    verdict = tmp_path / "accel-verdict.json"
    saved = {"accel": "kvm", "reason": "KVM booted the kernel", "boot_id": host.boot_id(),
             "qemu": host.qemu_version(), "probed_at": time.time()}
    verdict.write_text(json.dumps(saved))
    kept = accel.choose("auto", lambda: None, tmp_path)
    assert kept.accel == "kvm" and "kept until the host reboots" in kept.reason
    verdict.write_text(json.dumps(dict(saved, qemu="6.0.0")))
    dropped = accel.choose("auto", lambda: None, tmp_path)  # no kernel: a fresh verdict cannot be made
    assert dropped.accel == "tcg" and "KVM is unproven" in dropped.reason


def test_the_verdict_is_the_hosts_whatever_cache_a_project_sets(project: Project, tmp_path: Path) -> None:
    """A project that sets cache_dir of its own uses the verdict kept in the user's cache
    (VMLAB_CACHE here) instead of probing again. (The verdict is written by hand, as KVM's:
    this host's KVM fails the probe, so a verdict that says KVM can only come from the file.)"""
    if accel.kvm_usable() is not None:
        prerequisite_missing(f"a usable /dev/kvm (the verdict is only read then): {accel.kvm_usable()}")
    users = tmp_path / "users-cache"
    users.mkdir()
    (users / "accel-verdict.json").write_text(json.dumps({
        "accel": "kvm", "reason": "KVM booted a test kernel in 0.9s", "boot_id": host.boot_id(),
        "qemu": host.qemu_version(), "probed_at": time.time()}))
    project.write_config(f"cache_dir: {tmp_path / 'projects-cache'}\n")
    doctor = project.invoke("vm.doctor", env={"VMLAB_CACHE": str(users)})
    assert "KVM works: KVM booted a test kernel in 0.9s (probed at" in doctor.stdout, doctor.stdout + doctor.stderr
    assert not (tmp_path / "projects-cache" / "accel-verdict.json").exists()
