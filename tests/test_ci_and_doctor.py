"""The CI example lints clean, the golden key follows what made it, and vm.doctor tells the truth."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import Project, alive, prerequisite_missing
from test_accel import kvm_boots_linux
from vmlab import config, doctor, guests, schema
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache
from vmlab.lab import Lab, images
from vmlab.qemu import accel
from vmlab.qemu.qmp import Monitor

ROOT = Path(__file__).parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "vm-tests.yml"


def actionlint(workflow: Path) -> Tuple[int, List[Tuple[int, str]]]:
    """actionlint's exit code on `workflow`, and its findings as (line, kind)."""
    done = subprocess.run([str(Path(sys.executable).parent / "actionlint"), "-oneline", str(workflow)],
                          capture_output=True, text=True)
    return done.returncode, [(int(line), kind) for line, kind in
                             re.findall(r"^.*?:(\d+):\d+: .* \[([a-z-]+)\]$", done.stdout, re.MULTILINE)]


@pytest.mark.parametrize("old, new, kind", [
    ("runs-on:", "runs_on:", "syntax-check"),  # a key GitHub does not know (and runs-on missing)
    ("steps.suites.outputs.matrix", "steps.suite.outputs.matrix", "expression"),  # a step that does not exist
    ('--json)" >>', '--json" >>', "shellcheck"),  # a run: script that does not parse
    ("actions/checkout@v5", "actions/checkout@v4", "action"),  # node20's, which GitHub's runners no longer have
])
def test_the_workflow_lints_clean_and_a_mistake_in_a_copy_is_found_at_its_line(tmp_path: Path, old: str, new: str,
                                                                               kind: str) -> None:
    """The gate (scripts/test) runs actionlint on the workflow users copy: it must pass there, and
    the checker must catch each kind of mistake, at its line, in a copy with one planted."""
    if kind == "shellcheck" and not shutil.which("shellcheck"):
        prerequisite_missing("shellcheck, which actionlint runs on run: scripts (python3 -m vmlab.host --install "
                             "--tests installs it)")
    assert actionlint(WORKFLOW) == (0, [])
    text = WORKFLOW.read_text()
    line = text[:text.index(old)].count("\n") + 1
    broken = tmp_path / "vm-tests.yml"
    broken.write_text(text.replace(old, new, 1))
    code, findings = actionlint(broken)
    assert code == 1 and (line, kind) in findings, findings


def test_every_task_the_workflow_runs_exists() -> None:
    listing = subprocess.run([str(Path(sys.executable).parent / "vmlab"), "--list"], cwd=ROOT, capture_output=True,
                             text=True).stdout
    used = set(re.findall(r"(?:\$VMLAB|\.venv/bin/vmlab) ([a-z-]+)", WORKFLOW.read_text()))
    assert {"suites", "golden-key", "golden", "test"} <= used
    assert used <= set(re.findall(r"^  ([a-z][a-z-]*)", listing, re.MULTILINE))


@pytest.fixture
def guests_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of vmlab/guests, so that a test may change a recipe's script."""
    copy = tmp_path / "guests"
    shutil.copytree(schema.GUESTS_DIR, copy)
    monkeypatch.setattr(schema, "GUESTS_DIR", copy)
    monkeypatch.setattr(guests, "GUESTS_DIR", copy)
    return copy


def test_golden_key_changes_with_a_recipe_script_and_not_with_unrelated_files(guests_copy: Path,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "vmlab.yaml").write_text("vms:\n  r: {profile: rehearsal}\n")

    def key() -> str:
        lab = Lab(config.load(cwd=tmp_path))
        return images.golden_key(lab.vm())

    before = key()
    (guests_copy / "rehearsal" / "NOTES.md").write_text("an unrelated file\n")
    (tmp_path / "README.md").write_text("the project changed\n")
    assert key() == before
    install = guests_copy / "rehearsal" / "install.sh"
    install.write_text(install.read_text() + "# one more line\n")
    after = key()
    assert after != before
    provision = guests_copy / "debian" / "provision.sh"  # the rehearsal provisions with it
    provision.write_text(provision.read_text() + "# changed\n")
    assert key() not in (before, after)


