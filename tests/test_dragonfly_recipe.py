"""The DragonFly install recipe against a console simulator, and install.sh against DragonFly's facts.

No DragonFly ISO can be fetched here, so the serial console is played by
tests/dragonfly_sim.py (its strings come from DragonFly's sources, see
docs/dragonfly.md) and install.sh runs under dash with stubs standing in for the
DragonFly-only tools; the same engine drives a real QEMU install in
test_rehearsal.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from dragonfly_sim import simulator
from vmlab import recipe
from vmlab.console import Console
from vmlab.errors import ConsoleError

DRAGONFLY = Path(__file__).parents[1] / "vmlab" / "guests" / "dragonfly"
SCALE = 0.02  # every deadline of the recipe, shrunk: a 300 s idle wait becomes 6 s
TICK = 0.2  # the simulator's pace: a 10-step countdown takes 2 s


def play(tmp_path: Path, fault: str = "none") -> str:
    """Run the recipe against the simulator; returns what the simulator saw typed."""
    sock = tmp_path / "console.sock"
    rec = recipe.load(DRAGONFLY / "install.yaml")
    with simulator(sock, fault, tick=TICK):
        with Console(sock, fails=rec.fails, time_scale=SCALE) as con:
            rec.run(con, {})
    return Path(f"{sock}.transcript").read_text()


def typed(transcript: str) -> list:
    return [line[2:].rstrip() for line in transcript.splitlines() if line.startswith("> ")]


def test_the_recipe_installs_and_powers_off(tmp_path: Path) -> None:
    sent = typed(play(tmp_path))
    commands = [line for line in sent if line and not line.startswith("9")]
    assert sent[0].startswith("9")  # at the countdown, not before it
    assert commands[:4] == ["set console=comconsole", "boot", "root", "exec /bin/sh"]
    assert any(line.startswith("PS1='vmlab") for line in commands)
    assert 'mount_cd9660 /dev/cd1 /mnt; echo "vmlab-rc=$?"' in commands
    assert 'sh /mnt/install.sh; echo "vmlab-rc=$?"' in commands
    assert commands[-1] == "poweroff"


@pytest.mark.parametrize("fault, step, why", [
    ("panic", "install onto the disk", "the guest kernel panicked"),
    ("no-login", "boot the live CD", "no output for 6s"),
    ("boot-loop", "boot the live CD", "a boot loop: the loader came back"),
    ("drop-all-keys", "escape to the loader prompt", ""),
    ("install-exit-3", "install onto the disk", "exited with status 3"),
    ("login-incorrect", "log in as root (no password on the live CD)", "the guest refused the login"),
])
def test_faults_fail_fast_naming_the_step_with_the_console(tmp_path: Path, fault: str, step: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConsoleError) as failure:
        play(tmp_path, fault)
    message = str(failure.value)
    assert time.monotonic() - started < 20
    assert f"step {step!r}" in message and why in message
    assert "console lines:" in message
    if fault == "install-exit-3":
        assert "newfs_hammer2 failed: No space left on device" in message  # the console tail shows why
    if fault == "panic":
        assert "panic: vm_fault" in message


def test_a_dropped_key_at_the_menu_is_typed_again(tmp_path: Path) -> None:
    transcript = play(tmp_path, "drop-first-key")
    nines = [line for line in typed(transcript) if line.startswith("9")]
    assert len(nines) >= 2 and "[dropped" in nines[0]


# --- install.sh, run for real with the DragonFly-only tools stubbed ---

STUBS = {
    "sysctl": 'echo "vbd0 cd1 cd0"',
    "ifconfig": 'echo "vtnet0 lo0"',
    "disklabel64": 'if [ $# = 1 ]; then echo "# /dev/$1:"; echo "label: auto"; fi',
    "cpdup": 'mkdir -p "$3/ssh"',  # cpdup -q SRC DST makes DST (/etc.hdd's copy brings etc/ssh)
}
RECORDED = ("dd", "fdisk", "disklabel64", "newfs", "newfs_hammer2", "mount", "umount", "cpdup", "chroot")


@pytest.fixture
def stubbed(tmp_path: Path) -> dict:
    stubs, calls, seed, target = (tmp_path / d for d in ("stubs", "calls", "seed", "target"))
    for d in (stubs, seed):
        d.mkdir()
    for tool in {*STUBS, *RECORDED}:
        body = STUBS.get(tool, "")
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n{body}\n')
        (stubs / tool).chmod(0o755)
    for name in ("authorized_keys", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        (seed / name).write_text(f"{name} content\n")
    (seed / "install.sh").write_text((DRAGONFLY / "install.sh").read_text())
    for d in ("etc/ssh", "boot", "home"):  # what cpdup would have copied
        (target / d).mkdir(parents=True)
    return {"stubs": stubs, "calls": calls, "seed": seed, "target": target}


def test_install_script_follows_dragonfly_facts(stubbed: dict, tmp_path: Path) -> None:
    """dash runs install.sh; only tools DragonFly has and Linux lacks (or must not run here) are stubs."""
    result = subprocess.run(["dash", str(stubbed["seed"] / "install.sh")], capture_output=True, text=True,
                            env=dict(os.environ, VMLAB_TEST_PATH=str(stubbed["stubs"]),
                                     VMLAB_TARGET=str(stubbed["target"]), TMPDIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    steps = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("vmlab-step:")]
    assert steps == ["partition vbd0", "make the file systems", "copy the live system",
                     "configure the installed system", "unmount", "done"]
    calls = stubbed["calls"].read_text().splitlines()
    t = stubbed["target"]
    assert "fdisk -IB vbd0" in calls
    assert "disklabel64 -r -w -B vbd0s1 auto" in calls
    assert any(c.startswith("disklabel64 -R vbd0s1 ") for c in calls)
    assert calls.index("newfs /dev/vbd0s1a") < calls.index("newfs_hammer2 -L ROOT /dev/vbd0s1d")
    assert f"mount -t hammer2 /dev/vbd0s1d@ROOT {t}" in calls
    assert [c.split()[2] for c in calls if c.startswith("cpdup")] == ["/", "/boot", "/var", "/root",
                                                                       "/usr/local/etc", "/etc.hdd"]
    assert f"chroot {t} pw usermod root -s /bin/sh" in calls
    loader = (t / "boot" / "loader.conf").read_text()
    assert 'vfs.root.mountfrom="hammer2:vbd0s1d"' in loader and 'console="comconsole"' in loader
    assert (t / "boot" / "boot.config").read_text().strip() == "-S115200 -D"
    rc = (t / "etc" / "rc.conf").read_text()
    assert 'ifconfig_vtnet0="DHCP"' in rc and 'sshd_enable="YES"' in rc and 'dhcp_client="dhcpcd"' in rc
    assert "/dev/vbd0s1d@ROOT  /      hammer2" in (t / "etc" / "fstab").read_text()
    keys = t / "root" / ".ssh" / "authorized_keys"
    assert keys.read_text() == "authorized_keys content\n" and oct(keys.stat().st_mode & 0o777) == "0o600"
    host_key = t / "etc" / "ssh" / "ssh_host_ed25519_key"
    assert oct(host_key.stat().st_mode & 0o777) == "0o600"
    label = (tmp_path / "vmlab-label").read_text()  # the label, partitions added, as disklabel64 -R got it
    assert "a: 1g 0 4.2BSD" in label and "b: 1g * swap" in label and "d: * * HAMMER2" in label


def test_install_script_stops_at_the_first_failure(stubbed: dict, tmp_path: Path) -> None:
    (stubbed["stubs"] / "newfs_hammer2").write_text('#!/bin/sh\necho "newfs_hammer2: ENOSPC" >&2\nexit 1\n')
    result = subprocess.run(["dash", str(stubbed["seed"] / "install.sh")], capture_output=True, text=True,
                            env=dict(os.environ, VMLAB_TEST_PATH=str(stubbed["stubs"]),
                                     VMLAB_TARGET=str(stubbed["target"]), TMPDIR=str(tmp_path)))
    assert result.returncode == 3
    assert "install.sh: newfs_hammer2 vbd0s1d failed" in result.stderr
    assert "copy the live system" not in result.stdout
