"""The installed DragonFly as vmlab reaches it, over a real SSH server: played by fake_qemu.py.

No DragonFly can run here. What vmlab relies on in an installed guest is its disk,
its sshd (with the host key and root's authorized_keys the install put there) and
a shell running vmlab's commands as root. So:

- the installed system's files live in the qcow2 itself: a tar at offset 0 behind
  a header (MAGIC, length), written with qemu-io and read with qemu-img dd. They
  follow the disk as a file system would: through overlays, `qemu-img convert`
  (the golden image's flatten) and internal snapshots (`qemu-img snapshot`);
- at boot they are unpacked into a folder; if rc.conf says sshd_enable="YES" and
  the host key is there, the host's own OpenSSH sshd listens on QEMU's hostfwd
  port with that host key, root's authorized_keys and the installed sshd_config's
  PermitRootLogin: vmlab's host-key check and its key login are real;
- every session's command runs as `session` below (sshd's ForceCommand): in its
  own mount namespace, chrooted into a root made of the installed files (/etc,
  /var, /tmp, /root, /home, /boot, /usr/local) and Debian's programs read-only
  (/bin, /sbin, /lib, /libexec, /usr), with dragonfly_stubs.GUEST_TOOLS first in
  PATH (uname says DragonFly; mount, mount_null, mount_tmpfs and umount take
  DragonFly's syntax; pkg acts on the installed files; writes to /dev/random
  fail unless `sysctl kern.seedenable=1`, as on DragonFly) under dash, standing in
  for DragonFly's /bin/sh (root's shell after install.sh). The stubs and their
  state are at /.sim in that root, beside links to the Debian programs that
  /etc/alternatives names (awk), as the installed /etc has none. Its mounts end
  with the session.

At power-off the folder is packed into the disk again.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from dragonfly_hw import Hardware
from dragonfly_sim import disk_boot
from dragonfly_stubs import GUEST_TOOLS, HOST_TOOLS, World, install

MAGIC = b"DFLYSIM-FILES-1\n"  # 16 bytes, then the tar's length (8, big-endian), then the tar
HEADER = len(MAGIC) + 8
TESTS = Path(__file__).resolve().parent
MARK = "DFLY_GUEST"  # in the environment of every process a guest's session runs: its folder
# sshd runs ForceCommand with root's shell: bash, which reads ~/.bashrc when sshd starts it unless SHLVL
# says it is nested (bash's shell.c, run_by_ssh): the host user's shell setup stays out of the guest.
SIM = "/.sim"  # where the session's root shows the stubs (SIM/tests) and their state (SIM/world)
GUEST_PATH = f"{SIM}/world/bin:/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
HOST_TREES = (("bin", "/usr/bin"), ("sbin", "/usr/sbin"), ("lib", "/usr/lib"), ("lib64", "/usr/lib64"),
              ("libexec", "/usr/libexec"), ("usr", "/usr"))
INSTALLED_TREES = ("etc", "var", "tmp", "root", "home", "boot", "usr/local")
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "tty": (5, 0)}  # Linux's numbers; random and urandom are the stubs'
# What `pkg install` brings (dports puts them in /usr/local/bin): the host's programs stand in for them, and
# the guest has them only once pkg installed the package (the stub pkg lists it in var/db/vmlab-stub-pkgs).
FROM_PACKAGES = {"go": ("/usr/bin/go", "/usr/bin/gofmt"), "rsync": ("/usr/bin/rsync",)}



def pack(files: Path, disk: Path) -> None:
    """Write the tree `files` into the qcow2 `disk` (what a guest's writes would have left there)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        tar.add(str(files), arcname=".")
    blob = MAGIC + struct.pack(">Q", len(data.getvalue())) + data.getvalue()
    with tempfile.NamedTemporaryFile(prefix="dfly-disk-") as tmp:
        tmp.write(blob)
        tmp.flush()
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {tmp.name} 0 {len(blob)}", str(disk)],
                       check=True, capture_output=True)


def _read(disk: Path, count: int) -> bytes:
    """The first `count` bytes of what the guest sees on `disk` (rounded up to 64 KiB blocks)."""
    with tempfile.TemporaryDirectory(prefix="dfly-disk-") as tmp:
        out = Path(tmp) / "head"
        subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={disk}", f"of={out}", "bs=65536",
                        f"count={-(-count // 65536)}"], check=True, capture_output=True)
        return out.read_bytes()[:count]


def unpack(disk: Path, into: Path) -> bool:
    """The installed files of `disk` into `into`; False if the disk holds none (a blank disk)."""
    head = _read(disk, HEADER)
    if not head.startswith(MAGIC):
        return False
    length = struct.unpack(">Q", head[len(MAGIC):])[0]
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_read(disk, HEADER + length)[HEADER:]), mode="r:gz") as tar:
        tar.extractall(into, numeric_owner=True)
    return True