def test_doctor_names_the_kvm_situation_and_passes_here(project: Project, vm_ready) -> None:
    """Checked against what KVM really does with the test guest's kernel (test_accel's ground
    truth, QEMU run directly), not against the verdict vm.doctor itself saved."""
    result = project.invoke("vm.doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if " accelerator " in line)
    if accel.kvm_usable() is not None:
        assert "no KVM" in line
    else:
        kernel = builder.ensure(ArtefactCache(config.default_cache_dir()), guests.load("debian"), "image", {})
        boots = kvm_boots_linux(kernel / "vmlinuz")
        assert ("KVM works" in line) == boots, line
        assert ("does not boot a kernel on this host" in line) == (not boots), line


def test_doctor_without_qemu_img_exits_2_with_the_fix(project: Project, tmp_path: Path, vm_ready) -> None:
    """PATH holds every tool vmlab uses but qemu-img (links in a folder of the test's own)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-system-x86_64", "ssh", "rsync", "xorriso", "grub-mkrescue"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    result = project.invoke("vm.doctor", env={"PATH": f"{bin_dir}:{Path(sys.executable).parent}"})
    assert result.returncode == 2
    assert "FAIL host         qemu-img is missing" in result.stdout
    assert "fix: apt-get install qemu-utils" in result.stdout
    assert "problem(s) found" in result.stderr


def test_doctor_finds_a_paused_guest_and_a_crashed_vm_with_their_fixes(project: Project, vm_ready) -> None:
    """The guest is paused through QEMU's own QMP socket (as a stuck restore leaves it), then
    QEMU is killed (SIGKILL, as the OOM killer does): each is a failure with its fix, exit 1."""
    project.write_config("vms:\n  default: {}\n")
    assert project.invoke("vm.start").returncode == 0
    machine = project.lab().vm().machine
    with Monitor(machine.qmp_socket) as mon:
        mon.command("stop")
    paused = project.invoke("vm.doctor")
    assert paused.returncode == 1, paused.stdout + paused.stderr
    assert "FAIL vm default   QEMU runs but the guest is paused" in paused.stdout
    assert "fix: invoke vm.restore --vm default, or vm.stop and vm.start" in paused.stdout
    pid = machine.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.05)
    crashed = project.invoke("vm.doctor")
    assert crashed.returncode == 1, crashed.stdout + crashed.stderr
    assert re.search(r"^FAIL vm default ", crashed.stdout, re.M)
    assert "fix: invoke vm.start --vm default (it cleans up), or vm.destroy" in crashed.stdout
    assert "1 problem(s) found" in crashed.stderr


def test_doctor_names_too_little_memory(project: Project) -> None:
    project.write_config("vms:\n  default: {memory: 4096G}\n")
    result = project.invoke("vm.doctor")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^FAIL memory .* the largest VM wants 4096\.0 GiB$", result.stdout, re.M), result.stdout
    assert "fix: stop other VMs (invoke vm.status) or lower 'memory' in vmlab.yaml" in result.stdout


@pytest.fixture
def small_state_disk(project: Project, request: pytest.FixtureRequest):
    """The project's vm/ folder on a tmpfs of the size the test names (a limit, not memory
    taken), unmounted at the end whatever happened. The cache is put on it too (VMLAB_CACHE)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = project.root / "vm"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", "vmlab-doctor-test", str(state)],
                   check=True)
    try:
        yield project
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def doctor_on(project: Project) -> subprocess.CompletedProcess:
    """vm.doctor with the cache on the vm/ tmpfs, and no KVM device (so no accelerator probe runs)."""
    project.write_config("vms:\n  default: {memory: 256}\n")
    return project.invoke("vm.doctor", env={"VMLAB_CACHE": str(project.root / "vm" / "cache"),
                                            "VMLAB_KVM_DEVICE": str(project.root / "no-kvm")}, timeout=120)


def disk_lines(result: subprocess.CompletedProcess) -> list:
    return [line for line in result.stdout.splitlines() if line[5:].startswith("disk ")]


@pytest.mark.parametrize("small_state_disk", ["16m", f"{(doctor.MIN_FREE_DISK >> 10) - 4}k"], indirect=True,
                         ids=["16MiB", "10GiB-less-a-page"])
def test_doctor_with_little_free_disk_names_it_with_the_fix_and_exits_2(small_state_disk: Project) -> None:
    project = small_state_disk
    result = doctor_on(project)
    assert result.returncode == 2, result.stdout + result.stderr
    state, cache = project.root / "vm", project.root / "vm" / "cache"
    lines = disk_lines(result)
    assert len(lines) == 2, result.stdout
    assert re.fullmatch(rf"FAIL disk +\d+\.\d GiB free where vm/ lives \({re.escape(str(state))}\)", lines[0])
    assert re.fullmatch(rf"FAIL disk +\d+\.\d GiB free where cache lives \({re.escape(str(cache))}\)", lines[1])
    shown = [float(line.split()[2]) for line in lines]
    assert all(gib < doctor.MIN_FREE_DISK / 2**30 for gib in shown), lines  # never "10.0 GiB free" and FAIL
    fix = "fix: free space there (vmlab wants 10 GiB), or prune the cache: invoke vm.cache --prune"
    assert result.stdout.count(fix) == 2
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failing == lines  # exit 2 is the disk's: nothing else failed
    assert "2 problem(s) found" in result.stderr


@pytest.mark.parametrize("small_state_disk", [f"{doctor.MIN_FREE_DISK >> 10}k"], indirect=True, ids=["10GiB"])
def test_doctor_with_enough_free_disk_says_ok(small_state_disk: Project) -> None:
    """The same tmpfs, as big as vmlab wants: both lines ok, exit 0."""
    result = doctor_on(small_state_disk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[:2] for line in disk_lines(result)] == [["ok", "disk"], ["ok", "disk"]], result.stdout
    assert "10.0 GiB free where vm/ lives" in result.stdout
