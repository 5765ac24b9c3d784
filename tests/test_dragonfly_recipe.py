"""The DragonFly install as far as it can be tested without DragonFly: its recipes, scripts and profile.

No DragonFly ISO can be fetched here and QEMU running DragonFly cannot exist here,
so the serial console is played by tests/dragonfly_sim.py (DragonFly's own strings;
it refuses what DragonFly refuses) and install.sh, provision.sh and the profile's
after_restore run under real dash with DragonFly's commands stood in for by
tests/dragonfly_stubs.py. The seed CD is the real ISO vmlab builds (xorriso), read
back by the simulator as rc.d/pfi reads it. The same engine installs the rehearsal
guest on real QEMU (test_rehearsal.py). Tests named test_failure_N_* are issue
17's failures N: each one failed against the recipe as it was before the fix.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from dragonfly_hw import Hardware, from_argv, vmlab_install_machine
from dragonfly_sim import boot2_accepts, disk_boot, save_layout, simulator
from dragonfly_stubs import World, install, on_dragonfly, unresolved
from vmlab import guests
from vmlab.errors import ConsoleError
from vmlab.install import recipe, seed
from vmlab.install.console import Console
from vmlab.qemu.accel import AccelChoice
from vmlab.qemu.machine import Machine, MachineSpec
from vmlab.remote import keys

DRAGONFLY = Path(__file__).parents[1] / "vmlab" / "guests" / "dragonfly"
SHELL_RECIPE = DRAGONFLY / "install-shell.yaml"  # the fallback: typed at the live CD's root shell
SCALE = 0.02  # every deadline of a recipe, shrunk: a 300 s idle wait becomes 6 s
TICK = 0.05  # the simulator's pace: a 10-step countdown takes 0.5 s


def profile_recipe() -> recipe.Recipe:
    """The recipe the product installs DragonFly with: the one its profile names."""
    profile = guests.load("dragonfly")
    assert profile.install is not None
    return recipe.load(profile.dir / profile.install.recipe)


def seed_iso(tmp_path: Path, rec: recipe.Recipe) -> Path:
    """The seed CD vmlab builds for this recipe's install: its files, the lab's keys, the name."""
    lab_keys = keys.ensure(tmp_path / "keys", "test")
    scripts = {name: (rec.path.parent / name).read_bytes() for name in rec.seed}
    return seed.for_vm(tmp_path / "seed.iso", lab_keys, "dfly", scripts)


class Played:
    def __init__(self, folder: Path):
        self.transcript = (folder / "console.sock.transcript").read_text()
        self.world = World(folder / "world")
        self.disk = folder / "world" / "disk"

    def typed(self) -> List[str]:
        return [line[2:].rstrip() for line in self.transcript.splitlines() if line.startswith("> ")]

    def printed(self) -> str:
        return "\n".join(line[2:] for line in self.transcript.splitlines() if line.startswith("< "))


def play(tmp_path: Path, rec: recipe.Recipe, *options: str, scale: float = SCALE,
         env: Optional[Dict[str, str]] = None) -> Played:
    """Install with `rec` against the simulator booting from its real seed ISO."""
    sock = tmp_path / "console.sock"
    iso = seed_iso(tmp_path, rec)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        with simulator(sock, "--seed", str(iso), "--world", str(tmp_path / "world"), "--tick", str(TICK), *options):
            with Console(sock, fails=rec.fails, time_scale=scale, timed=tmp_path / "console.timed.jsonl") as con:
                rec.run(con, {})
    return Played(tmp_path)


def altered(tmp_path: Path, source: Path, old: str, new: str, file: Optional[str] = None) -> recipe.Recipe:
    """A copy of a recipe's folder with one change to the recipe (or to `file` beside it)."""
    folder = tmp_path / "recipe"
    shutil.copytree(source.parent, folder)
    changed = folder / (file or source.name)
    text = changed.read_text()
    assert old in text, f"{old!r} is not in {changed.name}"
    changed.write_text(text.replace(old, new))
    return recipe.load(folder / source.name)


# --- the PFI install, as the profile does it ---


