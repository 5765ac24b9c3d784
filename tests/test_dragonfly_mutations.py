"""Mistakes the DragonFly install has made or could make, each put back into a copy of the guest's
folder and caught by what the simulated DragonFly does with it, never by reading the recipe's text.

No DragonFly can run here: the serial console is tests/dragonfly_sim.py, DragonFly's commands are
tests/dragonfly_stubs.py, QEMU is tests/fake_qemu.py (see their docstrings for what each does and
where DragonFly's source says so). Each test first plays the unchanged recipe the same way, so
that it can only fail because of the mistake.

| mistake put back                                  | what DragonFly (the simulator) does, and the failure     |
|---------------------------------------------------|-----------------------------------------------------------|
| install.sh without `pw -V .. userdel installer`   | /etc.hdd carries the live CD's password-less `installer`  |
|                                                   | (nrelease/Makefile): install.sh's own check exits 3,      |
|                                                   | "the live CD's installer account reached the target"      |
| the adjacent-fragment PFI pattern                 | rc.d/pfi's `echo -n` fragments come with the kernel's     |
| (`pfi.conf on /dev/X... /dev/X ok... found!`)     | `cd9660: RockRidge Extension` between them: the step      |
|                                                   | never matches; install.sh powers off meanwhile: "the      |
|                                                   | console closed" at 'PFI finds the seed CD'                |
| cpdup without -i0                                 | nothing, as on DragonFly: the target never holds what the |
|                                                   | source lacks (newfs and newfs_hammer2 leave empty roots,  |
|                                                   | cpdup crosses no mount point on either side), so cpdup    |
|                                                   | never asks. Where a target does hold more, the stand-in   |
|                                                   | asks and waits for the console, as cpdup's YesNo() does:  |
|                                                   | test_cpdup_asks_and_the_console_never_answers             |
| disklabel64 without -B                            | no boot1/boot2 in the slice: the MBR says "Missing        |
|                                                   | operating system" on the video console only; the          |
|                                                   | installed disk never reaches `login:` on serial           |
| root on the wrong partition (loader.conf)         | "Mounting root from hammer2:vbd0s1e", "no disk named      |
|                                                   | 'vbd0s1e'", the manual root prompt: never `login:`        |
| root on the wrong partition (fstab)               | rc.d/root cannot remount root read-write, DragonFly runs  |
|                                                   | on read-only: provisioning cannot write its script, and   |
|                                                   | `vm.golden` fails with "Read-only file system"            |
| the old `echo "-S115200 -D" > boot.config`        | boot2 knows only the flags VhaCgmnPprsv: it prints        |
|                                                   | `/boot.config: -S115200 -D` and waits at its own prompt   |
| entropy written to /dev/urandom (after_restore)   | writes to /dev/random and /dev/urandom fail while         |
|                                                   | kern.seedenable is 0: after_restore exits non-zero        |
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Dict, Optional

import pytest

from dragonfly_mirror import config_for, fake_qemu_env, mirror_files
from dragonfly_sim import simulator
from dragonfly_stubs import World, install, on_dragonfly
from httpserver import FileServer
from test_dragonfly_recipe import DRAGONFLY, SCALE, TICK, play
from vmlab import guests
from vmlab.errors import ConsoleError
from vmlab.install import recipe
from vmlab.install.console import Console


def guest_copy(folder: Path, file: str = "", old: str = "", new: str = "") -> Path:
    """A copy of vmlab's DragonFly guest folder, with `old` replaced by `new` in `file` (if given)."""
    copy = folder / "dragonfly"
    shutil.copytree(DRAGONFLY, copy)
    if file:
        text = (copy / file).read_text()
        assert old in text, f"{old!r} is not in {file}: the mistake cannot be put back"
        (copy / file).write_text(text.replace(old, new))
    return copy


def install_with(folder: Path, guest: Path) -> Path:
    """Play the guest's PFI install on the simulator; the installed disk's files."""
    folder.mkdir(parents=True, exist_ok=True)
    rec = recipe.load(guest / "install.yaml")
    played = play(folder, rec)
    assert played.world.load()["poweroff"], "the install did not power the machine off"
    return played.disk


