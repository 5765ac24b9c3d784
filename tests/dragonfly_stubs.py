"""DragonFly's commands, as vmlab's guest scripts use them, for running those scripts under dash.

No DragonFly system can run here, so install.sh, provision.sh and the profile's
after_restore run under dash with these stand-ins first in PATH. Each accepts the
options and operands DragonFly's own source or man page gives (cited beside it),
refuses the rest as the real command does (its message, its exit status), and
acts on a small world kept in a folder: the live CD's files, the device nodes,
the mounts, the sysctls. What it cannot know is marked [INF].

    world = World.create(folder)            # the live CD, booted
    bin_dir = install(folder / "bin", world)  # one stub per command, first in PATH

The simulator (dragonfly_sim.py) uses the same world when PFI runs install.sh.

The installed guest (dragonfly_guest.py, behind a real sshd) uses World.installed
and GUEST_TOOLS: there each SSH session runs chrooted in its own Linux mount
namespace, and mount, mount_null, mount_tmpfs and umount take DragonFly's syntax
and refusals but make real Linux mounts (a bind for nullfs, tmpfs with its size
limit), so a write to a read-only tree, a full tmpfs and a busy umount fail as the
kernel makes them fail. Every mount ends with the session's namespace.
"""

from __future__ import annotations

import contextlib
import getopt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Tuple

from dragonfly_hw import Hardware, vmlab_install_machine

PYTHON = sys.executable
BOOT2_FLAGS = "VhaCgmnPprsv"  # the only flags boot2's parse() accepts (stand/boot/pc32/boot2/boot2.c)
LIVE_MOUNTS = ("dev", "etc", "var", "root", "tmp", "usr/local/etc")  # devfs, and tmpfs over the CD (its fstab)
CA_BUNDLE = "/usr/local/share/certs/ca-root-nss.crt"  # ca_root_nss, built into the ISO (nrelease/Makefile)
REPOS = "usr/local/etc/pkg/repos"
TOOLS = ("sysctl", "ifconfig", "dd", "fdisk", "disklabel64", "newfs", "newfs_hammer2", "mount", "mount_cd9660",
         "umount", "cpdup", "chroot", "pw", "pkg", "date", "hostname", "poweroff")
# In the installed guest the rest (dd, touch, id, timeout, ...) are Debian's, which vmlab's scripts use portably.
GUEST_TOOLS = ("uname", "mount", "mount_null", "mount_tmpfs", "umount", "pkg", "sysctl", "date", "hostname")
# Host programs a guest script may run besides the stand-ins: ones that behave alike on DragonFly and only
# touch the files they are given. The scripts run with a PATH of one folder holding the stand-ins and links
# to these (`install`), so anything else (reboot, shutdown, a typo) is not found, never the host's.
HOST_TOOLS = ("sh", "awk", "cat", "cp", "df", "dirname", "env", "grep", "head", "install", "kill", "ln", "mkdir",
              "rm", "sleep", "sort", "sync", "timeout", "tr")
NOT_FOUND = re.compile(r"^\S+: \d+: (\S+): not found$", re.M)  # dash's words for a command not on PATH
LINUX_MOUNT, LINUX_UMOUNT = "/usr/bin/mount", "/usr/bin/umount"
UNAME = {"s": "DragonFly", "n": "vmlab", "r": "6.4-RELEASE", "m": "x86_64", "p": "x86_64",
         "v": "DragonFly v6.4.2-RELEASE #1: Mon Nov 20 2023"}

# The live CD's /etc: `make distribution`'s accounts, root's password emptied, and the password-less
# installer (nrelease/root/etc/master.passwd, nrelease/Makefile's customizeiso).
LIVE_PASSWD = ("root::0:0::0:0:Charlie &:/root:/bin/csh\n"
               "toor:*:0:0::0:0:Bourne-again Superuser:/root:\n"
               "daemon:*:1:1::0:0:Owner of many system processes:/root:/sbin/nologin\n"
               "nobody:*:65534:65534::0:0:Unprivileged user:/nonexistent:/sbin/nologin\n"
               "installer::0:0::0:0:DragonFly Installer:/home/installer:/usr/sbin/installer\n")
# /etc.hdd is made by buildiso's `cpdup ${ISOROOT}/etc ${ISOROOT}/etc.hdd`, and release ISOs' package
# step ends by copying the CD's account files over it (`cpdup ${ISOROOT}/etc/master.passwd
# ${ISOROOT}/etc.hdd/master.passwd`, and passwd, group, shells: nrelease/Makefile): so the /etc meant for
# an installed system carries the installer account too (../shared/dragonfly.md, corrected), which is why
# dragonfly-packer (http/dfly_hammer2.sh) and cross-platform-actions (resources/install.sh) run
# `pw -V <target>/etc userdel installer`.
ETC_HDD_PASSWD = LIVE_PASSWD
GROUP = "wheel:*:0:root\ndaemon:*:1:\nnogroup:*:65533:\nnobody:*:65534:\n"


