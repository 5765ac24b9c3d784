"""A simulated DragonFlyBSD 6.4 live CD on a QEMU serial socket, for tests.

Run as a program, it listens on a unix stream socket (like QEMU's
``-chardev socket,server=on``), accepts one connection and plays the serial
console of the live CD booting: BIOS noise, the dloader menu and countdown, the
``OK`` prompt, the kernel, the getty banner and ``login:``, root's csh, and a
tiny /bin/sh that answers the commands the DragonFly recipe types. When the
simulated guest powers off it closes the connection, removes the socket and
exits 0, as QEMU does; if the client hangs up first it exits 1.

    python tests/dragonfly_sim.py --socket PATH [--fault NAME] [--tick SECONDS]

Where the strings come from (../shared/dragonfly.md, which cites DragonFly's
own sources):
- menu lines `` N. text``, ``1. Boot DragonFly [kernel]``, ``9. Escape to loader
  prompt (also ESC)``, ``\\rBooting in %d second%s... ``, ``Countdown halted by
  space`` and the prompt ``OK ``: "Boot loader (dloader) on the serial port"
  (stand/boot/dloader/dloader.menu, cmds.c). Menu lines 2-8 are invented.
- the trap: Enter, or the countdown running out, boots with the video console and
  nothing more appears on serial; ``set console=comconsole`` then ``boot`` works
  (golang/build's recipe).
- the banner, ``login:`` and root's csh: "Live CD after boot" (nrelease/root/etc/
  issue, gettytab, ttys); the csh prompt ``# `` is marked uncertain there.
- device names vbd0/cd0/cd1 and ``sysctl -n kern.disks``: "Installing from the
  live shell". Kernel lines, the install script's output and the panic are made up.

Everything sent and received is appended to ``PATH.transcript``: ``< `` lines are
what the guest printed, ``> `` lines what the client typed. ``--tick`` is the
length of one countdown step and of each simulated pause (1.0 is realistic).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

FAULTS = ("none", "panic", "no-login", "boot-loop", "drop-first-key", "drop-all-keys",
          "install-exit-3", "login-incorrect")

BIOS = ("SeaBIOS (version 1.16.2)", "", "Booting from DVD/CD...", "",
        "Consoles: internal video/keyboard  serial port",
        "BIOS 639kB/2096000kB available memory", "",
        "DragonFly/x86_64 bootstrap loader, Revision 1.1",
        "Loading /boot/defaults/loader.conf")
MENU = ("", " 1. Boot DragonFly [kernel]", " 2. Boot DragonFly in single user mode",
        " 3. Boot DragonFly without ACPI driver", " 4. Boot DragonFly in safe mode",
        " 5. Boot DragonFly with verbose logging", " 6. Load an alternative kernel",
        " 7. Boot the backup kernel [kernel.old]", " 8. Reboot",
        " 9. Escape to loader prompt (also ESC)", "")
KERNEL = ("Copyright (c) 2003-2023 The DragonFly Project.",
          "Copyright (c) 1992-2003 The FreeBSD Project.",
          "DragonFly v6.4.2-RELEASE #0: Sun Jun 23 12:00:00 UTC 2024",
          "    root@builder:/usr/obj/usr/src/sys/X86_64_GENERIC",
          "CPU: QEMU Virtual CPU version 2.5+ (2400.00-MHz K8-class CPU)",
          "real memory  = 2147483648 (2048 MiB)",
          "avail memory = 2045300736 (1950 MiB)",
          "virtio_blk0: <VirtIO Block Adapter> on pci0",
          "vbd0: 20480MB (41943040 512 byte sectors)",
          "vtnet0: <VirtIO Networking Adapter> on pci0",
          "cd0: <QEMU QEMU DVD-ROM> Removable CD-ROM SCSI-5 device",
          "cd1: <QEMU QEMU DVD-ROM> Removable CD-ROM SCSI-5 device",
          "Mounting root from cd9660:cd0")
BANNER = ("\r\nWelcome to DragonFly!\r\n\r\n"
          "To start the installer, login as 'installer'.  To just get a shell prompt,\r\n"
          "login as 'root'.\r\n\r\n"
          "DragonFly/x86_64 (Amnesiac) (ttyd0)\r\n\r\n"
          "login: ")
PANIC = ("panic: vm_fault: page not present", "cpuid = 0",
         "Trace beginning at frame 0xfffff8007c1e3a28",
         "panic() at panic+0x236 0xffffffff805f8666",
         "vm_fault() at vm_fault+0x1a3 0xffffffff80891e23",
         'Debugger("panic")', "", "CPU0 stopped at Debugger+0x7c:  movb $0,0xbcb9a9(%rip)")
MNT_LISTING = "install.sh  pfi.conf  provision.sh  authorized_keys  ssh_host_ed25519_key  ssh_host_ed25519_key.pub"
FIXED = {("ls",): ("", 0), ("ls", "/mnt"): (MNT_LISTING + "\r\n", 0), ("ls", "/mnt/"): (MNT_LISTING + "\r\n", 0),
         ("sysctl", "-n", "kern.disks"): ("vbd0 cd1 cd0\r\n", 0), ("true",): ("", 0), ("false",): ("", 1)}
INSTALL_STEPS = ("partition vbd0", "newfs", "copy the system", "configure", "done")
POWEROFF = ("Syncing disks... done", "Uptime: 1m", "The operating system has halted.", "Powering off...")
NO_OPS = {"set", "stty", "export", "unset", "cd", ":", "umask", "sync", "umount", "trap"}

State = Optional[Callable[[], "State"]]


class Disconnected(Exception):
    """The client closed the connection."""


class Goto(Exception):
    """Leave the shell for another state (poweroff, panic, logout)."""

    def __init__(self, state: State):
        super().__init__()
        self.state = state


class Serial:
    """The guest's end of the serial line: writes, reads with deadlines, and the transcript."""

    def __init__(self, conn: socket.socket, transcript: Path):
        self.conn = conn
        self.log = open(transcript, "a", encoding="utf-8", buffering=1)
        self.pending = bytearray()
        self.out_line = ""  # guest output not yet written to the transcript
        self.out_cr = False  # a CR was printed: the next character starts a new line
        self.out_split = False  # out_line was logged early (before input, or when idle)
        self.last_in = b""

    def write(self, text: str, raw: Optional[bytes] = None) -> None:
        try:
            self.conn.sendall(text.encode() if raw is None else raw)
        except OSError as e:
            raise Disconnected() from e
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
        """Log the current output line; `early`: it is not finished yet."""
        if self.out_line or not self.out_split:
            self.log.write("< " + self.out_line + "\n")
        self.out_line, self.out_cr, self.out_split = "", False, early

    def received(self, text: str, note: str = "") -> None:
        if self.out_line:
            self.flush_out(early=True)  # what the client answered comes after it in the log
        self.log.write("> " + text + (f"   [{note}]" if note else "") + "\n")

    def _fill(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.conn], [], [], max(timeout, 0.0))
        if not ready:
            return False
        data = self.conn.recv(4096)
        if not data:
            raise Disconnected()
        self.pending += data
        return True

    def read_byte(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """One byte, or None after `timeout` seconds (None: wait forever). CR LF reads as CR."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while not self.pending:
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return None
                if not self._fill(left) and self.out_line:
                    self.flush_out(early=True)  # idle: a prompt without a newline still reaches the log
            b = bytes(self.pending[:1])
            del self.pending[:1]
            skip = b == b"\n" and self.last_in == b"\r"
            self.last_in = b
            if not skip:
                return b

    def discard_input(self, why: str) -> None:
        """Drop what the client typed ahead, as the firmware does with early keys."""
        while self._fill(0):
            pass
        if self.pending:
            self.received(printable(self.pending.decode("latin-1")), f"dropped: {why}")
            self.pending.clear()

    def read_line(self, echo: bool = True) -> Optional[str]:
        """A line as a tty in cooked mode reads it (echo, backspace); None on ^C."""
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
            elif b == b"\x03":
                self.received(printable(buf.decode("utf-8", "replace") + "\x03"))
                self.write("^C\r\n")
                return None
            elif b >= b" " or b == b"\t":
                buf += b
                if echo:
                    self.write(b.decode("latin-1"), raw=b)

    def hang_up(self) -> None:
        """Close our side like QEMU exiting: EOF for the client, and swallow what it still
        sends (closing a unix socket with unread input resets the client's connection)."""
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
        self.conn.close()


def printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


class Guest:
    """The live CD as a state machine: each st_* method plays one state and returns the next."""

    def __init__(self, serial: Serial, fault: str, tick: float):
        self.io, self.fault, self.tick = serial, fault, tick
        self.keys_in_countdown = 0
        self.comconsole = False
        self.ps1 = "# "
        self.status = 0

    def pause(self, ticks: float) -> None:
        time.sleep(ticks * self.tick)

    def run(self) -> None:
        state: State = self.st_firmware
        while state is not None:
            state = state()

    def st_firmware(self) -> State:
        self.comconsole = False
        self.io.lines(BIOS, self.tick / 2)
        self.io.lines(MENU)
        return self.st_countdown

    def _dropped(self, b: bytes) -> bool:
        self.keys_in_countdown += 1
        drop = self.fault == "drop-all-keys" or (self.fault == "drop-first-key" and self.keys_in_countdown == 1)
        self.io.received(printable(b.decode("latin-1")), f"dropped: fault {self.fault}" if drop else "")
        return drop

    def st_countdown(self) -> State:
        self.io.discard_input("typed before the countdown")
        for n in range(10, 0, -1):
            self.io.write("\rBooting in %d second%s... " % (n, "" if n == 1 else "s"))
            deadline = time.monotonic() + self.tick
            while (b := self.io.read_byte(deadline - time.monotonic())) is not None:
                if self._dropped(b):
                    continue
                if b in (b"9", b"\x1b"):
                    self.io.write("\r\n")
                    return self.st_loader_prompt
                if b == b" ":
                    self.io.write("\r\nCountdown halted by space\r\n")
                    return self.st_menu_halted
                if b in (b"\r", b"\n") or b"1" <= b <= b"8":
                    self.io.write("\r\n")
                    return self.st_boot_video
        self.io.write("\r\n")
        return self.st_boot_video

    def st_menu_halted(self) -> State:
        while True:
            b = self.io.read_byte()
            self.io.received(printable(b.decode("latin-1")))
            if b in (b"9", b"\x1b"):
                self.io.write("\r\n")
                return self.st_loader_prompt
            if b in (b"\r", b"\n") or b"1" <= b <= b"8":
                return self.st_boot_video

    def st_loader_prompt(self) -> State:
        while True:
            self.io.write("OK ")
            line = (self.io.read_line() or "").strip()
            word = line.split()[0] if line else ""
            if not line:
                continue
            if word == "set" and "=" in line:
                name, _, value = line[3:].strip().partition("=")
                if name.strip() == "console":
                    self.comconsole = value.strip().strip('"') == "comconsole"
            elif word == "boot":
                return self.st_kernel if self.comconsole else self.st_boot_video
            else:
                self.io.write(f"{word}: Command not found\r\n")

    def st_boot_video(self) -> State:
        """Booting with the video console: the kernel never writes to serial again."""
        self.io.write("Loading /boot/kernel/kernel\r\n")
        if self.fault == "boot-loop":
            self.pause(5)
            return self.st_firmware
        return self.st_silent

    def st_kernel(self) -> State:
        self.io.write("Loading /boot/kernel/kernel\r\n")
        self.pause(2)
        if self.fault == "boot-loop":
            self.io.lines(KERNEL[:5], self.tick / 4)
            self.pause(2)
            self.io.write("Rebooting...\r\n")
            self.pause(2)
            return self.st_firmware
        self.io.lines(KERNEL, self.tick / 4)
        self.pause(3)
        return self.st_silent if self.fault == "no-login" else self.st_login

    def st_silent(self) -> State:
        while True:  # read (and log) whatever comes, answer nothing, until killed
            self.io.read_line(echo=False)

    def st_login(self) -> State:
        self.io.write(BANNER)
        while True:
            user = (self.io.read_line() or "").strip()
            if user == "root" and self.fault != "login-incorrect":
                return self.st_csh
            if user:
                self.io.write("Password:")
                self.io.read_byte(10 * self.tick)  # a password, not echoed (or none)
                self.pause(1)
                self.io.discard_input("password")
                self.io.write("\r\nLogin incorrect\r\n")
            self.io.write("login: ")

    def st_csh(self) -> State:
        while True:
            self.io.write("# ")
            line = (self.io.read_line() or "").strip()
            if line in ("exec /bin/sh", "exec sh", "/bin/sh", "sh"):
                self.ps1 = "# "
                return self.st_sh
            if line in ("exit", "logout"):
                return self.st_login
            if line:
                self.io.write(f"{line.split()[0]}: Command not found.\r\n")

    def st_sh(self) -> State:
        while True:
            self.io.write(self.ps1)
            line = self.io.read_line()
            try:
                for command in split_commands(line or ""):
                    self.status = self.sh_command(command.replace("$?", str(self.status)))
            except Goto as jump:
                return jump.state

    def st_poweroff(self) -> State:
        self.io.lines(POWEROFF, self.tick)
        return None

    def sh_command(self, command: str) -> int:
        """Run one simple command of the sh state; its exit status."""
        try:
            words = shlex.split(command)
        except ValueError:
            self.io.write("sh: Syntax error: Unterminated quoted string\r\n")
            return 2
        words = [w for w in words if not re.fullmatch(r"\d?>&\d|\d?>+/dev/null", w)]
        while words and words[0] in ("env", "exec"):
            words = words[1:]
        assignments = []
        while words and re.match(r"[A-Za-z_]\w*=", words[0]):
            assignments.append(words.pop(0))
        if not words:
            for a in assignments:
                if a.startswith("PS1="):
                    self.ps1 = a[4:]
            return 0
        cmd, args = words[0], words[1:]
        if cmd in NO_OPS:
            return 0
        if tuple(words) in FIXED:
            output, status = FIXED[tuple(words)]
            self.io.write(output)
            return status
        if cmd == "echo":
            self.io.write(" ".join(args) + "\r\n")
            return 0
        if cmd in ("mount_cd9660", "mount"):
            return 0
        if cmd == "ls":
            self.io.write(f"ls: {args[-1] if args else '.'}: No such file or directory\r\n")
            return 1
        if cmd.endswith("install.sh") or cmd in ("sh", "/bin/sh") and any(a.endswith("install.sh") for a in args):
            return self.install()
        if cmd in ("sh", "/bin/sh") and not args:
            return 0  # already in sh
        if words in (["poweroff"], ["poweroff", "-p"], ["shutdown", "-p", "now"], ["halt", "-p"]):
            raise Goto(self.st_poweroff)
        if cmd == "exit":
            raise Goto(self.st_login)
        self.io.write(f"sh: {cmd}: not found\r\n")
        return 127

    def install(self) -> int:
        """The seed ISO's install.sh, as far as its progress markers go."""
        for i, step in enumerate(INSTALL_STEPS):
            self.pause(2)
            self.io.write(f"vmlab-step: {step}\r\n")
            if self.fault == "install-exit-3":
                self.pause(1)
                self.io.write("install.sh: newfs_hammer2 failed: No space left on device\r\n")
                return 3
            if self.fault == "panic" and i == 1:
                self.pause(1)
                self.io.lines(PANIC)
                self.io.write("db> ")
                raise Goto(self.st_silent)
        return 0


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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--fault", default="none", choices=FAULTS)
    parser.add_argument("--tick", default=0.05, type=float)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(FileNotFoundError):
        args.socket.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    serial = None
    try:
        server.bind(str(args.socket))
        server.listen(1)
        conn, _ = server.accept()  # like QEMU's wait=on: the guest starts when a client connects
        server.close()
        serial = Serial(conn, Path(str(args.socket) + ".transcript"))
        serial.log.write(f"# dragonfly_sim fault={args.fault} tick={args.tick}\n")
        Guest(serial, args.fault, args.tick).run()
        serial.hang_up()
        return 0
    except Disconnected:
        return 1
    finally:
        if serial is not None:
            serial.close()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()


@contextlib.contextmanager
def simulator(socket_path: Path, fault: str = "none", tick: float = 0.05) -> Iterator[subprocess.Popen]:
    """Run the simulator on `socket_path` until the block ends; yields its process."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    socket_path = Path(socket_path)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a stale socket would look ready before the simulator is
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--socket", str(socket_path),
                             "--fault", fault, "--tick", str(tick)])
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
            proc.terminate()  # SIGTERM lets it finish the transcript
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


if __name__ == "__main__":
    sys.exit(main())
