"""The serial console: a conversation with the guest, and a terminal to attach to it.

`Console` drives the console the way a careful person would: it waits for text
(each wait has an idle deadline that output restarts, and a hard limit), watches
for signs of failure at every step (a panic, a debugger prompt, a boot loop),
types at a pace the guest does not drop, and runs commands at a prompt of its
own whose echo cannot be mistaken for it. When something goes wrong, the error
names the step, what was expected, how long it waited, and shows the console.

QEMU serves the console on a unix socket and logs every byte to console.log, so
attaching (and detaching) never disturbs the guest or loses output. A conversation may
also keep a timed record of itself (`timed`): one JSON object a line, {"t": seconds since
it began, "out": text read} or {"t": ..., "in": keys typed}, which tests/dragonfly_sim.py
can play back (--replay) so that a failure seen on a real guest becomes a test.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import select
import socket
import sys
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from vmlab.errors import ConsoleError, MachineError
from vmlab.qemu.machine import ESCAPES

if TYPE_CHECKING:  # pexpect is imported where a console is opened: not every command needs it
    import pexpect.fdpexpect

log = logging.getLogger(__name__)

DETACH_KEY = b"\x1d"  # Ctrl-]
DETACH_NAME = "Ctrl-]"
TAIL_LINES = 40
RC = re.compile(r"vmlab-rc=(\d+)")  # what `echo "vmlab-rc=$?"` prints; its echo shows `$?`, not digits
STEP = re.compile(r"vmlab-step: ([^\r\n]*)\r?\n")  # a progress line of vmlab's guest scripts


@dataclass(frozen=True)
class FailRule:
    """Text that means the step cannot succeed: seen `times` times (a boot loop: more than once).

    `until` names the last step the rule holds for: a loader's answer means nothing once the
    kernel runs, whose log lines could say anything (Recipe.run applies it)."""

    pattern: str
    means: str
    times: int = 1
    until: str = ""


DEFAULT_FAILS = (
    FailRule(r"(?i)\bpanic: ", "the guest kernel panicked"),
    FailRule(r"Kernel panic - not syncing", "the guest kernel panicked"),
    FailRule(r"(?m)^db> ", "the guest dropped into its kernel debugger"),
    FailRule(r"Login incorrect", "the guest refused the login"),
    FailRule(r"(?m)^Password:", "the guest refused the login: it asked for a password, and vmlab has none"),
    # "[y/N]: " is pkg's (its bootstrap's and `pkg install`'s questions): without the colon it
    # was not seen, and the step waited out its idle deadline.
    FailRule(r"\((?:y|Y)/(?:n|N)\) *\S*$|\[(?:y|Y)/(?:n|N)\] *:? *$|\((?:y|Y),(?:n|N)\) *\S*$",
             "a command is asking a question nobody will answer"),
    # cpdup's YesNo() before it removes what the source lacks, unless -i0 (bin/cpdup/cpdup.c)
    FailRule(r"\(Yes/No\) \[No\]\? *$", "a command is asking a question nobody will answer"),
)


class _Transcript:
    """pexpect's logfile_read: keeps every character read (for tails and counts), an optional copy,
    and an optional timed record (TIMED_FORMAT) of what was read and what was typed."""

    def __init__(self, copy: Optional[Path], timed: Optional[Path] = None):
        self.text = ""
        self.copy = open(copy, "a", encoding="utf-8") if copy else None
        self.timed = open(timed, "w", encoding="utf-8") if timed else None
        self.started = time.monotonic()

    def write(self, data: str) -> None:
        self.text += data
        if self.copy:
            self.copy.write(data)
        self._record("out", data)

    def typed(self, keys: str) -> None:
        self._record("in", keys)

    def ended(self) -> None:
        """The other end closed the console (QEMU exited: the machine stopped)."""
        self._record("closed", "yes")

    def _record(self, way: str, data: str) -> None:
        if self.timed and data:
            self.timed.write(json.dumps({"t": round(time.monotonic() - self.started, 3), way: data}) + "\n")
            self.timed.flush()  # a hang, a Ctrl-C or a crash keeps all of it

    def flush(self) -> None:
        if self.copy:
            self.copy.flush()

    def close(self) -> None:
        for f in (self.copy, self.timed):
            if f:
                f.close()

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines as a person would read them: no terminal escapes, no blank lines."""
        clean = ESCAPES.sub("", self.text).replace("\r\n", "\n").replace("\r", "\n")
        return "\n".join([line.rstrip() for line in clean.splitlines() if line.strip()][-lines:])


