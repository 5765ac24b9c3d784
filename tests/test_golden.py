"""Golden images on a real guest: never written after they are made, cloned by restoring, portable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import INVOKE, Project
from vmlab import config as config_mod
from vmlab import golden
from vmlab.cache import sha256_file
from vmlab.lab import Lab


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
    gold = lab.golden_of(lab.vm())
    assert gold is not None
    return gold.dir


def fingerprint(folder: Path) -> dict:
    return {name: (sha256_file(folder / name), oct((folder / name).stat().st_mode & 0o777))
            for name in golden.FROZEN}


def ssh(project: Project, vm: str, command: str) -> subprocess.CompletedProcess:
    return project.invoke("vm.ssh", "--vm", vm, "-c", command)


def test_golden_files_survive_restore_reset_destroy_and_clones(lab_with_golden: Project) -> None:
    project = lab_with_golden
    folder = golden_dir(project)
    before = fingerprint(folder)
    assert all(mode == "0o444" for _, mode in before.values())

    assert ssh(project, "default", "echo work > /root/work").returncode == 0
    assert project.invoke("vm.restore").returncode == 0
    assert ssh(project, "default", "test -e /root/work").returncode == 1
    assert project.invoke("vm.reset", "--yes").returncode == 0
    assert project.invoke("vm.start").returncode == 0

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
    boot_ids = {ssh(project, n, "cat /proc/sys/kernel/random/boot_id").stdout for n in ("w1", "w2")}
    assert len(boot_ids) == 1
    assert ssh(project, "w1", "echo mine > /root/mine").returncode == 0
    assert ssh(project, "w2", "test -e /root/mine").returncode == 1

    assert project.invoke("vm.destroy", "--yes", "--vm", "w1").returncode == 0
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


def test_golden_key_follows_what_made_it(tmp_path: Path) -> None:
    def key(text: str) -> str:
        (tmp_path / "vmlab.yaml").write_text(text)
        lab = Lab(config_mod.load(cwd=tmp_path))
        return golden.golden_key(lab.golden_inputs(lab.vm()))

    base = key("defaults: {memory: 1G}\n")
    assert key("defaults: {memory: 1024}\n") == base  # the same machine, spelled differently
    assert key("defaults: {memory: 2G}\n") != base  # a snapshot needs the same RAM size
    assert key("defaults: {memory: 1G}\nprofiles:\n  debian: {suite: trixie}\n") != base
    assert key("defaults: {memory: 1G, disk_size: 20G}\n") == base  # not part of the image


def test_a_name_that_is_neither_configured_nor_a_clone_is_refused(project: Project) -> None:
    project.write_config("defaults: {memory: 999}\n")  # no golden image has this shape
    result = project.invoke("vm.start", "--vm", "w9")
    assert result.returncode == 2
    assert "no VM named 'w9'" in result.stderr and "invoke vm.golden" in result.stderr
    assert not (project.root / "vm" / "w9").exists()