class Refused(Exception):
    """What the real command prints before it exits with `status`."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class World:
    """The booted live CD: its files (live/), device nodes, mounts and sysctls, in a folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.live = folder / "live"  # the CD's file tree, what `cpdup /` copies
        self.state_file = folder / "state.json"
        self.calls = folder / "calls"  # one line per stub call: the command line it got

    @classmethod
    def create(cls, folder: Path, media: Optional[Dict[str, str]] = None,
               hardware: Optional[Hardware] = None) -> "World":
        """A freshly booted live CD in the machine `hardware` describes (default: the one vmlab gives an
        install, from its own QEMU argv); `media` maps QEMU drives to folders with the files they show
        (`seed`: vmlab's seed CD; the installer is the live CD itself)."""
        hardware = hardware or vmlab_install_machine()
        world = cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "README": "DragonFly live CD\n", "autorun.inf": "", "index.html": "", "dflybsd.ico": "",
            "boot/loader": "", "boot/mbr": "", "boot/boot1_64": "", "boot/boot2_64": "", "boot/kernel/kernel": "",
            "boot/loader.conf": 'kernel_options="-C"\ndm_load="YES"\n',  # the CD's, replaced in the target
            "bin/sh": "", "bin/csh": "", "usr/bin/true": "", "usr/local/sbin/pkg": "",
            CA_BUNDLE.lstrip("/"): "-----BEGIN CERTIFICATE-----\n",
            "etc/master.passwd": LIVE_PASSWD, "etc/group": GROUP, "etc/rc.conf": 'sshd_enable="NO"\n',
            "etc.hdd/master.passwd": ETC_HDD_PASSWD, "etc.hdd/group": GROUP, "etc.hdd/rc.conf": "",
            "etc.hdd/fstab": "", "etc.hdd/ssh/sshd_config": "#PermitRootLogin prohibit-password\n",
            "etc.hdd/ssl/openssl.cnf": "", "var/db/.keep": "", "root/.cshrc": 'set prompt = "%N@%m%# "\n',
            f"{REPOS}/df-latest.conf.sample": "Avalon: { url: https://mirror-master.dragonflybsd.org/dports/"
                                              "${ABI}/LATEST, enabled: yes }\n",
        }
        for name, text in files.items():
            (world.live / name).parent.mkdir(parents=True, exist_ok=True)
            (world.live / name).write_text(text)
        for empty in ("dev", "proc", "tmp", "mnt"):
            (world.live / empty).mkdir(exist_ok=True)
        (folder / "dev").mkdir(exist_ok=True)
        for node in (*hardware.disks, *hardware.cds):
            (folder / "dev" / node).touch()
        world.save({"mounts": {}, "fs": {}, "labels": {}, "boot": {}, "sysctl": {"kern.seedenable": 0},
                    "hardware": json.loads(hardware.to_json()), "poweroff": False,
                    "media": {"installer": str(world.live), **(media or {})}})
        world.set_seedenable(0)
        return world

    @classmethod
    def installed(cls, folder: Path) -> "World":
        """The installed system, booted: its mounts are real ones in each SSH session's namespace."""
        world = cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        world.save({"mounts": {}, "fs": {}, "labels": {}, "boot": {}, "sysctl": {"kern.seedenable": 0}, "media": {},
                    "hardware": json.loads(Hardware().to_json()), "poweroff": False, "real_mounts": True})
        world.set_seedenable(0)
        return world

    # --- state ---

    def load(self) -> dict:
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def node(self, name: str, who: str = "", status: int = 1) -> str:
        """The device name of `/dev/NAME` (or NAME) if that node exists, else Refused (ENOENT) told by `who`."""
        dev = name[len("/dev/"):] if name.startswith("/dev/") else name
        if "/" in dev or not (self.folder / "dev" / dev).exists():
            raise Refused(f"{who}{name}: No such file or directory", status)
        return dev

    def make_node(self, dev: str) -> None:
        (self.folder / "dev" / dev).touch()

    @property
    def hardware(self) -> Hardware:
        return Hardware(**self.load()["hardware"])

    def medium(self, dev: str) -> Optional[str]:
        """The folder of files the CD device `dev` shows (acd1 and cd1 show the same drive), if any."""
        state = self.load()
        return state["media"].get(Hardware(**state["hardware"]).cds.get(dev, ""))

    def layout(self, disk: str) -> Dict[str, object]:
        """What the install wrote on `disk` apart from files: boot code, labels, file systems. The
        simulator stores it beside the installed files (LAYOUT) when the machine powers off, so that
        it goes wherever the disk goes (tests/dragonfly_guest.py packs that folder into the qcow2)."""
        state = self.load()
        ours = {k: v for k, v in state["labels"].items() if k.startswith(disk + "s")}
        return {"disk": disk, "mbr": state["boot"].get(disk, False),
                "slices": {s: {"bootblocks": state["boot"].get(s, False), "partitions": p} for s, p in ours.items()},
                "fs": {d: f for d, f in state["fs"].items() if d.startswith(disk + "s")}}

    # --- mounts ---

    def mount(self, dev: str, node: str, fstype: str) -> None:
        state = self.load()
        node = os.path.normpath(node)
        if node in state["mounts"]:
            raise Refused(f"{node}: Device busy")
        state["mounts"][node] = {"dev": dev, "type": fstype}
        self.save(state)

    def umount(self, node: str) -> None:
        state = self.load()
        node = os.path.normpath(node)
        if node not in state["mounts"]:
            raise Refused(f"{node}: not currently mounted")
        if any(other.startswith(node + "/") for other in state["mounts"]):
            raise Refused(f"unmount of {node} failed: Device busy")
        del state["mounts"][node]
        self.save(state)

    def mounted(self, node: str) -> Optional[dict]:
        return self.load()["mounts"].get(os.path.normpath(node))

    def resolve(self, path: str) -> Optional[Path]:
        """Where the live system's `path` is on this host: under a mounted CD, or on the live CD itself."""
        path = os.path.normpath(path)
        for node, m in sorted(self.load()["mounts"].items(), key=lambda kv: -len(kv[0])):
            if m["type"] == "cd9660" and (path == node or path.startswith(node + "/")):
                medium = self.medium(m["dev"])
                return Path(medium) / os.path.relpath(path, node) if medium else None
        return self.live / path.lstrip("/")

    # --- sysctl kern.seedenable and /dev/random ---

    def set_seedenable(self, value: int) -> None:
        """Writes to /dev/random and /dev/urandom fail unless kern.seedenable=1 (sys/kern/kern_memio.c).

        The rule is kept with links: devnodes/random and devnodes/urandom point at a file
        while writes are allowed, and into a folder that does not exist while they are not,
        so a shell's `> /dev/random` fails then as DragonFly's does (a script run by
        `run_command` has its /dev/ paths pointed at devnodes/)."""
        state = self.load()
        state["sysctl"]["kern.seedenable"] = value
        self.save(state)
        nodes = self.folder / "devnodes"
        nodes.mkdir(exist_ok=True)
        for name in ("random", "urandom"):
            link = nodes / name
            link.unlink(missing_ok=True)
            link.symlink_to(self.folder / "entropy" if value else self.folder / "EPERM-kern.seedenable-is-0" / name)
        if not (nodes / "null").exists():
            (nodes / "null").symlink_to("/dev/null")

    def entropy(self) -> bytes:
        """What reached the random pool."""
        path = self.folder / "entropy"
        return path.read_bytes() if path.exists() else b""