def test_pfi_installs_with_no_key_typed_after_the_loader(tmp_path: Path) -> None:
    played = play(tmp_path, profile_recipe())
    assert not any("before the loader started" in line for line in played.typed())  # none typed too early
    typed = [line for line in played.typed() if "[dropped" not in line]
    assert typed[-1] == "boot" and "set console=comconsole" in typed  # then only watched
    out = played.printed()
    # rc.d/pfi's words, the kernel's Rock Ridge line between them; the seed is found on acd1 first
    assert "Looking for pfi.conf on /dev/acd1...cd9660: RockRidge Extension\n /dev/acd1 ok... found!" in out
    assert re.search(r"vmlab-install: exit 0", out) and played.world.load()["poweroff"]
    assert "login:" not in out  # the live CD never got that far: install.sh powered it off
    loader = (played.disk / "boot" / "loader.conf").read_text()
    assert 'console="comconsole"' in loader
    lab_key = (tmp_path / "keys" / "id_ed25519.pub").read_text()
    assert (played.disk / "root" / ".ssh" / "authorized_keys").read_text() == lab_key


@pytest.mark.parametrize("old, new, file", [
    ('pfi_script="install.sh"', 'pfi_script="setup.sh"', "pfi.conf"),  # a script that is not on the seed
    ("seed: [pfi.conf, install.sh]", "seed: [install.sh]", None),  # no pfi.conf on the seed
])
def test_pfi_that_runs_nothing_fails_at_the_login_prompt(tmp_path: Path, old: str, new: str, file: str) -> None:
    rec = altered(tmp_path, profile_recipe().path, old, new, file)
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, rec)
    assert "PFI did not run install.sh" in str(failure.value)


# --- the root-shell fallback, and what the simulator refuses ---


def test_the_root_shell_recipe_installs_from_the_live_shell(tmp_path: Path) -> None:
    rec = recipe.load(SHELL_RECIPE)
    assert "pfi.conf" not in rec.seed  # PFI must not install behind the shell's back
    played = play(tmp_path, rec)
    commands = [line for line in played.typed() if "[dropped" not in line]
    mount = next(i for i, c in enumerate(commands) if c.startswith("mount_cd9660 /dev/cd1 /mnt"))
    run = next(i for i, c in enumerate(commands) if c.startswith("sh /mnt/install.sh"))
    assert commands.index("boot") < commands.index("root") < mount < run
    assert played.world.load()["poweroff"] and (played.disk / "etc" / "rc.conf").is_file()


def test_the_live_shell_shows_the_seed_only_once_it_is_mounted(tmp_path: Path) -> None:
    text = SHELL_RECIPE.read_text().split("  - name: mount the seed CD")[0]
    (tmp_path / "recipe").mkdir()
    shutil.copy(DRAGONFLY / "install.sh", tmp_path / "recipe")
    (tmp_path / "recipe" / "look.yaml").write_text(text + """\
  - {name: look before, run: ls /mnt}
  - {name: mount, run: mount_cd9660 /dev/cd1 /mnt}
  - {name: look after, run: ls /mnt}
  - {name: unmount, run: umount /mnt}
  - {name: look again, run: ls /mnt}
  - {name: power off, power_off: poweroff}
""")
    out = play(tmp_path, recipe.load(tmp_path / "recipe" / "look.yaml")).printed()
    listings = re.findall(r'ls /mnt; echo "vmlab-rc=\$\?"\n(.*?)vmlab-rc=0', out, re.S)
    assert ["install.sh" in listing for listing in listings] == [False, True, False], listings


@pytest.mark.parametrize("old, new, step", [
    ("mount_cd9660 /dev/cd1 /mnt", "mount_cd9660 /dev/cd9 /mnt", "mount the seed CD"),
    ("run: mount_cd9660 /dev/cd1 /mnt", "run: echo no mount", "install onto the disk"),
    ("sh /mnt/install.sh", "sh /nonexistent/install.sh", "install onto the disk"),
])
def test_an_altered_shell_recipe_fails_at_its_step(tmp_path: Path, old: str, new: str, step: str) -> None:
    """Test-audit finding 2: each of these 'installed' against the old simulator."""
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, altered(tmp_path, SHELL_RECIPE, old, new))
    assert f"step {step!r}" in str(failure.value)


def test_installing_before_mounting_fails(tmp_path: Path) -> None:
    text = SHELL_RECIPE.read_text()
    mount = re.search(r"  - name: mount the seed CD\n(    .*\n)+", text).group(0)
    install_ = re.search(r"  - name: install onto the disk\n(    .*\n)+", text).group(0)
    rec = altered(tmp_path, SHELL_RECIPE, mount + install_, install_ + mount)
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, rec)
    assert "step 'install onto the disk'" in str(failure.value)
    assert "cannot open /mnt/install.sh" in str(failure.value)


