"""Issue 16's wrong results and lost work, on a real guest: every way out of a run writes an
honest report, SSH failing is "did not finish" (2), and a failed or overtaken suspend never
loses state. Each test is named for the item it shows and starts from the VM's 'clean' state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import INVOKE, Project
from vmlab import config as config_mod
from vmlab.lab import Lab

SUITES = """\
vms:
  default: {}
sync: {guest_dir: work}
suites:
  first: {command: "echo first ran"}
  slow: {command: "echo slow started; sleep 300", timeout: 600}
  later: {command: "echo later ran"}
  dirty: {command: "touch /root/dirty && exit 1", privileged: true}
"""


@pytest.fixture(scope="module")
def lab_vm(shared_project: Project, vm_ready) -> Project:
    """One running VM for the module, the project synced, with a 'clean' snapshot each test starts from."""
    shared_project.write_config(SUITES)
    assert shared_project.invoke("vm.start").returncode == 0
    assert shared_project.invoke("vm.sync").returncode == 0
    assert shared_project.invoke("vm.snapshot", "--name", "clean").returncode == 0
    return shared_project


@pytest.fixture
def vm(lab_vm: Project) -> Project:
    """The module's VM put back to 'clean' (started from it if an earlier test stopped it)."""
    lab_vm.write_config(SUITES)
    assert lab_vm.invoke("vm.restore", "--name", "clean").returncode == 0
    return lab_vm


def newest_report(project: Project) -> dict:
    runs = sorted((project.root / "vm" / "default" / "results").glob("*/report.json"), key=os.path.getmtime)
    return json.loads(runs[-1].read_text())


def statuses(report: dict) -> dict:
    return {s["name"]: s["status"] for s in report["suites"]}