def install(bin_dir: Path, world: World, tools: Tuple[str, ...] = TOOLS, host_tools: Tuple[str, ...] = HOST_TOOLS,
            python: str = PYTHON, stubs: str = __file__, world_dir: str = "") -> Path:
    """The only folder of a guest script's PATH: one executable per DragonFly command, running this
    module's stand-in for it, and links to the harmless `host_tools`. A script that runs anything
    else gets dash's `not found` (see unresolved), never the host's program. `python`, `stubs` and
    `world_dir` are the paths the script's root shows (the installed guest's chroot has its own)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\nexec "{python}" "{stubs}" "{world_dir or world.folder}" {tool} "$@"\n')
        path.chmod(0o755)
    for tool in host_tools:
        found = shutil.which(tool, path="/usr/bin:/bin")
        if found is None:
            raise RuntimeError(f"the host has no {tool} (dragonfly_stubs.HOST_TOOLS)")
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).symlink_to(os.path.realpath(found))
    return bin_dir


def unresolved(output: str) -> List[str]:
    """Commands a script ran that were not on its PATH (dash says `script: LINE: NAME: not found`)."""
    return NOT_FOUND.findall(output)


def on_dragonfly(command: str, world: World) -> str:
    """`command` as run on the guest, with /dev/random, /dev/urandom and /dev/null pointed at the world's."""
    return re.sub(r"/dev/(u?random|null)\b", lambda m: f"{world.folder}/devnodes/{m.group(1)}", command)


# --- the stubs: each takes its argv (without the name) and returns an exit status ---


def _opts(argv: List[str], spec: str, tool: str, usage: str = "", count: int = -1) -> Tuple[Dict[str, str], List[str]]:
    """getopt(3) with `spec`; with `count`, exactly that many operands or `usage`."""
    try:
        found, operands = getopt.getopt(argv, spec)
    except getopt.GetoptError as e:
        raise Refused(f"{tool}: illegal option -- {e.opt}") from None
    if count >= 0 and len(operands) != count:
        raise Refused(f"usage: {usage}")
    return {flag[1]: value for flag, value in found}, operands


def sysctl(world: World, argv: List[str]) -> int:
    """Only what the scripts ask (sbin/sysctl): `-n kern.disks`, `-n kern.seedenable`, `kern.seedenable=0|1`."""
    if argv == ["-n", "kern.disks"]:
        print(world.hardware.kern_disks())
    elif argv == ["-n", "kern.seedenable"]:
        print(world.load()["sysctl"]["kern.seedenable"])
    elif len(argv) == 1 and argv[0] in ("kern.seedenable=0", "kern.seedenable=1"):
        old = world.load()["sysctl"]["kern.seedenable"]
        world.set_seedenable(int(argv[0][-1]))
        print(f"kern.seedenable: {old} -> {argv[0][-1]}")
    else:
        raise Refused(f"sysctl: unknown oid '{' '.join(argv)}' (this stub answers only the documented argv)")
    return 0


def ifconfig(world: World, argv: List[str]) -> int:
    if argv != ["-l"]:
        raise Refused(f"ifconfig: {' '.join(argv)}: this stub answers only `ifconfig -l`")
    print(" ".join([*world.hardware.nics, "lo0"]))
    return 0