class Console:
    """One conversation over a console socket (QEMU's, or a simulator's in tests)."""

    def __init__(self, socket_path: Path, fails: Sequence[FailRule] = DEFAULT_FAILS,
                 transcript: Optional[Path] = None, key_delay: float = 0.02, time_scale: float = 1.0,
                 timed: Optional[Path] = None):
        self.socket_path = socket_path
        self.fails = list(fails)
        self.key_delay = key_delay
        self.time_scale = time_scale  # tests shrink every deadline with it
        self.prompt: Optional[str] = None  # our unique shell prompt, once set
        self._transcript = _Transcript(transcript, timed)
        self._sock: Optional[socket.socket] = None
        self._child: Optional["pexpect.fdpexpect.fdspawn[str]"] = None
        self.closed = False

    def __enter__(self) -> "Console":
        deadline = time.monotonic() + 10
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
                break
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline:
                    raise MachineError(f"cannot open the serial console {self.socket_path}: {e.strerror}") from None
                time.sleep(0.1)
        self._sock = sock
        import pexpect.fdpexpect

        self._child = pexpect.fdpexpect.fdspawn(sock.fileno(), encoding="utf-8", codec_errors="replace")
        self._child.logfile_read = self._transcript
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._transcript.close()

    def tail(self, lines: int = TAIL_LINES) -> str:
        return self._transcript.tail(lines)

    # --- waiting ---

    def expect(self, patterns: Sequence[str], step: str, idle: float, limit: float,
               resend: Optional[str] = None, resend_every: float = 0.0,
               since: Optional[float] = None) -> "re.Match[str]":
        """Wait for the first of `patterns`; its match. `resend` is typed again every `resend_every` s.

        `limit` counts from `since` (a time.monotonic() value; default: now)."""
        import pexpect

        assert self._child is not None
        idle, limit = idle * self.time_scale, limit * self.time_scale
        fails = [f.pattern for f in self.fails if f.times == 1]
        compiled: List[Any] = [*patterns, *fails]
        last_output = last_send = time.monotonic()
        started = since if since is not None else last_output
        seen = len(self._transcript.text)
        every = resend_every * self.time_scale if resend is not None and resend_every else float("inf")
        while True:
            now = time.monotonic()
            wait = min(0.5, limit - (now - started), every - (now - last_send))  # wake up to type it again
            try:
                index = self._child.expect(compiled, timeout=max(0.02, wait))
            except pexpect.TIMEOUT:
                index = None
            except pexpect.EOF:
                self.closed = True
                self._transcript.ended()
                raise self._failure(step, patterns, started, "the console closed (the machine stopped)") from None
            now = time.monotonic()
            if len(self._transcript.text) != seen:
                seen, last_output = len(self._transcript.text), now
                self._check_repeats(step, patterns, started)
            if index is not None:
                if index >= len(patterns):
                    rule = next(f for f in self.fails if f.pattern == compiled[index])
                    raise self._failure(step, patterns, started, f"{rule.means} ({self._child.after!r})")
                match = self._child.match
                assert isinstance(match, re.Match)  # a pattern matched, not EOF or TIMEOUT
                return match
            if now - started > limit:
                raise self._failure(step, patterns, started, f"gave up after {limit:.0f}s")
            if now - last_output > idle:
                raise self._failure(step, patterns, started, f"no output for {idle:.0f}s")
            if now - last_send >= every:
                assert resend is not None  # `every` is finite only with something to resend
                log.info("  no answer to %r after %.0fs; typing it again", resend, now - last_send)
                self.send_keys(resend)
                last_send = now

    def _check_repeats(self, step: str, patterns: Sequence[str], started: float) -> None:
        for rule in self.fails:
            if rule.times > 1 and len(re.findall(rule.pattern, self._transcript.text)) >= rule.times:
                raise self._failure(step, patterns, started, rule.means)

    def _failure(self, step: str, patterns: Sequence[str], started: float, why: str) -> ConsoleError:
        waited = time.monotonic() - started
        wanted = " or ".join(repr(p) for p in patterns)
        return ConsoleError(f"step {step!r}: {why}; it waited {waited:.0f}s for {wanted}.",
                            detail=f"Last {TAIL_LINES} console lines:\n{self.tail()}")

    # --- typing ---

    def send_keys(self, keys: str) -> None:
        """Type `keys` one at a time: loaders reading the serial port drop keys typed too fast."""
        assert self._child is not None
        self._transcript.typed(keys)
        for key in keys:
            self._child.send(key)
            time.sleep(self.key_delay)

    def send_line(self, line: str) -> None:
        self.send_keys(line + "\r")

    # --- a shell ---

    def use_shell(self, shell: str, step: str, idle: float = 60, limit: float = 300) -> None:
        """Switch to `shell` with a prompt no echoed command can match: PS1='tok''$ ' echoes with the quotes."""
        token = "vmlab" + secrets.token_hex(3)
        self.send_line(f"exec {shell}")
        time.sleep(0.5 * self.time_scale)
        self.send_line(f"PS1='{token}''$ '")
        self.prompt = re.escape(f"{token}$ ")
        self.expect([self.prompt], step, idle, limit)

    def run(self, command: str, step: str, idle: float, limit: float,
            progress: Optional[Callable[[str], None]] = None) -> int:
        """Run `command` at our prompt; its exit status. Lines 'vmlab-step: ...' go to `progress`."""
        if self.prompt is None:
            raise ConsoleError(f"step {step!r}: no shell prompt of ours yet (a 'shell' step must come first)")
        self.send_line(f'{command}; echo "vmlab-rc=$?"')
        status = int(self.watch(RC.pattern, step, idle, limit, progress).group(1))
        self.expect([self.prompt], step, idle, limit)
        return status

    def watch(self, end: str, step: str, idle: float, limit: float,
              progress: Optional[Callable[[str], None]] = None) -> "re.Match[str]":
        """Wait for `end` without typing (a script the guest runs by itself); its match.

        Each 'vmlab-step: ...' line on the way goes to `progress`; output restarts the
        idle deadline, and `limit` caps the whole wait."""
        started = time.monotonic()
        while True:
            match = self.expect([STEP.pattern, end], step, idle, limit, since=started)
            if match.re.pattern != STEP.pattern:
                return match
            if progress:
                progress(match.group(1).strip())

    def wait_closed(self, step: str, limit: float) -> None:
        """Wait until the other end closes the console (QEMU exits when the guest powers off).

        The failure rules hold here as at every step: a guest that panics while it shuts down
        (a BSD then sits at `db>`) never closes the console, and was waited for until `limit`."""
        import pexpect

        assert self._child is not None
        wanted = ["<the machine powering off>"]
        fails = [f.pattern for f in self.fails if f.times == 1]
        started = time.monotonic()
        seen = len(self._transcript.text)
        while True:
            left = limit * self.time_scale - (time.monotonic() - started)
            if left <= 0:
                raise self._failure(step, wanted, started, f"it was still running after {limit:.0f}s")
            try:
                index: Optional[int] = self._child.expect([pexpect.EOF, *fails], timeout=min(0.5, left))
            except pexpect.TIMEOUT:
                index = None
            if len(self._transcript.text) != seen:
                seen = len(self._transcript.text)
                self._check_repeats(step, wanted, started)
            if index == 0:
                self.closed = True
                self._transcript.ended()
                return
            if index is not None:
                rule = next(f for f in self.fails if f.pattern == fails[index - 1])
                raise self._failure(step, wanted, started, f"{rule.means} ({self._child.after!r})")


