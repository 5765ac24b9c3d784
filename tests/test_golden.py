"""Golden images on a real guest: never written after they are made, cloned by restoring, portable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import INVOKE, Project, alive, qemu_processes
from vmlab import config as config_mod
from vmlab.errors import ImageBuildError
from vmlab.images import golden
from vmlab.images.cache import sha256_file
from vmlab.lab import Lab, images


@pytest.fixture(scope="module")
def lab_with_golden(shared_project: Project, vm_ready) -> Project:
    made = shared_project.invoke("vm.golden")
    assert made.returncode == 0, made.stderr
    assert json.loads(shared_project.invoke("vm.status", "--json").stdout)["state"] == "stopped"
    started = shared_project.invoke("vm.start")
    assert started.returncode == 0 and "restored to 'clean', not booted" in started.stderr
    return shared_project


def golden_dir(project: Project) -> Path:
    lab = project.lab()
    gold = images.golden_of(lab.vm())
    assert gold is not None
    return gold.dir


def fingerprint(folder: Path) -> dict:
    return {name: (sha256_file(folder / name), oct((folder / name).stat().st_mode & 0o777))
            for name in golden.FROZEN}


def ssh(project: Project, vm: str, command: str) -> subprocess.CompletedProcess:
    return project.invoke("vm.ssh", "--vm", vm, "-c", command)


def file_in(project: Project, vm: str, path: str) -> str:
    """'present' or 'absent', read from words: vm.ssh also exits 1 when SSH itself fails."""
    result = ssh(project, vm, f"test -e {path} && echo present || echo absent")
    assert result.returncode == 0 and result.stdout.strip() in ("present", "absent"), result.stdout + result.stderr
    return result.stdout.strip()


def test_golden_files_survive_restore_reset_destroy_and_clones(lab_with_golden: Project) -> None:
    project = lab_with_golden
    folder = golden_dir(project)
    before = fingerprint(folder)
    assert all(mode == "0o444" for _, mode in before.values())

    assert ssh(project, "default", "echo work > /root/work").returncode == 0
    assert project.invoke("vm.restore").returncode == 0
    assert file_in(project, "default", "/root/work") == "absent"
    assert ssh(project, "default", "echo before > /root/before-reset; sync").returncode == 0
    assert project.invoke("vm.reset", "--yes").returncode == 0
    assert project.invoke("vm.start").returncode == 0
    assert file_in(project, "default", "/root/before-reset") == "absent"  # the reset threw the disk away

    clones = [subprocess.Popen([INVOKE, "vm.start", "--vm", name], cwd=project.root, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("w1", "w2")]
    for proc in clones:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "restored to 'clean', not booted" in err
    ports = {json.loads(project.invoke("vm.status", "--json", "--vm", n).stdout)["ssh_port"] for n in ("w1", "w2")}
    assert len(ports) == 2
    names = [ssh(project, n, "hostname").stdout.strip() for n in ("w1", "w2")]
    assert names == ["w1", "w2"]
    # both run the RAM of the same snapshot: one kernel boot, shared; two cold boots would differ
    boot_ids = {ssh(project, n, "cat /proc/sys/kernel/random/boot_id").stdout.strip() for n in ("w1", "w2")}
    assert len(boot_ids) == 1 and re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", *boot_ids)
    assert ssh(project, "w1", "echo mine > /root/mine").returncode == 0
    assert file_in(project, "w1", "/root/mine") == "present"
    assert file_in(project, "w2", "/root/mine") == "absent"

    w1_pid = json.loads(project.invoke("vm.status", "--json", "--vm", "w1").stdout)["pid"]
    assert alive(w1_pid)
    assert project.invoke("vm.destroy", "--yes", "--vm", "w1").returncode == 0
    assert not alive(w1_pid) and not (project.root / "vm" / "w1").exists()  # a running VM: stopped, then gone
    assert project.invoke("vm.reset", "--yes", "--vm", "w2").returncode == 0
    for name in ("default", "w2"):
        project.invoke("vm.stop", "--vm", name)
    assert fingerprint(folder) == before


def test_export_import_round_trip_and_damage(lab_with_golden: Project, tmp_path: Path) -> None:
    project = lab_with_golden
    archive = tmp_path / "golden.tar"
    exported = project.invoke("vm.golden-export", "--output", str(archive))
    assert exported.returncode == 0, exported.stderr
    fresh_cache = tmp_path / "other-machine-cache"
    imported = project.invoke("vm.golden-import", "--input", str(archive), env={"VMLAB_CACHE": str(fresh_cache)})
    assert imported.returncode == 0, imported.stderr
    key = golden_dir(project).name
    assert fingerprint(fresh_cache / "golden" / key) == fingerprint(golden_dir(project))

    damaged = tmp_path / "damaged.tar"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    other = tmp_path / "third-machine-cache"
    refused = project.invoke("vm.golden-import", "--input", str(damaged), env={"VMLAB_CACHE": str(other)})
    assert refused.returncode == 1
    assert "the export is damaged; nothing was imported" in refused.stderr
    assert not list((other / "golden").glob("*/manifest.json"))


def test_item07_a_clone_started_as_a_non_root_user_is_set_right_and_a_failed_start_stays_fresh(
        lab_with_golden: Project) -> None:
    """Issue 16, item 7. The after-restore step (clock, randomness, name) runs as root even when
    vmlab logs in as `lab`; and a start that fails after QEMU started stops QEMU and leaves the
    copy fresh (so no work is ever done on a disk the next start would throw away)."""
    project = lab_with_golden
    as_lab = project.root / "as-lab.yaml"
    as_lab.write_text("vms:\n  default: {ssh_user: lab}\n")
    started = project.invoke("vm.start", "--vm", "w5", "--config", str(as_lab))
    assert started.returncode == 0, started.stderr
    assert "restored to 'clean', not booted" in started.stderr
    clock = project.invoke("vm.ssh", "--vm", "w5", "--config", str(as_lab), "-c", "id -un; date +%s")
    user, seconds = clock.stdout.split()
    assert user == "lab" and abs(int(seconds) - time.time()) < 5  # the snapshot's clock was set forward
    assert json.loads(project.invoke("vm.status", "--json", "--vm", "w5").stdout)["origin"] == "golden"
    assert project.invoke("vm.destroy", "--yes", "--vm", "w5").returncode == 0

    # a start that fails after QEMU started: the guest has no such user, so SSH never lets vmlab in
    refused = project.root / "refused.yaml"
    refused.write_text("vms:\n  default: {ssh_user: nosuchuser, boot_timeout: 5}\n")
    failed = project.invoke("vm.start", "--vm", "w6", "--config", str(refused))
    assert failed.returncode == 1 and "did not answer within 5s" in failed.stderr, failed.stderr
    assert "the guest does not accept this lab's key" in failed.stderr
    assert not qemu_processes(project.root / "vm" / "w6")
    assert json.loads((project.root / "vm" / "w6" / "disk.json").read_text())["fresh"] is True
    again = project.invoke("vm.start", "--vm", "w6")
    assert again.returncode == 0 and "restored to 'clean', not booted" in again.stderr
    assert project.invoke("vm.destroy", "--yes", "--vm", "w6").returncode == 0


def test_item14_setup_of_a_vm_made_from_a_golden_image_says_where_its_disk_came_from(
        lab_with_golden: Project) -> None:
    project = lab_with_golden
    result = project.invoke("vm.setup", "--vm", "w7")
    assert result.returncode == 0, result.stderr
    assert f"golden: {golden_dir(project)}" in result.stdout
    assert project.invoke("vm.destroy", "--yes", "--vm", "w7").returncode == 0


def test_golden_key_follows_what_made_it(tmp_path: Path) -> None:
    def key(text: str) -> str:
        (tmp_path / "vmlab.yaml").write_text(text)
        lab = Lab(config_mod.load(cwd=tmp_path))
        return images.golden_key(lab.vm())

    base = key("defaults: {memory: 1G}\n")
    assert key("defaults: {memory: 1024}\n") == base  # the same machine, spelled differently
    assert key("defaults: {memory: 2G}\n") != base  # a snapshot needs the same RAM size
    assert key("defaults: {memory: 1G}\nprofiles:\n  debian: {suite: trixie}\n") != base


def test_item15_vms_of_other_disk_sizes_do_not_share_a_golden_image(tmp_path: Path) -> None:
    """Issue 16, item 15: a copy of a golden image has the size the image was made with, so
    an 8G and a 40G VM must not find each other's golden image."""
    def key(size: str) -> str:
        (tmp_path / "vmlab.yaml").write_text(f"defaults: {{disk_size: {size}}}\n")
        return images.golden_key(Lab(config_mod.load(cwd=tmp_path)).vm())

    assert key("8G") == key("8192M")  # the same size, spelled differently
    assert key("8G") != key("40G")