def dd(world: World, argv: List[str]) -> int:
    """dd OPERAND=VALUE ...: writing to a disk that is not there fails (bin/dd)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in ("if", "of", "bs", "count", "seek", "skip", "conv") or not value:
            raise Refused(f"dd: unknown operand {key}")
        if key == "of":
            disk = world.node(value, "dd: ")
            if disk in world.hardware.disks:  # zeroing its start wipes the MBR and the slice's label
                state = world.load()
                state["boot"] = {k: v for k, v in state["boot"].items() if not k.startswith(disk)}
                state["labels"] = {k: v for k, v in state["labels"].items() if not k.startswith(disk)}
                world.save(state)
    return 0


def fdisk(world: World, argv: List[str]) -> int:
    """fdisk -I [-B] disk writes one DragonFly slice over the whole disk (sbin/fdisk/fdisk.c)."""
    opts, operands = _opts(argv, "BCEIab:f:p:istuvx1234", "fdisk",
                           "fdisk [-BCEIaistu] [-b bootcode] [-p diskimage] [-1234] [disk]", 1)
    disk = world.node(operands[0], "fdisk: cannot open disk ")
    if "I" not in opts:
        raise Refused("fdisk: without -I or -f it asks questions (this stub has nobody to answer them)")
    print(f"******* Working on device /dev/{disk} *******")
    world.make_node(f"{disk}s1")
    state = world.load()
    state["boot"][disk] = "B" in opts or state["boot"].get(disk, False)  # -B: the MBR's boot code (/boot/mbr)
    world.save(state)
    return 0


def disklabel64(world: World, argv: List[str]) -> int:
    """Read (no flag), -w [-r] [-B] SLICE auto, or -R SLICE FILE (sbin/disklabel64/disklabel64.c)."""
    opts, operands = _opts(argv, "BNRWb:enrs:Vw", "disklabel64")
    usage = Refused("usage: disklabel64 [-r] disk | -w [-r] disk [type] | -R [-r] disk protofile")
    if len([f for f in "NRWew" if f in opts]) > 1 or not operands:
        raise usage
    slice_ = world.node(operands[0], "disklabel64: ", 4)
    labels = world.load()["labels"]
    if "B" in opts:  # the slice's boot1/boot2 (/boot/boot1_64, /boot/boot2_64), which the MBR loads
        state = world.load()
        state["boot"][slice_] = True
        world.save(state)
    if "w" in opts:
        if len(operands) > 3:
            raise usage
        if len(operands) > 1 and operands[1] != "auto":
            raise Refused("disklabel64: no disktab(5) support yet; only 'auto' allowed")
        _save_label(world, slice_, {})  # a virgin label: no partitions, so no s1a.. nodes yet
    elif "R" in opts:
        if len(operands) != 2:
            raise usage
        if slice_ not in labels:
            raise Refused("disklabel64: ioctl DIOCWDINFO64: no disk label on disk;\nadd \"-r\" to install initial label")  # noqa: E501
        _save_label(world, slice_, _parse_label(Path(operands[1])))
    elif "e" in opts:
        raise Refused("disklabel64: -e runs $EDITOR on the label (not modelled)")
    else:
        if slice_ not in labels:
            raise Refused("disklabel64: ioctl DIOCGDINFO64: no disk label on disk;\nadd \"-r\" to install initial label", 4)  # noqa: E501
        print(_show_label(slice_, labels[slice_]))
    return 0


def _save_label(world: World, slice_: str, parts: Dict[str, str]) -> None:
    state = world.load()
    state["labels"][slice_] = parts
    world.save(state)
    for letter in parts:
        world.make_node(f"{slice_}{letter}")


def _show_label(slice_: str, parts: Dict[str, str]) -> str:
    """display() of disklabel64.c, with the fields a label file needs to be read back."""
    lines = [f"# /dev/{slice_}:", "#", "diskid: 2f5a3c1e-0000-11ef-8000-000000000001", "label: ",
             "boot2 data base:      0x000000001000", "partitions data base: 0x000000100a00",
             "partitions data stop: 0x0004ffffe000", "backup label:         0x0004ffffe000",
             "total size:           0x0004fffff000\t# 20479.99 MB", "alignment: 4096",
             "display block size: 1024\t# for partition display and edit only", "", "16 partitions:",
             "#          size     offset    fstype   fsuuid"]
    lines += [f"  {p}: {fs}" for p, fs in sorted(parts.items())] or [
        "# EXAMPLE", "#a:          4g          0    4.2BSD", "#a:          *           *    4.2BSD"]
    return "\n".join(lines)


FSTYPES = ("unused", "swap", "4.2BSD", "HAMMER", "HAMMER2", "ccd", "vinum")  # a few of sys/dtype.h's names


def _parse_label(path: Path) -> Dict[str, str]:
    """getasciilabel(): partition lines need the display block size first; size, offset, fstype."""
    parts: Dict[str, str] = {}
    blksize = npart = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if ":" not in text:
            raise Refused(f"line {number}: syntax error")
        key, _, value = (s.strip() for s in text.partition(":"))
        if m := re.fullmatch(r"(\d+) partitions", key):
            npart = int(m.group(1))
        elif key == "display block size":
            blksize = int(value.split()[0])
        elif re.fullmatch(r"[a-z]", key):
            if not blksize:
                raise Refused("block size to use for partition display was not specified!")
            if ord(key) - ord("a") >= npart:
                raise Refused(f"line {number}: partition name out of range a-{chr(ord('a') + npart - 1)}: {key}")
            fields = value.split()
            if len(fields) < 3:
                raise Refused(f"line {number}: too few numeric fields")
            size, offset, fstype = fields[:3]
            if not re.fullmatch(r"\*|\d+[kKmMgGtT%]?", size) or not re.fullmatch(r"\*|\d+", offset):
                raise Refused(f"line {number}: {size} {offset}: bad partition size or offset")
            if fstype.lower() not in (f.lower() for f in FSTYPES):
                raise Refused(f"line {number}: Warning, unknown filesystem type {fstype}")
            parts[key] = fstype
        elif key not in ("diskid", "label", "boot2 data base", "partitions data base", "partitions data stop",
                         "backup label", "total size", "alignment") and not key.endswith("-stor_uuid"):
            raise Refused(f"line {number}: {key}: Unknown disklabel field")
    return parts


def newfs(world: World, argv: List[str]) -> int:
    """newfs [options] special: UFS (the newfs(8) synopsis' options)."""
    _, operands = _opts(argv, "NCEOUlL:S:T:a:b:c:d:e:f:g:h:i:k:m:n:o:p:r:s:t:u:vx:", "newfs",
                        "newfs [-NCEOUl] [-L volname] ... special", 1)
    _format(world, operands[0], "ufs", "newfs")
    return 0


def newfs_hammer2(world: World, argv: List[str]) -> int:
    """newfs_hammer2 [-b bootsize] [-r auxsize] [-V version] [-L label ...] special (newfs_hammer2(8))."""
    try:
        found, operands = getopt.getopt(argv, "b:r:V:L:")
    except getopt.GetoptError as e:
        raise Refused(f"newfs_hammer2: illegal option -- {e.opt}") from None
    if not operands:
        raise Refused("newfs_hammer2: You must specify at least one disk device")
    labels = [v for f, v in found if f == "-L"] or ["ROOT" if operands[0].endswith("d") else "DATA"]
    for special in operands:
        _format(world, special, "hammer2:" + ",".join(["LOCAL", *[x for x in labels if x != "none"]]), "newfs_hammer2")
    return 0


def _format(world: World, special: str, fs: str, tool: str) -> None:
    dev = world.node(special, f"{tool}: ")
    state = world.load()
    slice_, letter = dev[:-1], dev[-1]
    wanted = {"ufs": "4.2BSD", "hammer2": "HAMMER2"}[fs.split(":")[0]]
    if state["labels"].get(slice_, {}).get(letter, wanted).lower() != wanted.lower():
        print(f"{tool}: warning: partition {dev} is labelled {state['labels'][slice_][letter]}", file=sys.stderr)
    state["fs"][dev] = fs
    world.save(state)


def mount(world: World, argv: List[str]) -> int:
    """mount [-adfpruvw] [-o options] [-t type] special node (sbin/mount); no -t means ufs."""
    if world.load().get("real_mounts"):
        return _guest_mount(argv)
    opts, operands = _opts(argv, "adF:fo:prt:uvw", "mount",
                           "mount [-adfpruvw] [-F fstab] [-o options] [-t type] special node", 2)
    fstype = opts.get("t", "ufs")
    special, node = operands
    if not Path(node).is_dir():
        raise Refused(f"mount: {node}: No such file or directory")
    if fstype in ("devfs", "procfs", "tmpfs", "null"):
        world.mount(special, node, fstype)
        return 0
    if fstype == "cd9660":
        return mount_cd9660(world, [special, node])
    dev, _, label = special.partition("@")
    dev = world.node(dev, f"mount_{fstype}: ")
    made = world.load()["fs"].get(dev, "")
    if fstype == "hammer2":
        if not made.startswith("hammer2:") or (label or "LOCAL") not in made.split(":")[1].split(","):
            raise Refused(f"mount_hammer2: {special} on {node}: No such file or directory")
    elif made != fstype:
        raise Refused(f"mount: /dev/{dev}: Invalid argument (not a {fstype} file system)")
    world.mount(dev, node, fstype)
    return 0


def mount_cd9660(world: World, argv: List[str]) -> int:
    """mount_cd9660 [-begjrv] [-o options] [-s startsector] special node: only CDs that exist."""
    _, operands = _opts(argv, "begjo:rs:v", "mount_cd9660",
                        "mount_cd9660 [-begjrv] [-o options] [-s startsector] special node", 2)
    dev = world.node(operands[0], "mount_cd9660: ")
    if world.medium(dev) is None:
        raise Refused(f"mount_cd9660: {operands[0]}: Invalid argument")
    world.mount(dev, operands[1], "cd9660")
    return 0


def umount(world: World, argv: List[str]) -> int:
    opts, operands = _opts(argv, "fv", "umount", "umount [-fv] special | node", 1)
    if world.load().get("real_mounts"):
        return _guest_umount(operands[0], "f" in opts)
    try:
        world.umount(operands[0])
    except Refused as e:
        raise Refused(f"umount: {e}") from None
    return 0


# --- the installed guest's mounts: DragonFly's syntax, real Linux mounts in the session's namespace ---


def _linux(argv: List[str], tool: str) -> None:
    """Run util-linux's mount or umount; its failure as DragonFly words it (strerror)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        err = done.stderr.strip()
        if "busy" in err:
            raise Refused(f"{tool}: unmount of {argv[-1]} failed: Device busy")
        if "not mounted" in err:
            raise Refused(f"{tool}: {argv[-1]}: not currently mounted")
        raise Refused(f"{tool}: {argv[-1]}: {err.splitlines()[-1] if err else 'failed'}")


def _mount_point(node: str, tool: str) -> str:
    """DragonFly's checkdirs/realpath: the mount point must be an existing folder."""
    if not Path(node).is_dir():
        raise Refused(f"{tool}: {node}: No such file or directory")
    return os.path.realpath(node)


def _size_bytes(text: str, tool: str) -> int:
    """dehumanize_number(3) as mount_tmpfs -s takes it: digits and an optional k, m, g or t."""
    m = re.fullmatch(r"(\d+)([kKmMgGtT]?)", text)
    if not m:
        raise Refused(f"{tool}: invalid size '{text}'")  # [INF: the message]
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def _guest_mount(argv: List[str]) -> int:
    """mount -p (fstab lines of the mount table), or -t tmpfs|null|devfs|procfs [-o options] special node."""
    opts, operands = _opts(argv, "adF:fo:prt:uvw", "mount")
    if "p" in opts or not operands:
        for dev, node, fstype, options in _mount_table():
            print(f"{dev}\t{node}\t{fstype}\t{options}\t0 0" if "p" in opts else f"{dev} on {node} ({fstype})")
        return 0
    if len(operands) != 2:
        raise Refused("usage: mount [-dfpruvw] [-o options] [-t ufs | external_type] special node")
    fstype, (special, node) = opts.get("t", "ufs"), operands
    options = [o for o in opts.get("o", "").split(",") if o]
    if fstype == "tmpfs":
        size = [o.split("=", 1)[1] for o in options if o.startswith("size=")]
        return mount_tmpfs(World(Path("/")), [*(["-s", size[-1]] if size else []), special, node])
    if fstype == "null":
        return mount_null(World(Path("/")), [*(["-o", ",".join(options)] if options else []), special, node])
    point = _mount_point(node, "mount")
    if fstype == "devfs":
        _linux([LINUX_MOUNT, "--bind", "/dev", point], "mount")
    elif fstype == "procfs":
        _procfs(point)
    else:
        raise Refused(f"mount: exec mount_{fstype} not found in /sbin, /usr/sbin: No such file or directory")
    return 0


def _procfs(point: str) -> None:
    """DragonFly's procfs has curproc (Linux's has self): a read-only tmpfs of links into Linux's /proc,
    one per process running at mount time [INF: a stand-in; processes started later are missing]."""
    _linux([LINUX_MOUNT, "-t", "tmpfs", "-o", "size=1m,mode=555", "procfs", point], "mount")
    os.symlink("/proc/self", os.path.join(point, "curproc"))
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            os.symlink(f"/proc/{pid}", os.path.join(point, pid))
    _linux([LINUX_MOUNT, "-o", "remount,ro", point], "mount")


def mount_null(world: World, argv: List[str]) -> int:
    """mount_null [-o options] target mount_point (sbin/mount_null): a bind, read-only with -o ro."""
    opts, operands = _opts(argv, "o:", "mount_null", "mount_null [-o options] target_fs mount_point", 2)
    target, node = operands
    if not os.path.isdir(target):
        raise Refused(f"mount_null: {target}: No such file or directory")
    point = _mount_point(node, "mount_null")
    _linux([LINUX_MOUNT, "--bind", target, point], "mount_null")
    if "ro" in opts.get("o", "").split(",") or "rdonly" in opts.get("o", "").split(","):
        _linux([LINUX_MOUNT, "-o", "remount,bind,ro", point], "mount_null")
    return 0


def mount_tmpfs(world: World, argv: List[str]) -> int:
    """mount_tmpfs [-C] [-f nodes] [-g group] [-m mode] [-n nodes] [-o options] [-s size] [-u user]
    tmpfs mount_point (sbin/mount_tmpfs): a tmpfs of at most `size` (default: no limit but memory)."""
    opts, operands = _opts(argv, "Cf:g:m:n:o:s:u:", "mount_tmpfs",
                           "mount_tmpfs [-C] [-f nodes] [-g group] [-m mode] [-n nodes] [-o options] [-s size] "
                           "[-u user] tmpfs mount_point", 2)
    point = _mount_point(operands[1], "mount_tmpfs")
    size = _size_bytes(opts["s"], "mount_tmpfs") if "s" in opts else 0
    _linux([LINUX_MOUNT, "-t", "tmpfs", "-o", f"size={size}" if size else "size=50%", "tmpfs", point], "mount_tmpfs")
    return 0


def _guest_umount(node: str, force: bool) -> int:
    """umount [-f] node; -f unmounts a busy file system too (Linux: lazily, -l)."""
    point = os.path.realpath(node)
    if point not in {n for _, n, _, _ in _mount_table()}:
        raise Refused(f"umount: {node}: not currently mounted")
    _linux([LINUX_UMOUNT, *(["-l"] if force else []), point], "umount")
    return 0


def _mount_table() -> List[Tuple[str, str, str, str]]:
    """The session's mounts as DragonFly names their types: device, node, type, options."""
    names = {"proc": "procfs", "devtmpfs": "devfs", "ext4": "ufs", "overlay": "null", "xfs": "ufs"}
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        _, _, _, root, node, options = fields.split()[:6]
        fstype, dev = tail.split()[:2]
        node = node.replace("\\040", " ")
        if dev == "procfs" and fstype == "tmpfs":
            fstype = "procfs"
        elif root != "/" or node == "/dev" or dev in ("udev", "devtmpfs"):
            fstype = "null" if root != "/" else "devfs"
        table.append((dev, node, names.get(fstype, fstype), "ro" if options.startswith("ro") else "rw"))
    return table


def uname(world: World, argv: List[str]) -> int:
    """uname [-amnprsv] (usr.bin/uname): sysname nodename release version machine processor."""
    opts, operands = _opts(argv, "amnprsv", "uname", "uname [-amnprsv]", 0)
    flags = "snrvmp" if "a" in opts else "".join(f for f in "snrvmp" if f in opts) or "s"
    print(" ".join(UNAME[f] for f in flags))
    return 0


def cpdup(world: World, argv: List[str]) -> int:
    """cpdup [options] src dst (bin/cpdup/cpdup.c): copies a tree of the live system, then removes from
    the target what the source lacks, asking first about each unless -i0.

    As DoCopy() does, it never crosses a mount point, neither in the source (the live CD's tmpfs
    /etc, /var, /root, /tmp, /usr/local/etc, devfs, a CD on /mnt) nor in the target (the /boot
    file system mounted in it): it makes the folder and does not go in. Its removal pass
    (RemoveRecur) asks `remove PATH (Yes/No) [No]? ` on stderr and reads the answer from stdin
    (YesNo), which under rc, and so under PFI, is the console: nobody answers, and cpdup waits.
    With DFLY_CPDUP_SECONDS set, copying `/` takes that long, growing the target as it goes."""
    try:
        found, operands = getopt.getopt(argv, "CdF:fH:hIi:j:K:klM:mnoqRSs:uVvX:x")
    except getopt.GetoptError as e:
        raise Refused(f"cpdup: illegal option: -{e.opt}") from None
    for flag, value in found:
        if flag in ("-i", "-j", "-s") and value not in ("0", "1"):
            raise Refused(f"cpdup: option requires boolean argument (0 or 1): {flag}")
    opts = dict(found)
    ask, keep = opts.get("-i", "1") == "1", "-o" in opts  # AskConfirmation = 1 unless -i0; -o: NoRemoveOpt
    if len(operands) > 2:
        raise Refused("cpdup: too many arguments")
    if len(operands) < 2:
        raise Refused("usage: cpdup [options] src dest")
    src, dst = operands
    source = world.resolve(src)
    if source is None or not source.exists():
        raise Refused(f"cpdup: {src}: No such file or directory")
    mounts = list(world.load()["mounts"])
    prefix, target = src.rstrip("/") + "/", os.path.normpath(dst)
    source_mounts = {os.path.relpath(n, src) for n in [*mounts, *("/" + d for d in LIVE_MOUNTS if src == "/")]
                     if n.startswith(prefix)}
    target_mounts = {os.path.relpath(n, target) for n in mounts if n.startswith(target + "/")}

    def remove(path: str, rel: str) -> None:
        """RemoveRecur(): what is in it first, then itself; never into another file system."""
        if rel in target_mounts:
            return
        if os.path.isdir(path) and not os.path.islink(path):
            for name in sorted(os.listdir(path)):
                remove(os.path.join(path, name), os.path.join(rel, name))
        if keep:
            return
        if ask:
            print(f"remove {path} (Yes/No) [No]? ", end="", file=sys.stderr, flush=True)
            if not sys.stdin.readline().lower().startswith("y"):  # EOF or anything else: No
                return
        if os.path.isdir(path) and not os.path.islink(path):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        else:
            os.unlink(path)

    def copy(here: Path, there: str, rel: str) -> None:
        if rel != "." and rel in target_mounts:
            return  # the target crosses a mount point
        os.makedirs(there, exist_ok=True)
        if rel != "." and rel in source_mounts:
            return  # the source crosses a mount point
        names = sorted(os.listdir(here))
        for name in names:
            s, d, r = here / name, os.path.join(there, name), os.path.normpath(os.path.join(rel, name))
            if s.is_symlink():
                if os.path.lexists(d):
                    os.unlink(d)
                os.symlink(os.readlink(s), d)
            elif s.is_dir():
                copy(s, d, r)
            else:
                shutil.copy2(s, d)
        for name in sorted(set(os.listdir(there)) - set(names)):  # in the target only
            remove(os.path.join(there, name), os.path.normpath(os.path.join(rel, name)))

    copy(source, target, ".")
    seconds = float(os.environ.get("DFLY_CPDUP_SECONDS", "0")) if src == "/" else 0
    filler = Path(dst) / "usr" / "share" / "filler"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        filler.parent.mkdir(parents=True, exist_ok=True)
        with open(filler, "ab") as f:
            f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
        time.sleep(0.2)
    return 0


def chroot(world: World, argv: List[str]) -> int:
    """chroot NEWROOT COMMAND ...: the target has DragonFly's pw, and nothing else is modelled."""
    if len(argv) < 2:
        raise Refused("usage: chroot newroot [command]")
    root, command = argv[0], argv[1:]
    if command[0] not in ("pw", "/usr/sbin/pw"):
        raise Refused(f"chroot: {command[0]}: this stub runs only pw", 127)
    return pw(world, command[1:], root=root)


PW_OPTS = {"useradd": "C:qn:u:c:d:e:p:g:G:mM:k:s:oL:i:w:h:H:Db:NPy:Y",
           "usermod": "C:qn:u:c:d:e:p:g:G:ml:M:k:s:oL:w:h:H:FNPY",
           "userdel": "C:qn:u:rYy:"}


def pw(world: World, argv: List[str], root: str = "/") -> int:
    """pw [-V etcdir] useradd|usermod|userdel name [options] (usr.sbin/pw, pw(8)); -w no writes `*`;
    userdel drops the account from master.passwd and passwd (its home only with -r)."""
    etc = Path(root) / "etc"
    if argv[:1] == ["-V"]:
        etc, argv = Path(argv[1]), argv[2:]
    if not argv or argv[0] not in PW_OPTS:
        raise Refused(f"pw: unknown or unsupported command {argv[:1]}", 64)
    command, rest = argv[0], argv[1:]
    name = rest.pop(0) if rest and not rest[0].startswith("-") else None
    opts, operands = _opts(rest, PW_OPTS[command], "pw")
    name = opts.get("n", name)
    if operands or not name:
        raise Refused("pw: usage: pw useradd|usermod|userdel name [switches]", 64)
    if "w" in opts and opts["w"] not in ("no", "none", "yes", "random"):
        raise Refused(f"pw: invalid method `{opts['w']}'", 64)
    passwd = etc / "master.passwd"
    if not passwd.is_file():
        raise Refused(f"pw: {passwd}: No such file or directory", 72)
    users = [line.split(":") for line in passwd.read_text().splitlines() if line and not line.startswith("#")]
    found = next((u for u in users if u[0] == name), None)
    if command in ("usermod", "userdel"):
        if found is None:
            raise Refused(f"pw: user `{name}' does not exist", 67)
        if command == "userdel":
            users.remove(found)
    else:
        if found is not None:
            raise Refused(f"pw: login name `{name}' already exists", 65)
        uid = int(opts.get("u", max([1000 - 1, *(int(u[2]) for u in users if int(u[2]) < 65000)]) + 1))
        found = [name, "*", str(uid), str(uid), "", "0", "0", "User &", f"/home/{name}", "/bin/sh"]
        users.append(found)
        group = etc / "group"
        group.write_text(group.read_text() + f"{name}:*:{uid}:\n")
        if "m" in opts:
            if root == "/":
                raise Refused("pw: -m would make the home folder on the live CD, not in the target "
                              "(use chroot TARGET pw useradd ...)", 70)
            home = Path(root) / found[8].lstrip("/")
            home.mkdir(parents=True, exist_ok=True)  # pw makes the home's parent too [INF]
            os.chown(home, uid, uid)
    if "s" in opts:
        found[9] = opts["s"]
    if "w" in opts:
        found[1] = {"no": "*", "none": "", "yes": "$6$" + name, "random": "$6$random"}[opts["w"]]
    passwd.write_text("".join(":".join(u) + "\n" for u in users))
    (etc / "passwd").write_text("".join(":".join([u[0], "*", *u[2:4], *u[7:]]) + "\n" for u in users))
    return 0


def pkg(world: World, argv: List[str]) -> int:
    """pkg(8) from dports as DragonFly ships it, on the installed root $VMLAB_ROOT.

    There is no pkg(7) bootstrapper on DragonFly: `pkg bootstrap -f` fails (pkg's main.c).
    Without df-latest.conf no repository is configured; without /etc/ssl/cert.pem the
    https mirror cannot be verified [INF: the message]. `pkg upgrade pkg` behaves as 6.4.0's
    pkg 1.14 did: its lua script fails and df-latest.conf is gone (decuser's 6.4.0 notes)."""
    root = Path(os.environ.get("VMLAB_ROOT") or "/")
    if not argv:
        raise Refused("Usage: pkg [-v] [-d] [-l] [-N] [-j <jail name or id>|-c <chroot path>|-r <rootdir>] "
                      "[-C <configuration file>] [-R <repo config dir>] [-o var=value] [-4|-6] <command> [<args>]")
    command, rest = argv[0], argv[1:]
    yes = os.environ.get("ASSUME_ALWAYS_YES", "").upper() in ("YES", "TRUE", "1")
    repo = root / REPOS / "df-latest.conf"
    if command == "bootstrap":
        opts, _ = _opts(rest, "fy", "pkg bootstrap")
        if "f" in opts:
            raise Refused("pkg: pkg(7) bootstrapper not found at /usr/sbin/pkg.")
        print("pkg(8) already installed, use -f to force.")
        return 0
    if command not in ("update", "upgrade", "install"):
        raise Refused(f"pkg: unknown command: {command}")
    opts, names = _opts(rest, "fqyn", f"pkg {command}")
    if not repo.is_file():
        raise Refused("No active remote repositories configured.")
    cert = root / "etc/ssl/cert.pem"
    if not (cert.is_symlink() and (root / os.readlink(cert).lstrip("/")).is_file()) and not cert.is_file():
        raise Refused("Updating Avalon repository catalogue...\npkg: https://mirror-master.dragonflybsd.org/dports/"
                      "dragonfly:6.4:x86:64/LATEST/meta.conf: Authentication error\nrepository Avalon has no meta "
                      "file, using default settings\nUnable to update repository Avalon\nError updating repositories!")
    print("Updating Avalon repository catalogue...\nAvalon repository is up to date.\nAll repositories are up to date.")
    if command == "update":
        return 0
    if "y" not in opts and not yes:
        print("Proceed with this action? [y/N]: ")
        return 1
    if command == "upgrade" and names == ["pkg"]:
        repo.unlink()
        raise Refused("[1/1] Upgrading pkg from 1.14.4 to 1.18.4...\npkg: Failed to execute lua script: [string \"-- "
                      "args: etc/pkg.conf.sample...\"]:12: attempt to call a nil value (field 'stat')\n"
                      "pkg: lua script failed\nNo active remote repositories configured.", 3)
    installed = root / "var/db/vmlab-stub-pkgs"
    installed.parent.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] Installing {name}...")
    installed.write_text("".join(f"{n}\n" for n in names) + (installed.read_text() if installed.exists() else ""))
    return 0