def rc_conf(files: Path, name: str) -> str:
    """A variable of the installed /etc/rc.conf, as rc reads it."""
    conf = files / "etc" / "rc.conf"
    found = re.findall(rf'^{re.escape(name)}="?([^"\n]*)"?', conf.read_text() if conf.is_file() else "", re.M)
    return found[-1] if found else ""


def permit_root_login(files: Path) -> str:
    """The installed sshd_config's PermitRootLogin; OpenSSH's default when it is commented out."""
    conf = files / "etc" / "ssh" / "sshd_config"
    found = re.findall(r"^\s*PermitRootLogin\s+(\S+)", conf.read_text() if conf.is_file() else "", re.M)
    return found[-1] if found else "prohibit-password"


def prerequisite_problem() -> Optional[str]:
    """What this machine lacks to play an installed guest, or None: the host's own sshd (at the
    path Guest starts), unshare and mount for each session's namespace, and root for both."""
    missing = []
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("/usr/sbin/sshd (Debian package openssh-server; its service need not run)")
    missing += [f"{tool} (Debian package util-linux)" for tool in ("/usr/bin/unshare", "/usr/bin/mount")
                if not os.path.exists(tool)]
    if os.geteuid() != 0:
        missing.append("root (each SSH session of the played guest mounts and chroots)")
    return "the played DragonFly guest needs " + ", ".join(missing) if missing else None


class Guest:
    """The installed system booted from `disk`: its files in folder/files, sshd on `port` if rc starts it."""

    def __init__(self, disk: Path, folder: Path, port: int, hardware: Hardware):
        self.disk, self.folder, self.port, self.hardware = disk, folder, port, hardware
        self.files, self.world_dir = folder / "files", folder / "world"
        self.sshd: Optional[subprocess.Popen] = None

    def boot(self) -> bool:
        """Unpack the disk and boot it as DragonFly's boot chain would (dragonfly_sim.disk_boot): sshd
        starts only if the boot reaches rc and rc.conf enables it; a root rc could not remount
        read-write stays read-only in every session. False if the disk has no system on it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if not unpack(self.disk, self.files):
            return False
        booted = disk_boot(self.files, self.hardware)
        (self.folder / "boot.txt").write_text(booted.stops_at or "reached rc\n")
        if booted.stops_at:
            return True  # stuck where the console shows it: nothing answers
        world = World.installed(self.world_dir)
        if not booted.root_rw:
            state = world.load()
            state["root_ro"] = True
            world.save(state)
        if os.environ.get("DFLY_FAIL"):  # a fault a test asks for: sshd gives its sessions no environment
            (world.folder / "fault").write_text(os.environ["DFLY_FAIL"])
        bin_dir = install(world.folder / "bin", world, GUEST_TOOLS, HOST_TOOLS, python="/usr/bin/python3",
                          stubs=f"{SIM}/tests/dragonfly_stubs.py", world_dir=f"{SIM}/world")  # paths in the chroot
        for folder in (Path("/usr/bin"), Path("/usr/sbin")):  # the installed /etc has no Debian alternatives
            for program in folder.iterdir():
                if program.is_symlink() and os.readlink(program).startswith("/etc/alternatives/") \
                        and program.exists() and not (bin_dir / program.name).exists():
                    (bin_dir / program.name).symlink_to(os.path.realpath(program))
        key = self.files / "etc" / "ssh" / "ssh_host_ed25519_key"
        if rc_conf(self.files, "sshd_enable").upper() == "YES" and key.is_file():
            self.sshd = self._start_sshd(key)
        return True

    def _start_sshd(self, host_key: Path) -> subprocess.Popen:
        config = self.folder / "sshd_config"
        command = f"/usr/bin/unshare -m --propagation private {sys.executable} {__file__} session {self.folder}"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {self.files}/root/.ssh/authorized_keys\nAllowUsers root\n"
            f"PermitRootLogin {permit_root_login(self.files)}\nPidFile none\nStrictModes no\nUsePAM no\n"
            f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nSetEnv {MARK}={self.folder} SHLVL=9\n"
            f"ForceCommand {command}\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation folder
        with open(self.folder / "sshd.log", "ab") as log:
            return subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True, preexec_fn=_die_with_parent)

    def wait_listening(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.sshd is not None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)

    def halt(self) -> None:
        """Stop sshd and everything its sessions run, at once, as a machine that stops takes them all."""
        if self.sshd is not None:
            frozen: List[int] = []
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.sshd.pid, signal.SIGSTOP)  # it accepts no more connections
            while True:  # stop them all first (a stopped process forks no more), then kill them
                new = [pid for pid in {*_descendants(self.sshd.pid), *_marked(self.folder)} if pid not in frozen]
                if not new:
                    break
                for pid in new:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                frozen += new
            for pid in [*frozen, self.sshd.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.sshd.wait(timeout=10)
            self.sshd = None

    def power_off(self) -> None:
        """Halt, leaving the files on the disk."""
        self.halt()
        if self.files.is_dir():
            pack(self.files, self.disk)


def _marked(folder: Path) -> List[int]:
    """The guest's processes, whoever their parent now is (a session whose client went away lives on
    in the host, where its machine would have taken it down): sshd gives them MARK in their
    environment, and each session keeps it."""
    mark = f"{MARK}={folder}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _descendants(pid: int) -> List[int]:
    """Every process below `pid` (read from /proc), deepest first."""
    children: Dict[int, List[int]] = {}
    for proc_stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = proc_stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(proc_stat.parent.name))
    return _descendants_of(pid, children)


def _descendants_of(pid: int, children: Dict[int, List[int]]) -> List[int]:
    found: List[int] = []
    for child in children.get(pid, []):
        found += [*_descendants_of(child, children), child]
    return found


def _die_with_parent() -> None:
    """The guest's sshd ends with its QEMU, even a QEMU killed by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _mount(*args: str) -> None:
    subprocess.run(["/usr/bin/mount", *args], check=True)


