"""The rehearsal: a real unattended install over the serial console, end to end, under QEMU.

An install medium built offline from Debian packages (a GRUB menu on the serial
port whose countdown must be interrupted, a live system whose init runs the script
a pfi.conf on the seed CD names, as DragonFly's rc.d/pfi does, the system to
install) is installed onto a blank qcow2 by the same engine that installs
DragonFly, from a recipe folder of its own (vmlab/guests/rehearsal): nothing is
typed after the boot loader. The disk then boots with its own boot loader, is
provisioned over SSH, checked with the mount suite and snapshotted:
`vm.golden --from-scratch`.

The medium is cached by its inputs (building it takes ~100 s); the install, the
provisioning and the golden image are made afresh in a cache of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import Project, kill_vms
from vmlab import config, guests
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache
from vmlab.qemu.machine import ESCAPES


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory, vm_ready):
    profile = guests.load("rehearsal")
    medium = builder.ensure(ArtefactCache(config.default_cache_dir()), profile, "medium", {})
    root = tmp_path_factory.mktemp("rehearsal")
    cache = root / "cache"
    (cache / builder.kind(profile, "medium")).mkdir(parents=True)
    os.symlink(medium, cache / builder.kind(profile, "medium") / medium.name)
    project = Project(root)
    project.write_config(f"""
        vms:
          r: {{profile: rehearsal}}
        profiles:
          rehearsal: {{packages: [tree]}}
        cache_dir: {cache}
        """)
    made = project.invoke("vm.golden", "--from-scratch", timeout=3600)
    after = json.loads(project.invoke("vm.status", "--json").stdout)  # before any test starts the VM
    yield project, made, after
    kill_vms(root)


def test_golden_from_scratch_installs_provisions_verifies_and_snapshots(rehearsal) -> None:
    """Self-contained: vm.reset gives the VM a fresh copy of the golden image, whatever the
    other tests did with it, and a fresh copy starts by restoring its clean snapshot."""
    project, made, after = rehearsal
    assert made.returncode == 0, made.stderr[-3000:]
    for phase in ("installing from live.iso over the serial console", "installed in",
                  "installing what the config asks for (tree)",
                  "the mount suite passed (10 checks"):
        assert phase in made.stderr
    golden_dir = Path(made.stdout.strip().splitlines()[-1].split(": ", 1)[1])  # after the guest output
    assert after["state"] == "stopped"  # vm.golden left nothing running
    assert project.invoke("vm.stop").returncode == 0 and project.invoke("vm.reset", "--yes").returncode == 0
    started = project.invoke("vm.start")
    assert started.returncode == 0 and "restored to 'clean', not booted" in started.stderr
    assert all(oct((golden_dir / f).stat().st_mode & 0o777) == "0o444" for f in ("base.qcow2", "clean.qcow2"))
    assert [s["name"] for s in json.loads(project.invoke("vm.snapshots", "--json").stdout)["snapshots"]] == ["clean"]
    reports = [json.loads(p.read_text()) for p in (project.root / "vm" / "r" / "results").glob("*/report.json")]
    mounts = [s for r in reports for s in r["suites"] if s["name"] == "mounts"]
    assert mounts and mounts[0]["status"] == "passed" and mounts[0]["passed"] == 10
    assert project.invoke("vm.stop").returncode == 0


def test_the_install_ran_by_itself_after_the_boot_loader(rehearsal) -> None:
    project, made, _ = rehearsal
    raw = (project.root / "vm" / "r" / "install" / "console.log").read_text(errors="replace")
    # GRUB echoes each typed key with cursor moves, pads its countdown line at times ("executed
    # automatically  in 10s", seen in CI), and under load its serial output can repeat a character
    # ("will be execcuted", "Press enter tto boot": three test workers on two cores): a step's
    # characters are matched each once or repeated.
    transcript = re.sub(" {2,}", " ", ESCAPES.sub("", raw))
    steps = ["executed automatically in 10s", "grub> linux /live/vmlinuz", "console=ttyS0", "Starting pfi...",
             "Looking for pfi.conf on /dev/sr1... /dev/sr1 ok... found!", "vmlab-step: install the boot loader",
             "vmlab-step: done", "vmlab-install: exit 0"]
    found = [re.search("".join(re.escape(c) + "+" for c in step), transcript) for step in steps]
    positions = [m.start() if m else -1 for m in found]
    assert -1 not in positions, dict(zip(steps, positions))
    assert positions == sorted(positions)  # in that order
    assert "login:" not in transcript and "PS1=" not in transcript  # no login, no shell: nothing typed
    assert "install.sh, run by pfi" in made.stderr  # the step the engine watched


def test_the_installed_disk_boots_with_its_own_boot_loader(rehearsal) -> None:
    """Self-contained: the first start after `vm.golden` restores the fresh copy of the golden
    image, so it starts and stops once before the start it looks at, which must be a cold boot."""
    project, made, _ = rehearsal
    assert made.returncode == 0, made.stderr[-3000:]
    assert project.invoke("vm.start").returncode == 0  # whatever this start is (a restore, after vm.golden)
    assert project.invoke("vm.stop").returncode == 0
    began = time.monotonic()
    started = project.invoke("vm.start")  # a cold boot of the disk, not a restore
    assert started.returncode == 0, started.stderr
    assert "restored to 'clean', not booted" not in started.stderr
    assert "Booting `Debian (installed by vmlab)'" in (project.root / "vm" / "r" / "console.log").read_text(
        errors="replace")  # this boot's console (each launch starts a new console.log)
    uptime = project.invoke("vm.ssh", "-c", "cut -d' ' -f1 /proc/uptime")
    assert uptime.returncode == 0, uptime.stderr
    assert float(uptime.stdout) < time.monotonic() - began  # the kernel started after the command: a boot
    assert project.invoke("vm.ssh", "-c", "command -v tree").stdout.strip() == "/usr/bin/tree"  # provisioned
    assert project.invoke("vm.stop").returncode == 0


def test_install_as_a_task_finds_the_install_cached_and_does_not_redo_it(rehearsal) -> None:
    """`vm.install` after `vm.golden --from-scratch`: the installed disk is a checkpoint in the cache."""
    project, made, _ = rehearsal
    assert made.returncode == 0, made.stderr[-3000:]
    transcript = project.root / "vm" / "r" / "install" / "console.log"
    before = transcript.stat().st_mtime_ns
    installed = project.invoke("vm.install", timeout=300)
    assert installed.returncode == 0, installed.stderr
    folder = Path(installed.stdout.strip())
    assert folder.is_dir() and folder.parent == project.root / "cache" / "installed"
    assert "is cached" in installed.stderr
    assert transcript.stat().st_mtime_ns == before  # nothing was installed again