@pytest.mark.parametrize("fault, step, why", [
    ("panic", "install.sh, run by PFI", "the guest kernel panicked"),
    ("hang-after-kernel", "boot the live CD", "no output for 12s"),
    ("boot-loop", "boot the live CD", "a boot loop: the loader came back"),
    ("drop-all-keys", "escape to the loader prompt", "gave up after 1s"),
])
def test_faults_fail_fast_naming_the_step_with_the_console(tmp_path: Path, fault: str, step: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, profile_recipe(), "--fault", fault)
    message = str(failure.value)
    assert time.monotonic() - started < 30
    assert f"step {step!r}" in message and why in message, message
    assert "console lines:" in message and "docs/dragonfly.md" in message
    if fault == "panic":
        assert "panic: vm_fault" in message
    if fault == "drop-all-keys":
        nines = [line for line in Played(tmp_path).typed() if line.startswith("9")]
        assert len(nines) >= 2 and all("[dropped" in n for n in nines)  # it typed 9 again, each lost


def test_a_failing_install_script_fails_the_step_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, profile_recipe(), env={"DFLY_FAIL": "newfs_hammer2:No space left on device"})
    message = str(failure.value)
    assert "step 'install.sh, run by PFI'" in message and "status 3" in message
    assert "newfs_hammer2 vbd0s1d failed" in message  # the console tail shows why


def test_a_refused_login_names_the_rule(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, recipe.load(SHELL_RECIPE), "--fault", "login-incorrect")
    assert "it asked for a password, and vmlab has none" in str(failure.value)


def test_a_login_refused_without_a_password_prompt_names_its_own_rule(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, recipe.load(SHELL_RECIPE), "--fault", "login-refused")
    message = str(failure.value)
    assert "the guest refused the login" in message and "asked for a password" not in message
    assert "Login incorrect" in message  # the console tail shows it


def test_a_dropped_key_at_the_menu_is_typed_again(tmp_path: Path) -> None:
    played = play(tmp_path, profile_recipe(), "--fault", "drop-first-key")
    nines = [line for line in played.typed() if line.startswith("9")]
    assert len(nines) >= 2 and "[dropped" in nines[0] and "[dropped" not in nines[1]


# --- install.sh, provision.sh and after_restore run as programs, DragonFly's commands stubbed ---


class Harness:
    """A booted live CD (the stubs' world) and a target folder: install.sh's disk."""

    def __init__(self, tmp_path: Path, hardware: Optional[Hardware] = None):
        self.world = World.create(tmp_path / "world", hardware=hardware)
        self.bin = install(tmp_path / "bin", self.world)
        self.seed = tmp_path / "seed"
        self.seed.mkdir()
        for name in ("authorized_keys", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
            (self.seed / name).write_text(f"{name} content\n")
        shutil.copy(DRAGONFLY / "install.sh", self.seed / "install.sh")
        self.target = tmp_path / "target"
        self.tmp = tmp_path

    def env(self, **extra: str) -> Dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "VMLAB_TEST_PATH": str(self.bin), "VMLAB_TARGET": str(self.target),
                "TMPDIR": str(self.tmp), **extra}

    def install(self, **extra: str) -> subprocess.CompletedProcess:
        """install.sh run as PFI runs it, with nothing on stdin; what it wrote on the disk besides files is
        kept with them (dragonfly_sim.LAYOUT), as the simulator does at power-off."""
        done = subprocess.run(["dash", str(self.seed / "install.sh")], capture_output=True, text=True,
                              env=self.env(**extra), timeout=120, stdin=subprocess.DEVNULL)
        assert not unresolved(done.stdout + done.stderr), unresolved(done.stdout + done.stderr)
        if self.target.is_dir():
            save_layout(self.world, self.target, self.world.hardware.disks[0])
        return done

    def calls(self) -> List[str]:
        return self.world.calls.read_text().splitlines()

    def provision(self, *packages: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["dash", str(DRAGONFLY / "provision.sh"), *packages], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "VMLAB_TEST_PATH": str(self.bin),
                                   "VMLAB_ROOT": str(self.target)}, timeout=60, stdin=subprocess.DEVNULL)
        assert not unresolved(done.stdout + done.stderr), unresolved(done.stdout + done.stderr)
        return done


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


@pytest.fixture
def installed(harness: Harness) -> Harness:
    result = harness.install()
    assert "vmlab-step: done" in result.stdout, result.stdout + result.stderr
    return harness