def boot_installed(folder: Path, disk: Path) -> str:
    """Boot an installed disk in the simulator up to `login:` on the serial console; its transcript."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "boot.sock"
    with simulator(sock, "--boot", "disk", "--disk", str(disk), "--world", str(folder / "boot-world"),
                   "--tick", str(TICK)):
        with Console(sock, time_scale=SCALE) as con:
            con.expect(["login: "], "boot the installed disk", idle=300, limit=1000)
    return (folder / "boot.sock.transcript").read_text()


def failure(run, *args) -> str:  # noqa: ANN001
    with pytest.raises(ConsoleError) as caught:
        run(*args)
    print(f"\n--- caught: {caught.value}")  # for the record: which step and what the console showed
    return str(caught.value)


def test_the_unchanged_guest_installs_and_its_disk_boots(tmp_path: Path) -> None:
    """The control: every test below plays this with one mistake put back."""
    disk = install_with(tmp_path / "install", guest_copy(tmp_path))
    boot_installed(tmp_path / "boot", disk)


def test_without_userdel_installer_the_check_fails_on_the_installer_account(tmp_path: Path) -> None:
    guest = guest_copy(tmp_path, "install.sh", "    pw -V $target/etc userdel installer", "    :")
    message = failure(install_with, tmp_path / "install", guest)
    assert "step 'install.sh, run by PFI': the script ended with status 3" in message
    assert "install.sh: the live CD's installer account reached the target" in message


def test_the_adjacent_fragment_pfi_pattern_never_matches(tmp_path: Path) -> None:
    guest = guest_copy(tmp_path, "install.yaml", "expect: ' found!'",
                       "expect: 'pfi\\.conf on /dev/\\w+\\.\\.\\. /dev/\\w+ ok\\.\\.\\. found!'")
    message = failure(install_with, tmp_path / "install", guest)
    assert "step 'PFI finds the seed CD'" in message
    assert "cd9660: RockRidge Extension" in message  # the console tail shows what came between


def test_cpdup_without_i0_changes_nothing_on_dragonfly_because_it_has_nothing_to_ask(tmp_path: Path) -> None:
    """The mistake the simulator cannot catch, because DragonFly would not either: in this install the
    target never holds a file the source lacks, so cpdup's question never comes (see the docstring)."""
    guest = guest_copy(tmp_path, "install.sh", "cpdup -i0 -q", "cpdup -q")
    install_with(tmp_path / "install", guest)
    assert "(Yes/No)" not in (tmp_path / "install" / "console.sock.transcript").read_text()


def test_cpdup_asks_and_the_console_never_answers(tmp_path: Path) -> None:
    """cpdup's YesNo() when a target holds what the source lacks and -i0 is not given: the question on
    stderr, the answer read from stdin. Under PFI stdin is the console and nobody types: it waits,
    and the step fails on vmlab's rule for a question nobody will answer. A target made to hold an
    extra file by a script of the test's own (the same install.sh otherwise)."""
    guest = guest_copy(tmp_path, "install.sh", 'step "copy the live system"\n',
                       'step "copy the live system"\nmkdir -p $target/var && : > $target/var/stale\n')
    text = (guest / "install.sh").read_text().replace("cpdup -i0 -q", "cpdup -q")
    (guest / "install.sh").write_text(text)
    message = failure(install_with, tmp_path / "install", guest)
    assert "step 'install.sh, run by PFI'" in message and "(Yes/No) [No]?" in message
    with_i0 = guest_copy(tmp_path / "i0", "install.sh", 'step "copy the live system"\n',
                         'step "copy the live system"\nmkdir -p $target/var && : > $target/var/stale\n')
    disk = install_with(tmp_path / "i0-install", with_i0)
    assert not (disk / "var" / "stale").exists()  # -i0: removed without asking


def test_disklabel64_without_B_leaves_a_disk_that_never_boots(tmp_path: Path) -> None:
    guest = guest_copy(tmp_path, "install.sh", "disklabel64 -r -w -B ${disk}s1 auto",
                       "disklabel64 -r -w ${disk}s1 auto")
    disk = install_with(tmp_path / "install", guest)  # the install itself cannot tell
    message = failure(boot_installed, tmp_path / "boot", disk)
    assert "step 'boot the installed disk': no output" in message and "Booting from Hard Disk..." in message
    assert "the MBR finds no boot1/boot2 in vbd0s1" in (tmp_path / "boot" / "boot.sock.transcript").read_text()


