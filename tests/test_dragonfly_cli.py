"""DragonFly the way a user reaches it: the CLI, its profile, a mirror, and QEMU.

No DragonFly mirror can be reached from here, and QEMU running DragonFly cannot
exist here. So the mirror is tests/httpserver.py on 127.0.0.1, laid out like a
DragonFly mirror (iso-images/<release>.iso.bz2 and a BSD md5.txt) and serving a
small made-up "ISO"; and QEMU is tests/fake_qemu.py, first in PATH under QEMU's
name, which plays the DragonFly simulator on the console socket with vmlab's real
seed ISO as its second CD. Everything else is real: the CLI, the download and its
checks, qemu-img, xorriso, the recipe engine, dash running install.sh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest

import dragonfly_guest
import dragonfly_stubs
from conftest import Project, prerequisite_missing
from dragonfly_mirror import ISO, config_for, fake_qemu_env, mirror_files
from httpserver import FileServer
from vmlab import config, doctor, guests, schema
from vmlab.install import recipe
from vmlab.lab import Lab, images

TESTS = Path(__file__).parent
DOCS = TESTS.parent / "docs" / "dragonfly.md"


@pytest.fixture
def mirror():
    with FileServer(mirror_files(1 << 20)) as server:
        yield server


@pytest.fixture
def dfly(project: Project, mirror: FileServer, tmp_path: Path) -> Project:
    project.write_config(config_for(mirror.url))
    return project


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Dict[str, str]:
    """PATH with tests/fake_qemu.py first, named qemu-system-x86_64."""
    return fake_qemu_env(tmp_path / "fake-bin")


@pytest.fixture
def played_guest() -> None:
    """Depend on this in a test whose guest boots after its install: dragonfly_guest.py plays it
    with the host's sshd (see prerequisite_problem); a missing part is a missing prerequisite."""
    problem = dragonfly_guest.prerequisite_problem()
    if problem:
        prerequisite_missing(problem)


def test_fetch_then_golden_key_prints_one_key(dfly: Project) -> None:
    fetched = dfly.invoke("vm.fetch", "--vm", "dfly")
    assert fetched.returncode == 0, fetched.stderr
    key = dfly.invoke("vm.golden-key", "--vm", "dfly")
    assert key.returncode == 0, key.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", key.stdout)  # what the CI workflow caches by


