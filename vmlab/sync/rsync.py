"""The project into the guest with rsync, over the VM's shared SSH connection.

Incremental, with --delete (a file deleted on the host is deleted in the guest), symlinks
sent as symlinks, leaving out what the sync's rules leave out (rules.py). `vmlab sync`
runs it alone; a suite's session runs it when plan.py says RSYNC.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from vmlab import host
from vmlab.errors import GuestUnreachable, SyncError
from vmlab.remote.openssh import SSH_FAILED, SharedConnection
from vmlab.sync.rules import Rules

RSYNC_LOST_CONNECTION = 12  # rsync's "error in rsync protocol data stream": its remote shell went away


@dataclass(frozen=True)
class SyncResult:
    files_transferred: int
    files_total: int
    bytes_sent: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.files_transferred} of {self.files_total} files sent "
                f"({self.bytes_sent / 1024:.0f} KiB) in {self.seconds:.2f}s")


def rsync_argv(conn: SharedConnection, project_dir: Path, rules: Rules) -> List[str]:
    """rsync's command line; it reads rules.rsync_input() on stdin."""
    argv = [host.which("rsync") or "rsync", "-a", "--delete", "--stats", *rules.rsync_options()]
    # --mkpath (rsync 3.2.3+) makes guest_dir; a `mkdir -p && rsync` wrapper costs an exec (~40 ms under TCG)
    return argv + ["--mkpath", "-e", shlex.join(conn.ssh_command()),
                   f"{project_dir}/", f"{conn.destination}:{rules.settings.guest_dir}/"]


def run(conn: SharedConnection, project_dir: Path, rules: Rules) -> SyncResult:
    """Make the guest's copy of `project_dir` (at the guest_dir of rules.settings) equal to it."""
    host.require(["rsync", "ssh"], "syncing the project into the guest")
    started = time.monotonic()
    proc = subprocess.run(rsync_argv(conn, project_dir, rules), input=rules.rsync_input(), capture_output=True,
                          text=True, errors="surrogateescape", check=False)
    if proc.returncode in (SSH_FAILED, RSYNC_LOST_CONNECTION):  # which of the two rsync says is a race
        conn.run(":", timeout=30)  # GuestUnreachable if SSH itself fails: the guest is not answering
    if proc.returncode == SSH_FAILED:
        raise GuestUnreachable(f"rsync could not reach the guest on 127.0.0.1:{conn.port}: {proc.stderr.strip()}")
    if proc.returncode != 0:
        hint = ("\nThe guest's login shell printed something before rsync could start (a line in "
                "~/.bashrc, ~/.profile or /etc/profile?): rsync needs it silent for commands. "
                "`invoke vm.ssh -c true` shows what it prints.") if "is your shell clean" in proc.stderr else ""
        raise SyncError(f"rsync of {project_dir} to the guest's {rules.settings.guest_dir} failed "
                        f"(exit {proc.returncode}):\n{proc.stderr.strip()}{hint}")

    def stat(label: str) -> int:
        m = re.search(rf"^{label}: ([\d,]+)", proc.stdout, re.MULTILINE)
        return int(m.group(1).replace(",", "")) if m else 0

    return SyncResult(stat("Number of regular files transferred"), stat("Number of files"),
                      stat("Total bytes sent"), time.monotonic() - started)