def test_a_name_that_is_neither_configured_nor_a_clone_is_refused(project: Project) -> None:
    project.write_config("defaults: {memory: 999}\n")  # no golden image has this shape
    result = project.invoke("vm.start", "--vm", "w9")
    assert result.returncode == 2
    assert "no VM named 'w9'" in result.stderr and "invoke vm.golden" in result.stderr
    assert not (project.root / "vm" / "w9").exists()


def test_a_qemu_img_failure_during_a_golden_build_is_vmlabs_error_with_the_command(tmp_path: Path) -> None:
    """The VM disk handed to golden.make is not a qcow2 (as after a crash that left garbage):
    the real qemu-img refuses it, and vmlab says so with the command and qemu-img's words,
    and publishes nothing."""
    from vmlab.errors import CommandFailed
    from vmlab.images.cache import ArtefactCache
    from vmlab.remote.keys import ensure

    broken = tmp_path / "disk.qcow2"
    broken.write_bytes(b"not an image" * 1000)
    cache = ArtefactCache(tmp_path / "cache")
    with pytest.raises(CommandFailed) as failed:
        golden.make(cache, "0123456789abcdef", {}, broken, {}, ensure(tmp_path / "keys", "test"),
                    lambda clean: pytest.fail("no snapshot is taken of a golden image that was never made"))
    message = str(failed.value)
    assert "qemu-img convert -f qcow2 -O qcow2" in message and "exited with status 1" in message
    assert "Image is not in qcow2 format" in message
    assert not cache.has(golden.KIND, "0123456789abcdef")
    assert not list((tmp_path / "cache" / "golden").glob(".*partial"))