def test_the_golden_key_changes_when_install_sh_changes(dfly: Project, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0
    copy = tmp_path / "guests"
    shutil.copytree(schema.GUESTS_DIR, copy)
    monkeypatch.setattr(schema, "GUESTS_DIR", copy)
    monkeypatch.setattr(guests, "GUESTS_DIR", copy)

    def key() -> str:
        return images.golden_key(Lab(config.load(cwd=dfly.root)).vm("dfly"))

    before = key()
    install = copy / "dragonfly" / "install.sh"
    install.write_text(install.read_text() + "# one more line\n")
    assert key() != before


def test_install_through_the_cli_runs_install_sh_by_pfi(dfly: Project, fake_qemu: Dict[str, str]) -> None:
    assert dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0
    done = dfly.invoke("vm.install", "--vm", "dfly", env=fake_qemu, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"installing from {ISO}" in done.stderr and "installed in" in done.stderr
    assert "install.sh, run by PFI" in done.stderr  # the step, and its progress lines, logged
    log = (dfly.root / "vm" / "dfly" / "install" / "console.log").read_text()
    assert "Looking for pfi.conf on /dev/acd1...cd9660: RockRidge Extension\n /dev/acd1 ok... found!" in log
    assert "vmlab-install: exit 0" in log
    installed_key = next((dfly.root / "cache").glob("*/*/keys/id_ed25519.pub")).read_text()
    files = dfly.root / "vm" / "dfly" / "disk.qcow2.files"  # what install.sh wrote, in the simulation
    assert (files / "root" / ".ssh" / "authorized_keys").read_text() == installed_key  # from vmlab's seed CD
    assert not (dfly.root / "vm" / "dfly" / "install" / "qemu.pid").exists()  # powered off, nothing left


def test_the_config_can_name_the_root_shell_recipe_and_it_installs(dfly: Project, fake_qemu: Dict[str, str]) -> None:
    """`recipe: install-shell.yaml` (the fallback if PFI ever fails on a release) installs by typing at
    the live CD's root shell; its key differs from the PFI install's (the recipe is an input)."""
    config = dfly.root / "vmlab.yaml"
    pfi_key = dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0 and dfly.invoke("vm.golden-key", "--vm", "dfly")
    config.write_text(config.read_text().replace("mirrors: [", "recipe: install-shell.yaml, mirrors: ["))
    assert dfly.invoke("vm.golden-key", "--vm", "dfly").stdout != pfi_key.stdout
    done = dfly.invoke("vm.install", "--vm", "dfly", env=fake_qemu, timeout=300)
    assert done.returncode == 0, done.stderr
    log = (dfly.root / "vm" / "dfly" / "install" / "console.log").read_text()
    assert "sh /mnt/install.sh" in log and "vmlab-install: exit 0" in log
    wrong = config.read_text().replace("install-shell.yaml", "../../etc/passwd")
    config.write_text(wrong)
    refused = dfly.invoke("vm.golden-key", "--vm", "dfly")
    assert refused.returncode == 2 and "profiles.dragonfly.recipe" in refused.stderr


def test_a_failed_install_names_the_step_console_transcript_and_what_to_read(dfly: Project,
                                                                             fake_qemu: Dict[str, str]) -> None:
    assert dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0
    failed = dfly.invoke("vm.install", "--vm", "dfly", timeout=300,
                         env={**fake_qemu, "DFLY_FAIL": "newfs_hammer2:No space left on device"})
    assert failed.returncode == 1
    message = failed.stderr
    assert "step 'install.sh, run by PFI': the script ended with status 3" in message
    assert "install.sh: newfs_hammer2 vbd0s1d failed" in message  # the console's last lines
    transcript = dfly.root / "vm" / "dfly" / "install" / "console.log"
    assert f"Full transcript: {transcript}" in message and "newfs_hammer2: No space left" in transcript.read_text()
    section = re.search(r'docs/dragonfly\.md, section "([^"]+)"', message).group(1)
    assert f"## {section}" in DOCS.read_text()  # the section it names exists
    bundle = Path(re.search(r"^Diagnostics \(.*\): (.+)$", message, re.M).group(1))
    assert "newfs_hammer2 vbd0s1d failed" in (bundle / "install-console-tail.txt").read_text()
    # the whole console with its times, what was read and what was typed: tests/dragonfly_sim.py --replay plays it
    timed = [json.loads(line) for line in (bundle / "install-console.timed.jsonl").read_text().splitlines()]
    assert [e["t"] for e in timed] == sorted(e["t"] for e in timed) and {"in", "out"} <= {k for e in timed for k in e}
    assert "newfs_hammer2 vbd0s1d failed" in "".join(e.get("out", "") for e in timed)
    assert "console.timed.jsonl" in message
    assert not (dfly.root / "vm" / "dfly" / "install" / "qemu.pid").exists()


def test_doctor_names_the_iso_its_checksum_the_mirror_and_the_recipe(dfly: Project, mirror: FileServer) -> None:
    """What a report of a failed first install needs (docs/dragonfly.md, "A failed first install")."""
    assert "its ISO is not fetched yet" in doctor.installs(dfly.lab())[0].line()
    assert dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0
    line = doctor.installs(dfly.lab())[0].line()
    sha256 = hashlib.sha256((dfly.root / "cache" / "isos" / ISO).read_bytes()).hexdigest()
    assert f"ISO {ISO} sha256:{sha256} from {mirror.url}/iso-images/{ISO}.bz2" in line
    rec = guests.load("dragonfly")
    assert f"recipe install.yaml {recipe.load(rec.dir / 'install.yaml').version}" in line


def test_golden_from_scratch_through_the_cli(dfly: Project, fake_qemu: Dict[str, str], tmp_path: Path,
                                            played_guest: None) -> None:
    """`vm.golden --from-scratch` from a fetched ISO to a golden image, as a user runs it; then
    `vm.start` restores the image's 'clean' snapshot and sets the guest right.

    Mocked (tests/fake_qemu.py, tests/dragonfly_guest.py): QEMU and DragonFly. The
    install runs install.sh under dash with dragonfly_stubs; the installed files are
    kept in the real qcow2 (through the overlay, the flatten and the snapshot); the
    booted guest is the host's real sshd with the installed host key and root's
    authorized_keys, running each command chrooted into the installed files with
    DragonFly's stand-ins first in PATH (pkg acts on the installed files, uname says
    DragonFly, mounts are real Linux mounts in the session's own mount namespace);
    the 'clean' snapshot is written by `qemu-img snapshot -c` and holds no RAM, so
    loading it reverts the disk (`qemu-img snapshot -a`) and the guest boots from it.
    Real: the CLI, the download, qemu-img, xorriso, the recipe, SSH, install.sh,
    provision.sh and the mount suite."""
    config = dfly.root / "vmlab.yaml"
    # A cache folder named as users name theirs: the golden image's partial folder in it is deep.
    config.write_text(config.read_text().replace("mirrors: [", "packages: [python3, go], mirrors: [")
                      .replace("cache_dir: cache", "cache_dir: vmlab-image-cache"))
    assert dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0
    key = dfly.invoke("vm.golden-key", "--vm", "dfly").stdout.strip()
    done = dfly.invoke("vm.golden", "--from-scratch", "--vm", "dfly", env=fake_qemu, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    gold = dfly.root / "vmlab-image-cache" / "golden" / key
    manifest = json.loads((gold / "manifest.json").read_text())
    assert manifest["key"] == key and manifest["kind"] == "golden"  # the key `vm.golden-key` printed (CI caches by it)
    assert f"golden image {key} is ready" in done.stderr and sorted(manifest["files"]) == ["base.qcow2", "clean.qcow2"]
    # provision.sh ran the builders' pkg sequence over SSH, as root, and said so on the user's terminal
    out = done.stdout
    tolerated = out.index("provision.sh: pkg could not upgrade itself; going on")
    assert out.index("vmlab-step: update pkg's catalogue") < tolerated < out.index("[4/4] Installing go...")
    calls = (dfly.root / "vm" / "dfly" / "dragonfly-guest" / "world" / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("pkg ")] == ["pkg update -f", "pkg upgrade -y pkg",
                                                           "pkg install -y rsync doas python3 go"]
    # ... and what it installed is in the golden image's disk (read back from the qcow2 chain)
    files = tmp_path / "golden-files"
    assert dragonfly_guest.unpack(gold / "clean.qcow2", files)
    assert (files / "var/db/vmlab-stub-pkgs").read_text().split() == ["rsync", "doas", "python3", "go"]
    assert os.readlink(files / "etc/ssl/cert.pem") == "/usr/local/share/certs/ca-root-nss.crt"
    assert (files / "usr/local/etc/doas.conf").read_text() == "permit nopass lab as root\n"
    assert (files / "usr/local/etc/pkg/repos/df-latest.conf").is_file()  # put back after pkg's failed upgrade
    assert not (files / "var/tmp/vmlab-mount-suite").exists()  # the mount suite cleaned up after itself
    # the mount suite passed in the guest: every check, with real tmpfs limits, read-only trees and a busy umount
    results = Path(re.search(r"the mount suite passed \(10 checks, .*\); results in (\S+)", done.stderr).group(1))
    junit = (results / "mounts.junit.xml").read_text()
    assert 'tests="10" failures="0"' in junit and 'name="umount-retries-busy"' in junit
    assert "mount-suite on DragonFly 6.4-RELEASE" in out and "Device busy" in out
    # the 'clean' snapshot is in the golden image, as qemu-img lists it
    listed = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(gold / "clean.qcow2")], capture_output=True,
                            text=True, check=True).stdout
    assert re.search(r"^\d+\s+clean@1\s", listed, re.M), listed
    # vm.start now restores 'clean' and sets the guest right the DragonFly way (profile's after_restore)
    started = dfly.invoke("vm.start", "--vm", "dfly", env=fake_qemu, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    assert f"a fresh copy of golden image {key}: restored to 'clean', not booted" in started.stderr
    world = dragonfly_stubs.World(dfly.root / "vm" / "dfly" / "dragonfly-guest" / "world")
    assert re.fullmatch(rb"[0-9a-f]{128}", world.entropy())  # reached /dev/random while kern.seedenable was 1
    assert world.load()["sysctl"]["kern.seedenable"] == 0  # and set back
    ran = dfly.invoke("vm.ssh", "--vm", "dfly", "-c", "uname -sr", env=fake_qemu)
    assert ran.returncode == 0 and ran.stdout == "DragonFly 6.4-RELEASE\n", ran.stderr
    # a snapshot and a live restore of it: what the guest wrote since is gone
    assert dfly.invoke("vm.snapshot", "--name", "before", "--vm", "dfly", env=fake_qemu).returncode == 0
    assert dfly.invoke("vm.ssh", "--vm", "dfly", "-c", "echo x > /root/later", env=fake_qemu).returncode == 0
    restored = dfly.invoke("vm.restore", "--name", "before", "--vm", "dfly", env=fake_qemu, timeout=300)
    assert restored.returncode == 0, restored.stderr[-3000:]
    gone = dfly.invoke("vm.ssh", "--vm", "dfly", "-c", "test -e /root/later || echo gone", env=fake_qemu)
    assert gone.stdout == "gone\n", gone.stderr
    assert dfly.invoke("vm.stop", "--vm", "dfly", env=fake_qemu).returncode == 0
    # nothing left running: no QEMU, sshd or ssh control master of this project
    assert not (dfly.root / "vm" / "dfly" / "qemu.pid").exists() and not (dfly.root / "vm" / "dfly" / "golden").exists()
    left = subprocess.run(["pgrep", "-af", str(dfly.root)], capture_output=True, text=True).stdout
    assert not left, left


def test_a_failed_provision_says_what_pkg_said_and_the_next_golden_reuses_the_install(
        dfly: Project, fake_qemu: Dict[str, str], played_guest: None) -> None:
    """A dead package mirror fails `vm.golden` in provision.sh with pkg's own words; the install it
    made is a cached checkpoint, so the next `vm.golden --from-scratch` does not install again.
    Mocked as in the test above; the fault is the pkg stand-in failing with pkg's message."""
    assert dfly.invoke("vm.fetch", "--vm", "dfly").returncode == 0
    why = "https://mirror-master.dragonflybsd.org/dports/dragonfly:6.4:x86:64/LATEST/meta.conf: Authentication error"
    failed = dfly.invoke("vm.golden", "--from-scratch", "--vm", "dfly", env={**fake_qemu, "DFLY_FAIL": f"pkg:{why}"},
                         timeout=600)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "VM dfly: provisioning failed (provision.sh, exit 3); `invoke vm.provision --vm dfly` tries again" \
        in failed.stderr
    assert f"pkg: {why}" in failed.stderr and "provision.sh: pkg update failed (its output is above)" in failed.stderr
    assert not list((dfly.root / "cache" / "golden").glob("*/manifest.json"))
    assert "VM dfly: stopping it (it was booted for the golden image)" in failed.stderr  # as building.py promises
    left = subprocess.run(["pgrep", "-af", str(dfly.root)], capture_output=True, text=True).stdout
    assert not left, left
    again = dfly.invoke("vm.golden", "--from-scratch", "--vm", "dfly", env=fake_qemu, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "install" in again.stderr and "is cached" in again.stderr and "installing from" not in again.stderr
    assert "golden image" in again.stderr and "is ready" in again.stderr
    left = subprocess.run(["pgrep", "-af", str(dfly.root)], capture_output=True, text=True).stdout
    assert not left, left