def date(world: World, argv: List[str]) -> int:
    """date [-jnu] [-r seconds] [-f input_fmt new_date] (bin/date): no GNU `-s @EPOCH`."""
    opts, operands = _opts(argv, "d:f:jnr:t:uv:", "date")
    if "f" in opts:
        if len(operands) != 1 or opts["f"] != "%s" or not operands[0].isdigit():
            raise Refused(f"date: Cannot parse \"{' '.join(operands)}\" with \"{opts['f']}\"")
        print(time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(int(operands[0]))))
        return 0
    if operands and not operands[0].startswith("+") and not re.fullmatch(r"(\d\d){2,6}(\.\d\d)?", operands[0]):
        raise Refused("date: illegal time format")
    if operands and operands[0].startswith("+"):  # strftime(3), %s too (the mount suite times its checks)
        now = time.time()
        print(time.strftime(operands[0][1:].replace("%s", str(int(now))), time.gmtime(now)))
        return 0
    print(time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime()))
    return 0


def hostname(world: World, argv: List[str]) -> int:
    _, operands = _opts(argv, "fs", "hostname")
    if len(operands) > 1:
        raise Refused("usage: hostname [-fs] [name-of-host]")
    return 0


def poweroff(world: World, argv: List[str]) -> int:
    """reboot(8) as poweroff: ends every process, its caller first (here: the script that called it)."""
    if argv and argv != ["-q"]:
        raise Refused("usage: poweroff [-dlnpq] [-k kernel]")
    state = world.load()
    state["poweroff"] = True
    world.save(state)
    print("Powering off...", flush=True)
    os.kill(os.getppid(), signal.SIGTERM)
    return 0


def main(argv: List[str]) -> NoReturn:
    world, tool, args = World(Path(argv[0])), argv[1], argv[2:]
    with open(world.calls, "a") as log:
        log.write(" ".join([tool, *args]) + "\n")
    failing, _, why = os.environ.get("DFLY_FAIL", "").partition(":")  # a fault a test asks for
    try:
        if tool == failing:
            raise Refused(f"{tool}: {why}")
        status = globals()[tool](world, args)
    except Refused as e:
        print(e, file=sys.stderr)
        status = e.status
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
