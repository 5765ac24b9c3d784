"""Talking to a guest: one interface over either SSH connection, and the one rule for running as root.

Two connections serve different jobs (the serial console, install/console.py, is a third channel,
for installs, and is not one of them):
  openssh.SharedConnection  OpenSSH multiplexed through a control master that outlives the
                            command: the edit-test loop (sync, suites, provisioning), where a
                            new handshake per command would cost about a second under TCG
  ssh.GuestSSH              paramiko in this process: waiting for a guest to answer (with
                            the reason it does not yet), `vmlab ssh -c` (its input, output and
                            error streams apart), diagnostics
Both are a `Transport`: `run(command, as_root=...)` gives a CommandResult, `put` copies a file
in, `get` reads one back. Both pin the guest's host key from the lab's keys (keys.LabKeys: the
one place), and both become root the same way (`Root`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from vmlab.command import CommandResult


@dataclass(frozen=True)
class Root:
    """How a command of `user` runs as root in the guest: as it is for root, else after the
    guest profile's `privileged` prefix (sudo -n, doas -n: never a password prompt)."""

    user: str
    privileged: str  # the guest profile's (guests/<os>/profile.yaml)

    @property
    def prefix(self) -> str:
        """'' when `user` is root already, else the profile's prefix."""
        return "" if self.user == "root" else self.privileged.strip()

    def shell(self, command: str) -> str:
        """`command`, any shell text, as a line that runs it as root."""
        return f"{self.prefix} sh -c {shlex.quote(command)}" if self.prefix else command

    def program(self, line: str) -> str:
        """`line`, which starts with a program (not a shell word such as `cd` or `A=1`), as root:
        the prefix put before it, no shell between (a suite's `timeout ...` line: runs/suites.py)."""
        return f"{self.prefix} {line}" if self.prefix else line


class Transport(Protocol):
    """A way to run commands in a guest and move files to and from it (see the module's docstring)."""

    def run(self, command: str, *, as_root: bool = False, timeout: Optional[float] = None) -> CommandResult:
        """Run `command` through the guest's login shell (as root with `as_root`). A connection
        that fails is GuestUnreachable; past `timeout` the result has exit status -1."""
        ...

    def put(self, local: Path, remote: str) -> None:
        """Copy the file `local` into the guest as `remote`."""
        ...

    def get(self, remote: str) -> Optional[bytes]:
        """The bytes of the guest's file `remote`, or None if there is no such file."""
        ...