def test_item05_a_run_cut_off_in_its_first_suite_is_reported_as_not_passed(vm: Project) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the process group) while the first suite runs."""
    proc = subprocess.Popen([INVOKE, "vm.test", "--suite", "slow", "--suite", "later"], cwd=vm.root,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    log = None
    while time.monotonic() < deadline and log is None:
        found = list((vm.root / "vm" / "default" / "results").glob("*/slow.log"))
        if found and "slow started" in found[0].read_text():
            log = found[0]
        time.sleep(0.2)
    assert log is not None, "the suite never started"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads((log.parent / "report.json").read_text())
    assert report["passed"] is False and report["complete"] is False
    assert statuses(report) == {"slow": "error", "later": "not run"}
    assert "interrupted" in report["cut_off"]


def test_item05_a_sync_that_fails_still_writes_the_report(vm: Project) -> None:
    """rsync cannot make its folder under /proc: the sync fails before the quick suite runs."""
    vm.write_config(SUITES.replace("{guest_dir: work}", "{guest_dir: /proc/vmlab-cannot-be-here}")
                    + "quick: first\n")
    result = vm.invoke("vm.quick")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "did not run: the project could not be synced first" in result.stderr
    report = newest_report(vm)
    assert report["passed"] is False and statuses(report) == {"first": "error"}


def test_item05_a_failed_restore_on_failure_still_writes_the_report(vm: Project) -> None:
    """The restore after the failed privileged suite asks for a snapshot the VM lacks."""
    assert vm.invoke("vm.snapshot-delete", "--name", "clean").returncode == 0
    try:
        result = vm.invoke("vm.test", "--suite", "dirty", "--suite", "later", "--restore-on-failure")
        assert result.returncode != 0 and "no snapshot named 'clean'" in result.stderr
        report = newest_report(vm)
        assert report["passed"] is False and statuses(report) == {"dirty": "failed", "later": "not run"}
    finally:
        assert vm.invoke("vm.snapshot", "--name", "clean").returncode == 0


def test_item06_suites_exit_2_when_ssh_never_answers(vm: Project) -> None:
    """sshd stopped in the guest while QEMU runs, and the shared connection vmlab keeps open (a
    restore opens it) closed: test and sync did not finish (2), they did not fail (1). (The
    restore of 'clean' before the next test brings sshd back.)"""
    lab = vm.lab()
    with lab.vm().ssh() as session:
        assert session.run("systemctl stop ssh").ok
    lab.vm().close_connection()
    (vm.root / "vm" / "default" / "guest.json").unlink(missing_ok=True)  # so the run asks the guest first
    for args in (("vm.test", "--suite", "first"), ("vm.sync",)):
        result = vm.invoke(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "SSH" in result.stderr or "ssh" in result.stderr
    report = newest_report(vm)
    assert report["passed"] is False and statuses(report) == {"first": "not run"}


def in_guest(project: Project, command: str) -> str:
    result = project.invoke("vm.ssh", "-c", command)
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.strip()


def test_item09_a_restore_ends_a_suspension_so_its_old_state_never_comes_back(vm: Project) -> None:
    """Suspended, then restored to 'clean', then worked on and stopped: the next start boots
    the disk with that work on it, it does not resume the state saved at the suspend."""
    in_guest(vm, "touch /root/before-suspend")
    assert vm.invoke("vm.suspend").returncode == 0
    assert vm.lab().vm().vmdir.status().state == "suspended"
    assert vm.invoke("vm.restore", "--name", "clean").returncode == 0
    assert vm.lab().vm().vmdir.status().state == "running"
    in_guest(vm, "touch /root/after-restore && sync")
    assert vm.invoke("vm.stop").returncode == 0
    started = vm.invoke("vm.start")
    assert started.returncode == 0, started.stderr
    assert "resuming" not in started.stderr
    assert in_guest(vm, "test -e /root/after-restore && echo kept || echo lost") == "kept"
    assert in_guest(vm, "test -e /root/before-suspend && echo back || echo gone") == "gone"
    assert "suspend" not in vm.invoke("vm.snapshots").stdout


@pytest.fixture
def small_disk_project(project: Project, vm_ready):
    """A project whose vm/ folder is a 160 MiB tmpfs: room for the disk, not for a RAM snapshot."""
    state = project.root / "vm"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "vmlab-test", str(state)], check=True)
    try:
        yield project
    finally:
        from conftest import kill_vms
        kill_vms(project.root)
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_item08_a_failed_suspend_leaves_the_guest_running(small_disk_project: Project) -> None:
    project = small_disk_project
    project.write_config("vms:\n  default: {memory: 1100M}\n")  # a shape no golden image has: a boot, not a copy
    assert project.invoke("vm.start").returncode == 0
    in_guest(project, "head -c 400000000 /dev/urandom > /dev/shm/fill")  # RAM no snapshot can compress away
    failed = project.invoke("vm.suspend")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "could not save snapshot 'suspend'" in failed.stderr
    status = json.loads(project.invoke("vm.status", "--json").stdout)
    assert (status["state"], status["qemu_status"]) == ("running", "running")


def test_item12_no_image_is_built_just_to_prove_kvm(project: Project, tmp_path: Path, monkeypatch) -> None:
    """A DragonFly-only lab with an empty cache: the doctor says KVM is unproven (when it
    cannot be proven with what is at hand) and builds nothing; before, it built a whole
    Debian image (minutes of debootstrap) only for its kernel."""
    project.write_config("vms:\n  dragonfly: {profile: dragonfly}\n")
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("VMLAB_CACHE", str(cache))
    lab = Lab(config_mod.load(cwd=project.root))
    at_hand = lab.probe_kernel()  # the host's own /boot kernel, if it has one
    result = project.invoke("vm.doctor", env={"VMLAB_CACHE": str(cache)}, timeout=120)
    assert not list(cache.glob("debian-image/*")), "an image was built for the probe"
    accelerator = next(line for line in result.stdout.splitlines() if "accelerator" in line)
    if at_hand is None and os.path.exists("/dev/kvm"):
        assert "KVM is unproven: there is no Linux kernel at hand" in accelerator