def test_clone_of_names_the_vm_whose_golden_image_a_new_vm_starts_from(lab_with_golden: Project) -> None:
    """A new name clones the config's first VM; --clone-of names another. Here the first VM
    (`big`) has no golden image, so without --clone-of the name is refused."""
    project = lab_with_golden
    two = project.root / "two-vms.yaml"
    two.write_text("vms:\n  big: {memory: 999}\n  default: {}\n")
    guessed = project.invoke("vm.start", "--vm", "c1", "--config", str(two))
    assert guessed.returncode == 2 and "no VM named 'c1'" in guessed.stderr, guessed.stderr
    assert "starts a clone of VM 'big'" in guessed.stderr and not (project.root / "vm" / "c1").exists()
    started = project.invoke("vm.start", "--vm", "c1", "--clone-of", "default", "--config", str(two))
    assert started.returncode == 0, started.stderr
    assert "restored to 'clean', not booted" in started.stderr
    try:
        status = json.loads(project.invoke("vm.status", "--json", "--vm", "c1", "--config", str(two)).stdout)
        assert status["state"] == "running" and status["origin"] == "golden"
        name = project.invoke("vm.ssh", "--vm", "c1", "--config", str(two), "-c", "hostname")
        assert name.stdout.strip() == "c1"  # set right after the restore
        again = project.invoke("vm.stop", "--vm", "c1", "--config", str(two))
        assert again.returncode == 0
        restarted = project.invoke("vm.start", "--vm", "c1", "--config", str(two))  # remembered as a clone
        assert restarted.returncode == 0, restarted.stderr
    finally:
        assert project.invoke("vm.destroy", "--yes", "--vm", "c1", "--config", str(two)).returncode == 0


# --- verify: a golden image whose files changed after it was made is refused ---


@pytest.fixture
def small_golden(project: Project) -> golden.Golden:
    """A golden image made by golden.make from a small real qcow2 in the project's own cache
    (test_hostile_inputs.make_golden). Not real: its 'clean' snapshot (taking one boots a
    guest) and its kernel (a few bytes); verify reads only the files' bytes and the manifest."""
    from test_hostile_inputs import make_golden

    gold = make_golden(project, project.root / "cache")
    return gold


def export_of(project: Project, out: Path) -> subprocess.CompletedProcess:
    """vm.golden-export verifies the image first: the CLI path a user takes with a golden image."""
    return project.invoke("vm.golden-export", "--output", str(out), env={"VMLAB_CACHE": str(project.root / "cache")})


def refused(result: subprocess.CompletedProcess, *names: Path) -> str:
    """The CLI's one-line error (exit 1, no traceback), naming each of `names`."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("vmlab: error: "), result.stderr
    for name in names:
        assert str(name) in result.stderr, result.stderr
    return result.stderr


def flip_a_byte(path: Path, where: int) -> None:
    """Change one byte in place: same file (inode), same size. The files are mode 0444; root
    writes them anyway (a user would chmod first)."""
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, where)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), where)
    finally:
        os.close(fd)


def test_verify_passes_an_untouched_golden_image_and_records_it(small_golden: golden.Golden, project: Project,
                                                                 tmp_path: Path) -> None:
    gold = small_golden
    gold.verify()
    assert set(json.loads((gold.dir / golden.VERIFIED).read_text())) == set(golden.FROZEN)
    gold.verify()  # from the record: still passes
    gold.new_disk(tmp_path / "clone.qcow2")
    assert (tmp_path / "clone.qcow2").is_file()
    result = export_of(project, tmp_path / "g.tar")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.tar").is_file()


def test_verify_replaces_a_link_planted_as_its_record_and_never_writes_through_it(small_golden: golden.Golden,
                                                                                   tmp_path: Path) -> None:
    """verify()'s record of what it checked is written whole under a new name and renamed over
    (vmlab/records.py): a symbolic link put in its place is replaced, the file it points to is
    untouched. (It was written with write_text, which followed the link and overwrote the file.)"""
    victim = tmp_path / "victim.txt"
    victim.write_text("not vmlab's\n")
    (small_golden.dir / golden.VERIFIED).symlink_to(victim)
    small_golden.verify()
    assert victim.read_text() == "not vmlab's\n"
    record = small_golden.dir / golden.VERIFIED
    assert not record.is_symlink() and set(json.loads(record.read_text())) == set(golden.FROZEN)


def test_a_clone_cut_off_while_it_is_made_leaves_no_disk(small_golden: golden.Golden, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the copy of clean.qcow2, before its rebase. Not real: the interruption,
    raised from the rebase (a real SIGINT cannot be timed to land there); the copy is real.
    Neither the disk (a later start would trust it) nor its half-made copy may stay."""
    def interrupted(image: Path, base: Path) -> None:
        assert image.stat().st_size > 0  # the copy is there, under its temporary name
        raise KeyboardInterrupt

    monkeypatch.setattr(golden.disk, "rebase_in_place", interrupted)
    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        small_golden.new_disk(vmdir / "disk.qcow2")
    assert list(vmdir.iterdir()) == []