def passwd(target: Path) -> Dict[str, List[str]]:
    lines = (target / "etc" / "master.passwd").read_text().splitlines()
    return {f[0]: f for f in (line.split(":") for line in lines if line)}


def test_install_script_writes_a_bootable_dragonfly(installed: Harness) -> None:
    t, calls = installed.target, installed.calls()
    assert calls[:2] == ["sysctl -n kern.disks", "ifconfig -l"]  # found the way the builders do
    assert "fdisk -IB vbd0" in calls and "disklabel64 -r -w -B vbd0s1 auto" in calls
    assert calls.index("newfs /dev/vbd0s1a") < calls.index("newfs_hammer2 -L ROOT /dev/vbd0s1d")
    assert f"mount -t hammer2 /dev/vbd0s1d@ROOT {t}" in calls
    assert [c.split()[-2] for c in calls if c.startswith("cpdup")] == ["/", "/boot", "/var", "/root",
                                                                        "/usr/local/etc", "/etc.hdd"]
    assert not installed.world.load()["mounts"]  # everything unmounted again
    loader = (t / "boot" / "loader.conf").read_text()
    assert 'vfs.root.mountfrom="hammer2:vbd0s1d"' in loader and 'console="comconsole"' in loader
    assert 'kernel_options="-C"' not in loader  # the CD's own loader.conf is replaced
    fstab = (t / "etc" / "fstab").read_text()
    assert re.search(r"^/dev/vbd0s1d@ROOT\s+/\s+hammer2", fstab, re.M)
    assert re.search(r"^/dev/vbd0s1a\s+/boot\s+ufs", fstab, re.M)
    assert re.search(r"^/dev/vbd0s1b\s+none\s+swap\s+sw", fstab, re.M)
    rc = (t / "etc" / "rc.conf").read_text()
    assert 'ifconfig_vtnet0="DHCP"' in rc and 'sshd_enable="YES"' in rc and 'dhcp_client="dhcpcd"' in rc
    assert not (t / "README").exists() and not (t / "etc.hdd").exists()
    key = t / "root" / ".ssh" / "authorized_keys"
    assert key.read_text() == "authorized_keys content\n" and oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct((t / "etc" / "ssh" / "ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"
    users = passwd(t)
    assert users["root"][9] == "/bin/sh" and users["lab"][9] == "/bin/sh" and users["lab"][2] == "1001"
    lab_key = t / "home" / "lab" / ".ssh" / "authorized_keys"
    assert lab_key.stat().st_uid == 1001 and oct(lab_key.stat().st_mode & 0o777) == "0o600"
    assert any(c.startswith(f"chroot {t} pw useradd lab") for c in calls)


def test_install_script_stops_at_the_first_failure(harness: Harness) -> None:
    result = harness.install(DFLY_FAIL="newfs_hammer2:No space left on device")
    assert result.returncode == 3
    assert "install.sh: newfs_hammer2 vbd0s1d failed" in result.stderr
    assert "vmlab-install: exit 3" in result.stdout and "copy the live system" not in result.stdout
    assert not harness.world.load()["poweroff"]  # a failed install leaves the live CD up to look at


@pytest.mark.parametrize("argv, message", [
    (["pkg", "bootstrap", "-f"], "pkg(7) bootstrapper not found at /usr/sbin/pkg"),
    (["sysctl", "kern.disks"], "unknown oid"),
    (["ifconfig", "-a"], "only `ifconfig -l`"),
    (["cpdup", "-i", "yes", "/", "/x"], "option requires boolean argument"),
    (["cpdup", "-Z", "/", "/x"], "illegal option"),
    (["date", "-u", "-s", "@1700000000"], "illegal option -- s"),
    (["disklabel64", "-w", "vbd0", "generic"], "only 'auto' allowed"),
    (["mount_cd9660", "/dev/cd9", "/mnt"], "/dev/cd9: No such file or directory"),
    (["pw", "usermod", "root", "-w", "secret"], "invalid method"),
])
def test_the_stubs_refuse_what_dragonfly_refuses(harness: Harness, argv: List[str], message: str) -> None:
    result = subprocess.run([str(harness.bin / argv[0]), *argv[1:]], capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr


def test_provision_installs_packages_and_gives_the_lab_user_doas(installed: Harness) -> None:
    result = installed.provision("python3", "go")
    assert result.returncode == 0, result.stdout + result.stderr
    pkg = [c for c in installed.calls() if c.startswith("pkg ")]
    assert pkg == ["pkg update -f", "pkg upgrade -y pkg", "pkg install -y rsync doas python3 go"]
    repo = installed.target / "usr/local/etc/pkg/repos/df-latest.conf"
    assert repo.is_file()  # put back after `pkg upgrade pkg` removed it
    assert (installed.target / "usr/local/etc/doas.conf").read_text() == "permit nopass lab as root\n"


def test_provision_fails_with_pkg_output_when_the_mirror_is_unusable(installed: Harness) -> None:
    result = subprocess.run(["dash", str(DRAGONFLY / "provision.sh")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "VMLAB_TEST_PATH": str(installed.bin),
                                 "VMLAB_ROOT": str(installed.target),
                                 "DFLY_FAIL": "pkg:An error occured while fetching package"})
    assert result.returncode == 3
    assert "pkg: An error occured while fetching package" in result.stderr
    assert "provision.sh: pkg update failed (its output is above)" in result.stderr


def run_after_restore(world: World, tmp: Path) -> subprocess.CompletedProcess:
    command = guests.load("dragonfly").after_restore.format(epoch="1700000000.250", epoch_int=1700000000,
                                                             entropy="ab" * 64, hostname="dfly")
    bin_dir = install(tmp / "bin", world)  # its whole PATH: the stand-ins and the harmless host tools
    done = subprocess.run([shutil.which("dash") or "dash", "-c", on_dragonfly(command, world)], capture_output=True,
                          text=True, env={"PATH": str(bin_dir)})
    assert not unresolved(done.stderr), done.stderr
    return done


# --- issue 17's failures, each named ---


def test_failure_0_the_profile_names_its_install_recipe_and_provision_script() -> None:
    profile = guests.load("dragonfly")
    assert profile.install is not None and profile.provision.script is not None
    rec = recipe.load(profile.dir / profile.install.recipe)
    assert rec.boot == "cdrom" and (profile.dir / profile.provision.script).is_file()


def test_failure_1_the_installed_disk_boots_past_boot2(installed: Harness, tmp_path: Path) -> None:
    config = installed.target / "boot" / "boot.config"
    assert not config.exists() or boot2_accepts(config.read_text())
    sock = tmp_path / "disk.sock"
    with simulator(sock, "--boot", "disk", "--disk", str(installed.target), "--world", str(tmp_path / "w2"),
                   "--tick", str(TICK)):
        with Console(sock) as con:
            con.expect(["login: "], "boot the installed disk", idle=5, limit=20)


def test_failure_2_after_restore_seeds_random_as_rc_d_random_does(tmp_path: Path) -> None:
    world = World.create(tmp_path / "world")
    result = run_after_restore(world, tmp_path)
    assert result.returncode == 0, result.stderr
    assert world.entropy() == b"ab" * 64  # it reached the pool
    assert world.load()["sysctl"]["kern.seedenable"] == 0  # and the gate is shut again
    calls = world.calls.read_text().splitlines()
    assert "date -u -f %s 1700000000" in calls and "hostname dfly" in calls


def test_failure_3_provision_uses_the_builders_pkg_sequence_not_pkg_bootstrap(installed: Harness) -> None:
    result = installed.provision()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(c.startswith("pkg bootstrap") for c in installed.calls())


def test_failure_4_prompts_are_found_when_getty_errors_follow_them(tmp_path: Path) -> None:
    played = play(tmp_path, recipe.load(SHELL_RECIPE), "--no-video")
    assert "getty repeating too quickly" in played.printed()  # the errors did come
    assert played.world.load()["poweroff"]


def test_failure_4_qemu_gives_the_guest_a_video_device(tmp_path: Path) -> None:
    spec = MachineSpec(name="x", accel=AccelChoice("tcg", "test"), memory_mib=512, cpus=1, disk=tmp_path / "d")
    argv = Machine("x", tmp_path / "x").argv(spec, 2222)
    assert "-nodefaults" in argv and argv[argv.index("-display") + 1] == "none"
    assert any(a.split(",")[0] in ("VGA", "std") for a in argv[1:])  # -device VGA or -vga std


def test_failure_5_root_password_is_locked_and_no_installer_account_reaches_the_target(installed: Harness) -> None:
    users = passwd(installed.target)
    assert "installer" not in users
    assert users["root"][1] != ""  # not a password-less root on the golden image's console


def test_failure_6_cert_pem_is_linked_before_pkg_runs(installed: Harness) -> None:
    result = installed.provision()
    assert result.returncode == 0, result.stdout + result.stderr
    cert = installed.target / "etc" / "ssl" / "cert.pem"
    assert os.readlink(cert) == "/usr/local/share/certs/ca-root-nss.crt"


def test_failure_7_stacked_loader_keys_are_cleared_and_an_unknown_command_fails_the_step(tmp_path: Path) -> None:
    slow, bad = tmp_path / "slow", tmp_path / "bad"
    slow.mkdir()
    played = play(slow, recipe.load(SHELL_RECIPE), "--fault", "slow-prompt")
    assert any("9" in line and "^U" in line for line in played.typed())  # 9s resent meanwhile, cleared
    assert "unknown command" not in played.printed() and played.world.load()["poweroff"]
    bad.mkdir()
    with pytest.raises(ConsoleError) as failure:
        play(bad, altered(bad, SHELL_RECIPE, "set console=comconsole", "sett console=comconsole"))
    assert "step 'use the serial console'" in str(failure.value)
    assert "sett: unknown command" in str(failure.value)  # the loader's answer, in the console tail


def test_failure_8_cpdup_prints_a_heartbeat_while_it_copies(harness: Harness) -> None:
    proc = subprocess.Popen(["dash", str(harness.seed / "install.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=harness.env(DFLY_CPDUP_SECONDS="4", VMLAB_HEARTBEAT="1"))
    stamps = []
    for line in proc.stdout:
        stamps.append((time.monotonic(), line))
    proc.wait(timeout=60)
    lines = [line for _, line in stamps]
    assert any("vmlab-install: exit 0" in line for line in lines), "".join(lines)
    gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) < 2.5, "".join(lines)  # never silent for long while cpdup copies for 4 s
    assert sum("copying /" in line for line in lines) >= 2


# --- the simulator's machine is the one vmlab's QEMU command line describes ---


def test_device_names_come_from_the_qemu_command_line_vmlab_builds(harness: Harness, tmp_path: Path) -> None:
    """vmlab gives QEMU a virtio disk, virtio-net and two IDE CDs: DragonFly names them vbd0, vtnet0,
    and acd0/cd0, acd1/cd1 (both drivers of GENERIC take an IDE CD). A machine with an IDE disk and an
    e1000 instead gets ad0 and em0, and install.sh follows; a disk installed for one boots on it only."""
    hw = vmlab_install_machine()
    assert (hw.disks, hw.nics, sorted(hw.cds)) == (["vbd0"], ["vtnet0"], ["acd0", "acd1", "cd0", "cd1"])
    assert hw.cds["acd1"] == hw.cds["cd1"] == "seed"  # the seed CD, under both names
    asked = [subprocess.run([str(harness.bin / tool), *argv], capture_output=True, text=True).stdout.split()
             for tool, argv in (("sysctl", ["-n", "kern.disks"]), ("ifconfig", ["-l"]))]
    assert set(asked[0]) == {"vbd0", "acd0", "cd0", "acd1", "cd1"} and asked[1] == ["vtnet0", "lo0"]

    ide = from_argv(["-device", "ide-hd,drive=disk0,bus=ide.0,unit=0", "-device", "e1000,netdev=net0",
                     "-device", "ide-cd,drive=seed,bus=ide.1,unit=0"])
    other = Harness(tmp_path / "ide", ide)
    assert "vmlab-step: done" in other.install().stdout
    assert "fdisk -IB ad0" in other.calls()
    assert 'ifconfig_em0="DHCP"' in (other.target / "etc" / "rc.conf").read_text()
    assert 'vfs.root.mountfrom="hammer2:ad0s1d"' in (other.target / "boot" / "loader.conf").read_text()
    assert disk_boot(other.target, ide).stops_at == ""
    assert "no boot code in vbd0's MBR" in disk_boot(other.target, vmlab_install_machine()).stops_at


def test_a_command_neither_stood_in_for_nor_allowed_fails_naming_it(tmp_path: Path) -> None:
    """install.sh's PATH holds DragonFly's stand-ins and links to a few harmless host tools, nothing
    else: a `reboot` (no stand-in) is not found, never the host's, and the simulator names it."""
    rec = altered(tmp_path, profile_recipe().path, "    poweroff   ", "    reboot     ", "install.sh")
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, rec)
    assert "install.sh ran `reboot`, which is neither a stand-in for a DragonFly command nor an allowed host tool" \
        in str(failure.value)