def attach(console_socket: Path, name: str) -> None:
    """Relay stdin/stdout to the console until the detach key (or end of input)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(console_socket))
    except OSError as e:
        raise MachineError(f"cannot attach to the console of VM {name} ({console_socket}): {e.strerror}") from None
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(fd_in)
    sys.stderr.write(f"[attached to the serial console of VM {name}; {DETACH_NAME} detaches]\r\n")
    saved = termios.tcgetattr(fd_in) if is_tty else None
    try:
        if is_tty:
            tty.setraw(fd_in)
        while True:
            ready, _, _ = select.select([sock, fd_in], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    sys.stderr.write("\r\n[the console closed: QEMU stopped]\r\n")
                    return
                os.write(fd_out, data)
            if fd_in in ready:
                data = os.read(fd_in, 1024)
                if not data or DETACH_KEY in data:
                    sock.sendall(data.split(DETACH_KEY, 1)[0])
                    return
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        sock.close()
        sys.stderr.write(f"\r\n[detached from VM {name}]\n")


def rule_list(raw: Optional[List[Dict[str, Any]]]) -> List[FailRule]:
    """The default failure rules plus a recipe's own (each {pattern, means, times})."""
    return [*DEFAULT_FAILS, *(FailRule(r["pattern"], r["means"], int(r.get("times", 1)), str(r.get("until", "")))
                              for r in raw or [])]