@pytest.mark.parametrize("name", golden.FROZEN)
def test_a_changed_byte_in_a_golden_file_is_refused_naming_it(small_golden: golden.Golden, project: Project,
                                                               tmp_path: Path, name: str) -> None:
    """verify() ran before the change, so verified.json holds a record of the untouched file:
    the record must not hide the change (the write moved the file's mtime)."""
    gold = small_golden
    gold.verify()
    path = gold.dir / name
    flip_a_byte(path, path.stat().st_size // 2)
    with pytest.raises(ImageBuildError) as failed:
        gold.verify()
    assert f"golden image {path} was modified" in str(failed.value)
    clone = tmp_path / "clone.qcow2"
    with pytest.raises(ImageBuildError):
        gold.new_disk(clone)
    assert list(tmp_path.glob("*clone*")) == []  # no disk made from it, nor a half-made one
    refused(export_of(project, tmp_path / "g.tar"), path)
    assert not (tmp_path / "g.tar").exists()


def test_an_edit_that_keeps_size_mtime_and_inode_is_still_refused(small_golden: golden.Golden,
                                                                   project: Project, tmp_path: Path) -> None:
    """A byte changed in place and the mtime put back (what `touch -r`, `cp -p` onto the file or
    `rsync --inplace -t` do): size, mtime and inode are as verify() recorded them; only the
    ctime, which no user can set, moved."""
    gold = small_golden
    gold.verify()
    path = gold.dir / "base.qcow2"
    before = path.stat()
    flip_a_byte(path, before.st_size // 2)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    with pytest.raises(ImageBuildError) as failed:
        gold.verify()
    assert f"golden image {path} was modified" in str(failed.value)
    refused(export_of(project, tmp_path / "g.tar"), path)


def edit_manifest(gold: golden.Golden, change) -> Path:
    path = gold.dir / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text())), indent=2) + "\n")
    return path


@pytest.mark.parametrize("what, change", [
    ("a recorded sha256", lambda m: dict(m, files=dict(m["files"], **{"clean.qcow2": "0" * 64}))),
    ("the inputs", lambda m: dict(m, inputs=dict(m["inputs"], memory_mib=m["inputs"]["memory_mib"] * 2))),
    ("the key", lambda m: dict(m, key="0123456789abcdef")),
], ids=["digest", "inputs", "key"])
def test_an_edited_manifest_is_refused_naming_it(small_golden: golden.Golden, project: Project, tmp_path: Path,
                                                 what: str, change) -> None:
    """The image files are untouched and verify() recorded them as checked: the record must not
    make an edited manifest pass (an export of it would carry the edit to another machine,
    whose import refuses it as damaged)."""
    gold = small_golden
    gold.verify()
    manifest = edit_manifest(gold, change)
    with pytest.raises(ImageBuildError) as failed:
        gold.verify()
    assert str(manifest) in str(failed.value), what
    refused(export_of(project, tmp_path / "g.tar"), manifest)
    assert not (tmp_path / "g.tar").exists()


def test_a_manifest_that_is_not_json_is_refused_naming_it(small_golden: golden.Golden, project: Project,
                                                          tmp_path: Path) -> None:
    """Cut short, as a full disk or a crash mid-edit leaves it: one line naming it, not a traceback."""
    gold = small_golden
    gold.verify()
    manifest = gold.dir / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(ImageBuildError) as failed:
        gold.verify()
    assert str(manifest) in str(failed.value)
    refused(export_of(project, tmp_path / "g.tar"), manifest)
