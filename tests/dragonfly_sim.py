"""A simulated DragonFlyBSD 6.4 machine on a QEMU-like serial socket, for tests.

No DragonFly ISO can be fetched here, so this plays what its serial console
would show, built from DragonFly's own strings (../shared/dragonfly-console.md
and dragonfly.md, which cite the sources; [INF] there means reconstructed), and
refuses what DragonFly refuses:

- the BIOS loader (dloader): it drains keys typed before it starts; `Console:
  serial port`, the banner `DragonFly/i386 bootstrap loader, Revision 1.1`, the
  real menu items, `\\rBooting in %d second%s... `; `9` or ESC gives `OK `;
  Enter, `1` or the end of the countdown boot with the video console, after
  which serial stays silent. At `OK ` the line editor of libstand's ngets()
  (echo, backspace, Ctrl-U clears the line): keys typed while it redraws stack
  up (`9set console=comconsole`) and an unknown word answers `unknown command`;
- the machine vmlab's QEMU command line describes (dragonfly_hw, --hardware): a
  virtio disk is vbd0, virtio-net vtnet0, each IDE CD both acdN and cdN, and the
  kernel's probe lines name them;
- the live CD's rc with rc.d/pfi as written (nrelease/root/etc/rc.d/pfi): it tries
  `acd0 cd0 acd1 cd1` in turn, each `echo -n` fragment of `Looking for pfi.conf on
  /dev/X...`, ` /dev/X ok...`, ` found!` apart, and every cd9660 mount makes the
  kernel log `cd9660: RockRidge Extension` on the console between them
  (sys/vfs/isofs/cd9660/cd9660_vfsops.c; the CD runs no syslogd); it reads pfi.conf
  from the seed ISO vmlab really built (extracted with xorriso) and runs
  `pfi_script` from it only if that file is there and executable, under dash with
  a PATH of DragonFly's stand-ins (dragonfly_stubs.py) and listed harmless host
  tools only (a command neither is ends the run with a panic naming it), and with
  the console as its stdin (etc/rc: the console is rc's controlling terminal), so
  that cpdup's `remove X (Yes/No) [No]?` waits for an answer nobody types;
- getty's banner and `login:` on ttyd0; without a video device (--no-video)
  init and getty report the missing ttyv* right after the prompt; root's csh
  (`root@# `) and a small sh: `mount_cd9660` mounts only devices that exist, `ls`
  shows only what is mounted, `sh FILE` runs only a file that is there;
- booting an installed disk (--boot disk) as a PC boots DragonFly (disk_boot): the
  MBR's code (fdisk -B), boot1/boot2 in the slice (disklabel64 -B), /boot.config
  (boot2.c's flags), loader.conf's console, the kernel's root mount (`no disk named
  'X'`) and rc's remount of root as /etc/fstab says (etc/rc.d/root); where DragonFly
  talks to the video console only, serial stays silent;
- --replay plays back a console record vmlab kept (console.timed.jsonl), so that
  the transcript of a failure on a real guest becomes a test (docs/dragonfly.md).

    python tests/dragonfly_sim.py --socket PATH [--seed ISO] [--world DIR] [--boot cd|disk]
                                  [--disk DIR] [--no-video] [--fault NAME] [--tick SECONDS]
                                  [--hardware JSON] [--replay RECORD [--replay-speed F]]

It accepts one connection on PATH and plays; when the guest powers off it closes
the connection and exits 0, as QEMU does; if the client hangs up first, exit 1.
Everything sent and received is appended to `PATH.transcript` (`< ` printed,
`> ` typed); with --logfile, the guest's bytes also go there (QEMU's logfile=).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from dragonfly_hw import Hardware
from dragonfly_stubs import BOOT2_FLAGS, Refused, World, install, mount_cd9660, umount, unresolved

FAULTS = ("none", "panic", "hang-after-kernel", "boot-loop", "drop-first-key", "drop-all-keys", "slow-prompt",
          "login-incorrect", "login-refused")
DATE = "Feb 21 20:19:12"
BIOS = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)", "", "iPXE (https://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM", "")
LOADER = ("Console: serial port", "BIOS 639kB/2096000kB available memory", "",
          "DragonFly/i386 bootstrap loader, Revision 1.1", "(root@bsd64.dragonflybsd.org, Mon Nov 20 2023)")
LOGO = ("  ,--,                       ,--,  ", "  |   `-,       _:_       ,-'   |  ", "   `,    `-,   (/ \\)   ,-'    ,'   ",  # noqa: E501 (DragonFly's own text)
        "     `-,    `-,/   \\,-'    ,-'     ", "        `------{   }------'        ", "    ,----------{   }----------,    ",  # noqa: E501 (DragonFly's own text)
        "   |        _,-{   }-,_        |   ", "    `-,__,-'   \\   /   `-,__,-'    ", "               | |               ")  # noqa: E501 (DragonFly's own text)
MENU_ITEMS = ("1. Boot DragonFly [kernel]", "2. Boot DragonFly in Safe Mode", "3. Boot DragonFly without AHCI driver",
              "4. Boot DragonFly without ACPI driver", "9. Escape to loader prompt (also ESC)",
              "r. Boot DragonFly to a rescue ramdisk", "s. Boot DragonFly in single user mode",
              "v. Boot DragonFly with verbose logging", "R. Reboot")
LOADER_COMMANDS = ("set", "unset", "show", "boot", "autoboot", "load", "unload", "lsmod", "echo", "include",
                   "optinclude", "help", "?", "reboot", "ls", "more", "cd", "optcd", "menu", "lunset", "lunsetif")
KERNEL = ("Copyright (c) 2003-2023 The DragonFly Project.",
          "Copyright (c) 1992-2003 The FreeBSD Project.",
          "Copyright (c) 1979, 1980, 1983, 1986, 1988, 1989, 1991, 1992, 1993, 1994",
          "\tThe Regents of the University of California. All rights reserved.",
          "DragonFly v6.4.2-RELEASE #1: Mon Nov 20 2023",
          "    root@bsd64.dragonflybsd.org:/usr/obj/usr/src/sys/X86_64_GENERIC",
          "real memory  = 2147483648 (2048 MB)", "avail memory = 2012741632 (1919 MB)")
ROCKRIDGE = "cd9660: RockRidge Extension"  # sys/vfs/isofs/cd9660/cd9660_vfsops.c, log(LOG_INFO): no syslogd on the CD


def kernel_lines(hw: Hardware) -> List[str]:
    """The kernel's probe lines for the devices the QEMU command line gave (dragonfly_hw)."""
    lines = list(KERNEL)
    for n, disk in enumerate(hw.disks):
        if disk.startswith("vbd"):
            lines.append(f"virtio_blk{n}: <VirtIO Block Adapter> port 0xc000-0xc07f irq 11 at device {2 + n}.0 on pci0")
        lines.append(f"{disk}: 20480MB (41943040 512 byte sectors)")
    for nic in hw.nics:
        lines.append(f"{nic}: <VirtIO Networking Adapter> port 0xc080-0xc09f irq 10 at device 3.0 on pci0"
                     if nic.startswith("vtnet") else f"{nic}: <Intel(R) PRO/1000 Network Connection>")
    for cd in hw.cds:
        lines.append(f"{cd}: <QEMU DVD-ROM/2.5+> CDROM drive at ata{cd[-1]} as master" if cd.startswith("acd")
                     else f"{cd} at ata{cd[-1]} bus 0 target 0 lun 0")
    return lines + ["Mounting devfs"]