def test_root_on_the_wrong_partition_in_loader_conf_is_not_mounted(tmp_path: Path) -> None:
    guest = guest_copy(tmp_path, "install.sh", 'vfs.root.mountfrom="hammer2:${disk}s1d"',
                       'vfs.root.mountfrom="hammer2:${disk}s1e"')
    disk = install_with(tmp_path / "install", guest)
    message = failure(boot_installed, tmp_path / "boot", disk)
    assert "Mounting root from hammer2:vbd0s1e" in message and "no disk named 'vbd0s1e'" in message


def test_the_old_boot_config_stops_boot2_at_its_prompt(tmp_path: Path) -> None:
    guest = guest_copy(tmp_path, "install.sh", "rm -f $target/boot/boot.config",
                       'echo "-S115200 -D" > $target/boot/boot.config')
    disk = install_with(tmp_path / "install", guest)
    message = failure(boot_installed, tmp_path / "boot", disk)
    assert "/boot.config: -S115200 -D" in message and "0:ad(0,a)/boot/loader:" in message


def test_entropy_written_to_urandom_fails_after_a_restore(tmp_path: Path) -> None:
    """The profile's after_restore, run as vmlab runs it after a restore, on the stand-ins."""
    def after_restore(guest: Path) -> subprocess.CompletedProcess:
        profile = guests.load("dragonfly", [guest.parent])
        command = profile.after_restore.format(epoch="1700000000.250", epoch_int=1700000000,
                                               entropy="ab" * 64, hostname="dfly")
        world = World.create(guest.parent / "world")
        bin_dir = install(guest.parent / "bin", world)
        return subprocess.run([shutil.which("dash") or "dash", "-c", on_dragonfly(command, world)],
                              capture_output=True, text=True, env={"PATH": str(bin_dir)})

    assert after_restore(guest_copy(tmp_path / "as-is")).returncode == 0
    old = "date -u -f %s {epoch_int} >/dev/null && printf %s {entropy} > /dev/urandom && hostname {hostname}"
    guest = guest_copy(tmp_path / "mistake")
    profile = guest / "profile.yaml"
    text = profile.read_text()
    start = text.index("after_restore: ") + len("after_restore: ")
    profile.write_text(text[:start] + old + text[text.index("\n", start):])
    done = after_restore(guest)
    print(f"\n--- caught: exit {done.returncode}: {done.stderr.strip()}")
    assert done.returncode != 0 and "urandom" in done.stderr


def test_root_on_the_wrong_partition_in_fstab_leaves_a_read_only_system(tmp_path: Path) -> None:
    """Through the CLI (`vm.golden --from-scratch`, tests/fake_qemu.py): rc cannot remount root
    read-write, so the first thing vmlab writes in the guest, the provisioning script, fails."""
    project = tmp_path / "project"
    project.mkdir()
    guest_copy(project / "guests", "install.sh", "/dev/${disk}s1d@ROOT  /      hammer2",
               "/dev/${disk}s1e@ROOT  /      hammer2")
    with FileServer(mirror_files(1 << 20)) as mirror:
        (project / "vmlab.yaml").write_text("guests: [guests]\n" + textwrap.dedent(config_for(mirror.url)))
        (project / "tasks.py").write_text("from vmlab.tasks import ns  # noqa: F401\n")
        env: Dict[str, str] = fake_qemu_env(tmp_path / "fake-bin")
        made = run_invoke(project, env, "vm.golden", "--from-scratch", "--vm", "dfly")
    try:
        said = [line for line in made.stderr.splitlines() if "error" in line or "Read-only" in line]
        print(f"\n--- caught: exit {made.returncode}: " + "\n".join(said))
        assert made.returncode == 1, made.stderr[-3000:]
        assert "Read-only file system" in made.stderr and "provision" in made.stderr
    finally:
        run_invoke(project, env, "vm.stop", "--vm", "dfly")


def run_invoke(project: Path, env: Dict[str, str], *args: str, timeout: Optional[float] = 600) -> \
        subprocess.CompletedProcess:
    from conftest import Project

    return Project(project).invoke(*args, env=env, timeout=timeout or 600)