def session(folder: Path) -> int:
    """sshd's ForceCommand, already in a private mount namespace (unshare -m): the client's command,
    as root, in the chrooted installed system."""
    files, world = folder / "files", folder / "world"
    root = folder / "session-root"
    root.mkdir(exist_ok=True)
    _mount("-t", "tmpfs", "-o", "size=16m,mode=755", "guest-root", str(root))
    for name, host_dir in HOST_TREES:
        (root / name).mkdir(parents=True, exist_ok=True)
        _mount("--bind", host_dir, str(root / name))
        _mount("-o", "remount,bind,ro", str(root / name))
    read_only = json.loads((world / "state.json").read_text()).get("root_ro", False)
    for name in INSTALLED_TREES:
        if (files / name).is_dir():
            (root / name).mkdir(parents=True, exist_ok=True)  # usr/local: the host's /usr has one
            _mount("--bind", str(files / name), str(root / name))
            if read_only:  # rc could not remount root read-write (fstab): DragonFly runs on, read-only
                _mount("-o", "remount,bind,ro", str(root / name))
    have = (files / "var/db/vmlab-stub-pkgs").read_text().split() if (files / "var/db/vmlab-stub-pkgs").is_file() \
        else []
    missing = folder / "not-installed"
    missing.write_text('#!/bin/sh\necho "${0##*/}: not found (pkg has not installed it)" >&2\nexit 127\n')
    missing.chmod(0o755)
    for package, programs in FROM_PACKAGES.items():
        for program in programs:
            if package not in have and os.path.exists(program):
                _mount("--bind", str(missing), str(root / program.lstrip("/")))
    for name in ("dev", "proc", SIM.lstrip("/") + "/tests", SIM.lstrip("/") + "/world"):
        (root / name).mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "size=1m,mode=755", "devfs", str(root / "dev"))
    for node, (major, minor) in DEV_NODES.items():  # nodes, not mounts: one devfs in the mount table
        os.mknod(root / "dev" / node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(root / "dev" / node, 0o666)
    for node in ("random", "urandom"):  # kern.seedenable's rule, kept by the stubs (World.set_seedenable)
        (root / "dev" / node).symlink_to(f"{SIM}/world/devnodes/{node}")
    _mount("-t", "proc", "proc", str(root / "proc"))
    _mount("--bind", str(TESTS), str(root / SIM.lstrip("/") / "tests"))
    _mount("-o", "remount,bind,ro", str(root / SIM.lstrip("/") / "tests"))
    _mount("--bind", str(world), str(root / SIM.lstrip("/") / "world"))
    os.chroot(root)
    os.chdir("/root" if os.path.isdir("/root") else "/")
    world_here = World(Path(SIM) / "world")  # the links of /dev/random as this root shows them
    world_here.set_seedenable(world_here.load()["sysctl"]["kern.seedenable"])
    env = {"PATH": GUEST_PATH, "VMLAB_TEST_PATH": f"{SIM}/world/bin", "HOME": "/root", "USER": "root",
           "LOGNAME": "root", "SHELL": "/bin/sh", MARK: str(folder)}
    if (Path(SIM) / "world" / "fault").is_file():
        env["DFLY_FAIL"] = (Path(SIM) / "world" / "fault").read_text()
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    argv: List[str] = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh", "-i"]
    os.execve("/bin/sh", argv, env)


if __name__ == "__main__":
    if sys.argv[1:2] == ["session"]:
        sys.exit(session(Path(sys.argv[2])))
    sys.exit(f"usage: {sys.argv[0]} session FOLDER")