BANNER = ("\r\nWelcome to DragonFly!\r\n\r\n"
          "To start the installer, login as 'installer'.  To just get a shell prompt,\r\n"
          "login as 'root'.\r\n\r\n")
PANIC = ("panic: vm_fault: page not present", "cpuid = 0", "Trace beginning at frame 0xfffff8007c1e3a28",
         "panic() at panic+0x236 0xffffffff805f8666", 'Debugger("panic")', "",
         "CPU0 stopped at Debugger+0x7c:  movb $0,0xbcb9a9(%rip)")
POWEROFF = ("Stopping cron.", "Waiting (max 60 seconds) for system process `bufdaemon' to stop...stopped",
            "Syncing disks... 0 0 0 done", "Uptime: 4m12s", "The operating system has halted.", "ACPI power-off")
DASH = shutil.which("dash") or "/bin/sh"  # DragonFly's /bin/sh stands in as Debian's dash

State = Optional[Callable[[], "State"]]


class Disconnected(Exception):
    """The client closed the connection."""


class Goto(Exception):
    """Leave the current state (poweroff, panic, logout)."""

    def __init__(self, state: State):
        super().__init__()
        self.state = state


class Serial:
    """The guest's end of the serial line: writes, reads with deadlines, the transcript, idle noise."""

    def __init__(self, conn: socket.socket, transcript: Path, logfile: Optional[Path] = None):
        self.conn = conn
        self.log = open(transcript, "a", encoding="utf-8", buffering=1)
        self.logfile = open(logfile, "ab", buffering=0) if logfile else None
        self.pending = bytearray()
        self.out_line = ""  # guest output not yet written to the transcript
        self.out_cr = False
        self.out_split = False
        self.last_in = b""
        self.noise: Optional[Callable[[], None]] = None  # called when the line is idle (getty errors)
        self.noise_every = 1.0
        self.quiet_since = time.monotonic()

    def write(self, text: str, raw: Optional[bytes] = None) -> None:
        data = text.encode() if raw is None else raw
        try:
            self.conn.sendall(data)
        except OSError as e:
            raise Disconnected() from e
        if self.logfile:
            self.logfile.write(data)
        for ch in text:
            if ch == "\n":
                self.flush_out()
            elif ch == "\r":
                self.out_cr = True
            else:
                if self.out_cr and self.out_line:
                    self.flush_out()  # the countdown rewrites its line: log each version
                self.out_cr = False
                self.out_line += ch

    def lines(self, lines, pause: float = 0.0) -> None:
        for line in lines:
            self.write(line + "\r\n")
            time.sleep(pause)

    def flush_out(self, early: bool = False) -> None:
        if self.out_line or not self.out_split:
            self.log.write("< " + self.out_line + "\n")
        self.out_line, self.out_cr, self.out_split = "", False, early

    def received(self, text: str, note: str = "") -> None:
        if self.out_line:
            self.flush_out(early=True)
        self.log.write("> " + text + (f"   [{note}]" if note else "") + "\n")

    def _fill(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.conn], [], [], max(timeout, 0.0))
        if not ready:
            return False
        data = self.conn.recv(4096)
        if not data:
            raise Disconnected()
        self.pending += data
        self.quiet_since = time.monotonic()
        return True

    def read_byte(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """One byte, or None after `timeout` seconds (None: wait forever). CR LF reads as CR."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while not self.pending:
                left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if left <= 0:
                    return None
                if not self._fill(left):
                    if self.out_line:
                        self.flush_out(early=True)
                    if self.noise and time.monotonic() - self.quiet_since > self.noise_every:
                        self.noise()
                        self.quiet_since = time.monotonic()
            b = bytes(self.pending[:1])
            del self.pending[:1]
            skip = b == b"\n" and self.last_in == b"\r"
            self.last_in = b
            if not skip:
                return b

    def discard_input(self, why: str) -> None:
        while self._fill(0):
            pass
        if self.pending:
            self.received(printable(self.pending.decode("latin-1")), f"dropped: {why}")
            self.pending.clear()

    def read_line(self, echo: bool = True, kill: bool = False) -> Optional[str]:
        """A line as a cooked tty (or the loader's ngets) reads it; `kill`: Ctrl-U clears the line."""
        buf = bytearray()
        while True:
            b = self.read_byte()
            if b in (b"\r", b"\n"):
                line = buf.decode("utf-8", "replace")
                self.received(printable(line))
                if echo:
                    self.write("\r\n")
                return line
            if b in (b"\x7f", b"\x08"):
                if buf:
                    del buf[-1:]
                    if echo:
                        self.write("\b \b")
            elif b == b"\x15" and kill:
                self.received(printable(buf.decode("utf-8", "replace")) + "^U", "line cleared")
                buf.clear()
                if echo:
                    self.write("\r\n")
            elif b == b"\x03" and not kill:
                self.received(printable(buf.decode("utf-8", "replace") + "\x03"))
                self.write("^C\r\n")
                return None
            else:
                buf += b
                if echo:
                    self.write(b.decode("latin-1"), raw=b)

    def hang_up(self) -> None:
        """Close our side like QEMU exiting, and swallow what the client still sends."""
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline and select.select([self.conn], [], [], 0.1)[0]:
                if not self.conn.recv(4096):
                    break

    def close(self) -> None:
        if self.out_line:
            self.flush_out()
        self.log.close()
        if self.logfile:
            self.logfile.close()
        self.conn.close()


def printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


class Machine:
    """The guest as a state machine: each st_* method plays one state and returns the next."""

    def __init__(self, serial: Serial, world: World, disk: Path, fault: str, tick: float, video: bool):
        self.io, self.world, self.disk, self.fault, self.tick, self.video = serial, world, disk, fault, tick, video
        self.hw = world.hardware
        self.bin = install(world.folder / "bin", world)  # the scripts' whole PATH: stand-ins and HOST_TOOLS
        self.booted: Optional[DiskBoot] = None  # what the boot chain made of the installed disk (--boot disk)
        self.keys_in_countdown = 0
        self.env = {"console": ""}  # the loader's environment
        self.ps1 = "# "
        self.status = 0

    def pause(self, ticks: float) -> None:
        time.sleep(ticks * self.tick)

    def run(self, boot: str) -> None:
        state: State = self.st_firmware if boot == "cd" else self.st_boot2
        while state is not None:
            try:
                state = state()
            except Goto as jump:
                state = jump.state

    # --- the loader ---

    def st_firmware(self) -> State:
        self.env = {"console": ""}
        self.io.noise = None
        self.io.lines(BIOS, self.tick / 4)
        self.io.write("Booting from DVD/CD...\r\n")
        self.pause(1)
        return self.st_loader

    def st_loader(self) -> State:
        self.io.discard_input("typed before the loader started (comc_probe drains the port)")
        self.io.lines(LOADER, self.tick / 4)
        self.io.write(" " * 79 + "\r\n")
        for i in range(16):
            item = f" {MENU_ITEMS[i]:<38.38s}" if i < len(MENU_ITEMS) else " " * 39
            logo = LOGO[min(i, len(LOGO) - 1)] if i < 15 else " " * len(LOGO[0])
            self.io.write(f"{item}  {logo}  \r\n")
        return self.st_countdown

    def _dropped(self, b: bytes) -> bool:
        self.keys_in_countdown += 1
        drop = self.fault == "drop-all-keys" or (self.fault == "drop-first-key" and self.keys_in_countdown == 1)
        self.io.received(printable(b.decode("latin-1")), f"dropped: fault {self.fault}" if drop else "")
        return drop

    def st_countdown(self) -> State:
        delay = int(self.env.get("autoboot_delay", "10") or 10)
        for n in range(delay, -1, -1):
            self.io.write("\rBooting in %d second%s... " % (n, "" if n == 1 else "s"))
            deadline = time.monotonic() + 4 * self.tick  # a second of the countdown
            while n and (b := self.io.read_byte(deadline - time.monotonic())) is not None:
                if self._dropped(b):
                    continue
                if b in (b"9", b"\x1b"):
                    self.io.write("\r\n" if b == b"9" else "")
                    return self.st_loader_prompt
                if b == b" ":
                    self.io.write("\rCountdown halted by space   ")
                    return self.st_menu_halted
                if b in (b"\r", b"\n", b"1"):
                    return self.st_boot
                if b in (b"2", b"3", b"4", b"r", b"s", b"v"):
                    return self.st_boot
                if b == b"R":
                    self.io.write("\r\nRebooting...\r\n")
                    return self.st_firmware
        return self.st_boot

    def st_menu_halted(self) -> State:
        while True:
            b = self.io.read_byte()
            self.io.received(printable(b.decode("latin-1")))
            if b in (b"9", b"\x1b"):
                self.io.write("\r\n")
                return self.st_loader_prompt
            if b in (b"\r", b"\n", b"1"):
                return self.st_boot

    def st_loader_prompt(self) -> State:
        if self.fault == "slow-prompt":
            self.pause(4)  # the loader is slow to answer (TCG): keys resent meanwhile stack on its line
        self.io.write("\r\n\r\nType '?' for a list of commands, 'help' for more detailed help.\r\n")
        while True:
            self.io.write("OK ")
            line = self.io.read_line(kill=True) or ""
            words = line.split()
            if not words:
                continue
            if words[0] not in LOADER_COMMANDS:
                self.io.write(f"{words[0]}: unknown command\r\n")
                continue
            if words[0] == "set" and len(words) == 2 and "=" in words[1]:
                name, _, value = words[1].partition("=")
                value = value.strip('"')
                if name == "console" and value not in ("vidconsole", "comconsole"):
                    self.io.write(f"no such console '{value}'\r\nAvailable consoles:\r\n    vidconsole\r\n"
                                  "    comconsole\r\n")
                    continue
                self.env[name] = value
            elif words[0] == "boot":
                return self.st_boot
            elif words[0] == "reboot":
                self.io.write("Rebooting...\r\n")
                return self.st_firmware

    def st_boot(self) -> State:
        """Load the kernel; it keeps the serial port only when the loader's console is comconsole."""
        self.io.write("\r\n/boot/kernel/kernel text=0x1094a10 data=0x1316d8+0x5c0f80 "
                      "syms=[0x8+0x155c58+0x8+0x13f1ff]\r\n")
        self.pause(1)
        if self.env.get("console") != "comconsole":
            if self.fault == "boot-loop":
                self.pause(3)
                return self.st_firmware
            return self.st_silent  # the kernel talks to the video console only
        if self.fault == "boot-loop":
            self.io.lines(KERNEL[:4], self.tick / 4)
            self.io.write("Rebooting...\r\n")
            self.pause(2)
            return self.st_firmware
        self.io.lines(kernel_lines(self.hw), self.tick / 8)
        if self.booted is not None:  # the installed disk: its root, as loader.conf names it
            self.io.lines(self.booted.root_mount)
            if self.booted.stops_at:
                return self.st_silent
        else:
            self.io.write(f"Mounting root from {self.env.get('vfs.root.mountfrom', 'cd9660:cd0')}\r\n")
        if self.fault == "hang-after-kernel":
            return self.st_silent
        return self.st_rc

    def st_silent(self) -> State:
        while True:  # read (and log) whatever comes, answer nothing, until killed
            self.io.read_line(echo=False)

    # --- the installed disk: boot2 first ---

    def st_boot2(self) -> State:
        """BIOS, MBR, boot1/boot2 and the loader on the installed disk (disk_boot); silent where DragonFly
        talks only to the video console."""
        self.io.lines(BIOS, self.tick / 4)
        self.io.write("Booting from Hard Disk...\r\n")
        self.booted = disk_boot(self.disk, self.hw)
        self.io.lines(self.booted.boot2)
        if self.booted.stops_at and not self.booted.root_mount:
            self.io.log.write(f"# the boot stops: {self.booted.stops_at}\n")
            return self.st_silent
        self.env.update(self.booted.loader_env)
        return self.st_loader

    # --- rc, pfi, getty ---

    def st_rc(self) -> State:
        root = self.env.get("vfs.root.mountfrom", "cd9660:cd0")
        self.io.lines(("Starting file system checks:", "Mounting local file systems:.", "Setting hostname: ."),
                      self.tick / 4)
        if self.booted is not None:
            self.io.lines(self.booted.rc)  # etc/rc.d/root and mountcritlocal on the installed fstab
        self.io.lines(("Starting devd.", "Starting dhcpcd."), self.tick / 4)
        if root.startswith("cd9660"):
            self.pfi()
        self.io.lines(("Starting sshd.", "", DATE + " UTC 2024"), self.tick / 4)  # etc/rc ends: echo '', date
        return self.st_login

    def pfi(self) -> None:
        """nrelease/root/etc/rc.d/pfi, pfi_start(): look_for_pfi_config_cd9660 tries `acd0 cd0 acd1 cd1`
        (each that `[ -c /dev/X ]`), mounts it on /mnt and, in get_pfi_config, runs `$1/$pfi_script` if
        it is executable, with the CD still mounted. Each of its progress words is an `echo -n`: the
        kernel's `cd9660: RockRidge Extension`, logged by the mount, lands between them."""
        self.io.write("Starting pfi...\r\n")
        for dev in ("acd0", "cd0", "acd1", "cd1"):
            try:
                self.world.node(dev)
            except Refused:
                continue  # [ -c /dev/$try_device ] is false
            self.io.write(f"Looking for pfi.conf on /dev/{dev}...")
            if self.sh(f"mount_cd9660 /dev/{dev} /mnt") != 0:
                self.io.write(" not found\r\n")
                continue
            self.io.write(f" /dev/{dev} ok...")
            conf = self.world.resolve("/mnt/pfi.conf")
            if conf is None or not conf.is_file():  # [ -r $1/pfi.conf ]
                self.sh("umount /mnt")
                self.io.write(" not found\r\n")
                continue
            self.io.write(" found!\r\n")
            settings = pfi_settings(conf)
            script = settings.get("pfi_script", "")
            path = self.world.resolve(f"/mnt/{script}") if script else None
            if path is not None and path.is_file() and os.access(path, os.X_OK):  # -x "$1/$pfi_script"
                self.run_script(path, [], f"/mnt/{script}")
            if (self.world.resolve("/mnt/authorized_keys") or Path("/nonexistent")).is_file():
                self.io.write("authorized_keys found!\r\n")
            self.sh("umount /mnt")
            actions = settings.get("pfi_rc_actions", "").split()
            for action in reversed(actions):
                self.io.write(f"Stopping {action}...\r\n")
            for action in actions:
                self.io.write(f"Starting {action}...\r\n")
                if action == "netif":
                    self.io.lines(f"{nic}: link state changed to UP" for nic in self.hw.nics)  # the kernel's [INF]
            return

    def st_login(self) -> State:
        hostname = "Amnesiac" if self.env.get("vfs.root.mountfrom", "cd9660").startswith("cd9660") else "vmlab"
        banner = BANNER if hostname == "Amnesiac" else "\r\n"
        self.io.write(banner + f"DragonFly/x86_64 ({hostname}) (ttyd0)\r\n\r\nlogin: " + self.getty_errors())
        if not self.video:
            self.io.noise, self.io.noise_every = lambda: self.io.write(self.getty_errors()), 8 * self.tick
        while True:
            user = (self.io.read_line() or "").strip()
            if user == "root" and self.fault not in ("login-incorrect", "login-refused"):
                return self.st_csh
            if user and self.fault == "login-refused":  # refused outright (no password is asked)
                self.io.write("\r\nLogin incorrect\r\n")
            elif user:
                self.io.write("Password:")
                self.io.read_byte(10 * self.tick)
                self.io.discard_input("password")
                self.io.write("\r\nLogin incorrect\r\n")
            self.io.write("login: ")

    def getty_errors(self) -> str:
        """What init and getty log on the console for ttyv* with no video device (sbin/init, libexec/getty)."""
        if self.video:
            return ""
        lines = [f"{DATE} getty[{700 + n}]: open /dev/ttyv{n}: No such file or directory" for n in (0, 2, 3)]
        lines += [f"{DATE} init: getty repeating too quickly on port /dev/ttyv{n}, sleeping 30 secs" for n in (0, 2)]
        return "".join(line + "\r\n" for line in lines)

    def st_csh(self) -> State:
        self.io.lines(("DragonFly v6.4.2-RELEASE (X86_64_GENERIC) #1: Mon Nov 20 2023", "",
                       "Welcome to DragonFly!", "", "Use \"pkg search\" to find packages."))
        while True:
            self.io.write("root@# ")
            line = (self.io.read_line() or "").strip()
            if line in ("exec /bin/sh", "exec sh"):
                return self.st_sh
            if line in ("exit", "logout"):
                return self.st_login
            if line:
                self.io.write(f"{line.split()[0]}: Command not found.\r\n")

    def st_sh(self) -> State:
        while True:
            self.io.write(self.ps1)
            for command in split_commands(self.io.read_line() or ""):
                self.status = self.sh(command.replace("$?", str(self.status)))

    def st_poweroff(self) -> State:
        state = self.world.load()
        state["poweroff"] = True
        self.world.save(state)
        if self.hw.disks and self.booted is None:  # what the install wrote besides files goes with the disk
            save_layout(self.world, self.disk, self.hw.disks[0])
        self.io.lines(POWEROFF, self.tick / 2)
        return None

    def st_panic(self) -> State:
        self.io.lines(PANIC)
        self.io.write("db> ")
        return self.st_silent

    # --- the live system's sh ---

    def sh(self, command: str) -> int:
        """One simple command as /bin/sh runs it on the live CD; its exit status."""
        try:
            words = shlex.split(command)
        except ValueError:
            self.io.write("sh: Syntax error: Unterminated quoted string\r\n")
            return 2
        words = [w for w in words if not re.fullmatch(r"\d?>&\d|\d?>+/dev/null", w)]
        if words and all(re.match(r"[A-Za-z_]\w*=", w) for w in words):
            for w in words:
                if w.startswith("PS1="):
                    self.ps1 = w[4:]
            return 0
        if not words:
            return 0
        cmd, args = words[0], words[1:]
        if cmd in ("true", ":", "sync", "cd", "set", "export", "umask", "trap", "unset"):
            return 0
        if cmd == "false":
            return 1
        if cmd == "echo":
            self.io.write(" ".join(args) + "\r\n")
            return 0
        if cmd in ("mount_cd9660", "umount") or (cmd == "mount" and args[:2] == ["-t", "cd9660"]):
            call = {"mount_cd9660": mount_cd9660, "umount": umount, "mount": mount_cd9660}[cmd]
            try:
                status = call(self.world, args[2:] if cmd == "mount" else args)
            except Refused as e:
                self.io.write(f"{e}\r\n")
                return e.status
            if call is mount_cd9660:  # both DragonFly's ISO and vmlab's seed are Rock Ridge (mkisofs -R)
                self.io.write(ROCKRIDGE + "\r\n")
            return status
        if cmd == "ls":
            return self.ls(args[-1] if args else "/")
        if cmd in ("sh", "/bin/sh") and args:
            path = self.world.resolve(args[0])
            if path is None or not path.is_file():
                self.io.write(f"sh: cannot open {args[0]}: No such file or directory\r\n")
                return 127
            return self.run_script(path, args[1:], args[0])
        if cmd.startswith("/"):
            path = self.world.resolve(cmd)
            if path is None or not path.is_file():
                self.io.write(f"sh: {cmd}: not found\r\n")
                return 127
            if not os.access(path, os.X_OK):
                self.io.write(f"sh: {cmd}: Permission denied\r\n")
                return 126
            return self.run_script(path, args, cmd)
        if words in (["poweroff"], ["shutdown", "-p", "now"], ["halt", "-p"]):
            raise Goto(self.st_poweroff)
        if cmd == "exit":
            raise Goto(self.st_login)
        self.io.write(f"sh: {cmd}: not found\r\n")
        return 127

    def ls(self, where: str) -> int:
        path = self.world.resolve(where)
        if path is None or not path.exists():
            self.io.write(f"ls: {where}: No such file or directory\r\n")
            return 1
        names = sorted(p.name for p in path.iterdir()) if path.is_dir() else [where]
        self.io.write("  ".join(names) + ("\r\n" if names else ""))
        return 0

    def run_script(self, path: Path, args: List[str], shown: str) -> int:
        """Run a script of the seed CD under dash, DragonFly's commands stood in for and nothing else of the
        host's on its PATH. Its stdin is the console, as for anything rc runs (etc/rc: "the console is
        the controlling terminal"): what is typed reaches it, and a question nobody answers waits.
        A command that is neither a stand-in nor an allowed host tool ends it with a panic naming it."""
        env = {"PATH": str(self.bin), "HOME": "/root", "VMLAB_TEST_PATH": str(self.bin),
               "VMLAB_TARGET": str(self.disk), "TMPDIR": str(self.world.folder / "tmp"),
               **{k: v for k, v in os.environ.items() if k.startswith(("DFLY_", "VMLAB_HEARTBEAT"))}}
        (self.world.folder / "tmp").mkdir(exist_ok=True)
        self.disk.mkdir(parents=True, exist_ok=True)
        console_in, to_script = os.pipe()
        proc = subprocess.Popen([DASH, str(path), *args], stdin=console_in, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        os.close(console_in)
        assert proc.stdout is not None
        out_fd, said, steps = proc.stdout.fileno(), "", 0
        try:
            while True:
                ready, _, _ = select.select([out_fd, self.io.conn], [], [], 0.1)
                if self.io.conn in ready and self.io._fill(0):  # typed at the console: to the script, echoed
                    typed = bytes(self.io.pending).replace(b"\r", b"\n")
                    self.io.pending.clear()
                    self.io.received(printable(typed.decode("latin-1")), f"read by {shown}")
                    self.io.write(typed.decode("latin-1").replace("\n", "\r\n"))
                    with contextlib.suppress(OSError):
                        os.write(to_script, typed)
                if out_fd not in ready:
                    continue
                raw = os.read(out_fd, 4096)
                if not raw:
                    break
                text = raw.decode("utf-8", "replace")
                self.io.write(text.replace("\n", "\r\n"))
                said += text
                steps += text.count("vmlab-step:")
                if self.fault == "panic" and steps >= 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    raise Goto(self.st_panic)
                missing = unresolved(said)
                if missing:
                    os.killpg(proc.pid, signal.SIGKILL)
                    self.io.write(f"panic: {shown} ran `{missing[0]}`, which is neither a stand-in for a DragonFly "
                                  "command nor an allowed host tool (tests/dragonfly_stubs.py: HOST_TOOLS)\r\n")
                    raise Goto(self.st_panic)
        finally:
            os.close(to_script)
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
        if self.world.load()["poweroff"]:
            raise Goto(self.st_poweroff)
        return status if status >= 0 else 128 - status


LAYOUT = ".dfly-sim-disk.json"  # beside the installed files: what the install wrote on the disk besides them


def save_layout(world: World, files: Path, disk: str) -> None:
    """Keep, with the installed files, the boot code, labels and file systems the install wrote on `disk`."""
    (files / LAYOUT).write_text(json.dumps(world.layout(disk), indent=1))


@dataclass
class DiskBoot:
    """What DragonFly's boot chain makes of an installed disk (disk_boot)."""

    boot2: List[str] = field(default_factory=list)  # boot2's lines on serial (it talks there only when unhappy)
    loader_env: Dict[str, str] = field(default_factory=dict)  # /boot/loader.conf, as the loader reads it
    root_mount: List[str] = field(default_factory=list)  # the kernel's root mount, and its failure
    rc: List[str] = field(default_factory=list)  # rc's complaints about /etc/fstab
    stops_at: str = ""  # where the boot stops for good, and why ("": it reaches rc)
    root_rw: bool = True  # False: rc could not mount root read-write (etc/rc.d/root), the system runs read-only


def disk_boot(files: Path, hw: Hardware) -> DiskBoot:
    """Boot the first disk of `hw` holding `files` (and the LAYOUT the install left beside them) the way a
    PC boots DragonFly: the BIOS runs the MBR's code (fdisk -B wrote it); the MBR loads boot1/boot2 from
    the slice (disklabel64 -B wrote them; without them it says `Missing operating system` on the video
    console); boot2 reads /boot.config and loads /boot/loader from the UFS partition a
    (stand/boot/pc32/boot2/boot2.c); the loader reads loader.conf and keeps the serial console only
    with console="comconsole"; the kernel mounts vfs.root.mountfrom (`no disk named 'X'` and the
    manual root prompt when it cannot: sys/kern/vfs_conf.c, DragonFly bug #3336's transcript); rc
    remounts root read-write and mounts the rest as /etc/fstab says (etc/rc.d/root, mountcritlocal).
    Device names are the machine's (dragonfly_hw), so a disk named otherwise cannot be found."""
    boot = DiskBoot()
    disk = hw.disks[0] if hw.disks else "?"
    layout = json.loads((files / LAYOUT).read_text()) if (files / LAYOUT).is_file() else {}
    slice_ = f"{disk}s1"
    if layout.get("disk") != disk or not layout.get("mbr"):
        boot.stops_at = f"the BIOS finds no boot code in {disk}'s MBR (fdisk -B writes it)"
        return boot
    if not layout["slices"].get(slice_, {}).get("bootblocks"):
        boot.stops_at = (f"the MBR finds no boot1/boot2 in {slice_} (disklabel64 -B writes them): "
                         "'Missing operating system' on the video console")
        return boot
    partitions, fs = layout["slices"][slice_]["partitions"], layout["fs"]
    if partitions.get("a", "").lower() != "4.2bsd" or fs.get(f"{slice_}a") != "ufs":
        boot.stops_at = f"boot2 finds no UFS file system in {slice_}a to load /boot/loader from"
        return boot
    config = files / "boot" / "boot.config"  # boot2's /boot.config: the root of partition a, the installed /boot
    if config.is_file():
        line = config.read_text().rstrip("\n")
        boot.boot2.append(f"/boot.config: {line}")
        if not boot2_accepts(line):  # parse() failed: autoboot is off, boot2 waits at its prompt
            boot.boot2 += ["", "DragonFly boot", "0:ad(0,a)/boot/loader: "]
            boot.stops_at = f"boot2 does not know a flag of /boot.config ({line}) and waits at its prompt"
            return boot
    loader_conf = files / "boot" / "loader.conf"
    for line in (loader_conf.read_text().splitlines() if loader_conf.is_file() else []):
        if m := re.fullmatch(r'\s*([\w.]+)\s*=\s*"?([^"]*)"?\s*', line):
            boot.loader_env[m.group(1)] = m.group(2)
    if boot.loader_env.get("console") != "comconsole":
        boot.stops_at = "the loader and the kernel use the video console (no console=\"comconsole\")"
        return boot
    mountfrom = boot.loader_env.get("vfs.root.mountfrom", "")
    fstype, _, spec = mountfrom.partition(":")
    dev, _, label = spec.removeprefix("/dev/").partition("@")
    boot.root_mount = [f"Mounting root from {mountfrom}"]
    problem = _mount_problem(layout, fstype, dev, label)
    if problem:
        boot.root_mount += [problem, "", "Manual root filesystem specification:",
                            "  <fstype>:<device>  Mount <device> using filesystem <fstype>", "", "mountroot> "]
        boot.stops_at = f"the kernel cannot mount its root {mountfrom!r}: {problem}"
        return boot
    fstab = files / "etc" / "fstab"
    table = {f[1]: f for f in (line.split() for line in (fstab.read_text().splitlines() if fstab.is_file() else [])
                               if line.strip() and not line.startswith("#")) if len(f) >= 3}
    root = table.get("/")
    if root is None or not _same_partition(root[0], dev) or _mount_problem(layout, root[2], *_spec(root[0])):
        boot.rc += [f"mount: {root[0] if root else '/'}: No such file or directory",
                    "Mounting root filesystem rw failed, startup aborted"]
        boot.root_rw = False
    for point, entry in table.items():
        if point != "/" and entry[2] in ("ufs", "hammer2") and _mount_problem(layout, entry[2], *_spec(entry[0])):
            boot.rc += [f"mount: {entry[0]}: No such file or directory",
                        "Mounting /etc/fstab filesystems failed, startup aborted"]
    return boot


def _spec(special: str) -> Tuple[str, str]:
    dev, _, label = special.removeprefix("/dev/").partition("@")
    return dev, label


def _same_partition(special: str, dev: str) -> bool:
    return _spec(special)[0] == dev


def _mount_problem(layout: Dict[str, Any], fstype: str, dev: str, label: str) -> str:
    """Why `fstype` cannot be mounted from partition `dev` (@`label`) of the disk `layout` describes, or ""."""
    made = layout.get("fs", {}).get(dev)
    if made is None:
        return f"no disk named '{dev}'"
    if fstype == "hammer2":
        wanted = label or {"a": "BOOT", "d": "ROOT"}.get(dev[-1:], "DATA")  # newfs_hammer2.8's default labels
        if not made.startswith("hammer2:") or wanted not in made.split(":", 1)[1].split(","):
            return "Root mount failed: 22"
    elif made != fstype:
        return "Root mount failed: 22"
    return ""


def boot2_accepts(line: str) -> bool:
    """boot2's parse(): every word of /boot.config that starts with '-' holds only flags it knows."""
    return all(word[0] != "-" or all(c in BOOT2_FLAGS for c in word[1:]) for word in line.split())


def pfi_settings(conf: Path) -> dict:
    """pfi.conf read as rc.d/pfi reads it: sourced by /bin/sh."""
    out = subprocess.run(["dash", "-c", '. "$1"; printf "pfi_script=%s\\npfi_rc_actions=%s\\n" '
                          '"$pfi_script" "$pfi_rc_actions"', "sh", str(conf)],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def split_commands(line: str) -> List[str]:
    """Split a line on `;` outside quotes."""
    parts, current, quote = [], "", ""
    for ch in line:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            parts.append(current)
            current = ""
            continue
        current += ch
    return [p for p in parts + [current] if p.strip()]


def extract(iso: Path, into: Path) -> Path:
    """The files of a real ISO, as mount_cd9660 shows them (Rock Ridge names and modes)."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(into)],
                   capture_output=True, check=True)
    return into


def replay(serial: Serial, record: Path, speed: float) -> None:
    """Play back a console record vmlab kept (vmlab/install/console.py's `timed`, an install's
    console.timed.jsonl, a diagnostic bundle's install-console.timed.jsonl): what the guest printed,
    at the pace it printed it (gaps times `speed`); where vmlab typed, what follows waits until the
    client types too, as the guest's answer waited for the keys. A record that ends with the console
    closing ends with the connection closed, as QEMU exiting closes it; else the line stays silent."""
    last, gate = 0.0, False
    for entry in (json.loads(line) for line in record.read_text().splitlines() if line.strip()):
        if "in" in entry:
            gate = True
            continue
        if gate:  # the guest answered keys: wait for the client's, then keep the record's pace from there
            serial.read_byte()
            serial.discard_input("typed while the record plays (read, not acted on)")
            gate, last = False, entry["t"]
        time.sleep(max(0.0, (entry["t"] - last) * speed))
        last = entry["t"]
        if "closed" in entry:
            return
        serial.write(entry["out"])
    serial.log.write("# the record ends: the line stays silent\n")
    while True:
        serial.read_line(echo=False)


def serve(server: socket.socket, args: argparse.Namespace, transcript: Path) -> int:
    """Accept one client on `server` and play the machine to its end (or play back a record)."""
    if args.replay:
        conn, _ = server.accept()
        server.close()
        serial = Serial(conn, transcript, args.logfile)
        try:
            replay(serial, args.replay, args.replay_speed)
            serial.hang_up()
            return 0
        except Disconnected:
            return 1
        finally:
            serial.close()
    world_dir = args.world or Path(str(transcript) + ".world")
    media = {"seed": str(extract(args.seed, world_dir / "seed"))} if args.seed else {}
    hardware = Hardware.from_json(args.hardware) if args.hardware else None  # default: vmlab's install machine
    world = World.create(world_dir, media, hardware)
    disk = args.disk or world_dir / "disk"
    conn, _ = server.accept()  # the guest starts when a client connects
    server.close()
    serial = Serial(conn, transcript, args.logfile)
    try:
        serial.log.write(f"# dragonfly_sim boot={args.boot} fault={args.fault} tick={args.tick} video={args.video}\n")
        Machine(serial, world, disk, args.fault, args.tick, args.video).run(args.boot)
        serial.hang_up()
        return 0
    except Disconnected:
        return 1
    finally:
        serial.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, type=Path)
    p.add_argument("--seed", type=Path, help="the seed ISO (QEMU's drive `seed`: acd1 and cd1 in vmlab's machine)")
    p.add_argument("--hardware", help="the machine's devices as JSON (dragonfly_hw.Hardware; default: vmlab's)")
    p.add_argument("--world", type=Path, help="folder for the live system's state (default: beside the socket)")
    p.add_argument("--disk", type=Path, help="folder holding the installed disk's files")
    p.add_argument("--boot", default="cd", choices=("cd", "disk"))
    p.add_argument("--no-video", dest="video", action="store_false")
    p.add_argument("--logfile", type=Path)
    p.add_argument("--fault", default="none", choices=FAULTS)
    p.add_argument("--tick", default=0.05, type=float)
    p.add_argument("--replay", type=Path, help="play back this console record instead (console.timed.jsonl)")
    p.add_argument("--replay-speed", default=1.0, type=float, help="the record's gaps times this (0.1: 10x faster)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(FileNotFoundError):
        args.socket.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(args.socket))
        server.listen(1)
        return serve(server, args, Path(str(args.socket) + ".transcript"))
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()


@contextlib.contextmanager
def simulator(socket_path: Path, *options: str) -> Iterator[subprocess.Popen]:
    """Run the simulator on `socket_path` (with command-line `options`) until the block ends."""
    socket_path = Path(socket_path)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a stale socket would look ready before the simulator is
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--socket", str(socket_path), *options])
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"dragonfly_sim exited ({proc.returncode}) before listening on {socket_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dragonfly_sim did not create {socket_path} within 10 s")
            time.sleep(0.01)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


if __name__ == "__main__":
    sys.exit(main())
