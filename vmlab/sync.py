"""The project's files into the guest: rsync over the VM's shared SSH connection.

Incremental, with --delete (a file deleted on the host is deleted in the guest),
symlinks sent as symlinks; `.git` and the top-level `vm/` are never sent, nor the
config's excludes, nor (with `gitignore: true`) what the .gitignore files name.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmlab import host
from vmlab.config import SyncConfig
from vmlab.errors import GuestUnreachable, SyncError
from vmlab.openssh import SSH_FAILED, SharedConnection

ALWAYS_EXCLUDED = ("--exclude=.git", "--exclude=/vm/")


@dataclass(frozen=True)
class SyncResult:
    files_transferred: int
    files_total: int
    bytes_sent: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.files_transferred} of {self.files_total} files sent "
                f"({self.bytes_sent / 1024:.0f} KiB) in {self.seconds:.2f}s")


def rsync_argv(conn: SharedConnection, project_dir: Path, settings: SyncConfig) -> list:
    argv = [host.which("rsync") or "rsync", "-a", "--delete", "--stats", *ALWAYS_EXCLUDED,
            *(f"--exclude={pattern}" for pattern in settings.excludes)]
    if settings.gitignore:
        argv.append("--filter=:- .gitignore")
    # --mkpath (rsync 3.2.3+) makes guest_dir; a `mkdir -p && rsync` wrapper costs an exec (~40 ms under TCG)
    return argv + ["--mkpath", "-e", shlex.join(conn.ssh_command()),
                   f"{project_dir}/", f"{conn.destination}:{settings.guest_dir}/"]


def sync(conn: SharedConnection, project_dir: Path, settings: SyncConfig) -> SyncResult:
    """Make the guest's copy of `project_dir` (at settings.guest_dir) equal to it."""
    host.require(["rsync", "ssh"], "syncing the project into the guest")
    started = time.monotonic()
    proc = subprocess.run(rsync_argv(conn, project_dir, settings), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if proc.returncode == SSH_FAILED:
        raise GuestUnreachable(f"rsync could not reach the guest on 127.0.0.1:{conn.port}: {proc.stderr.strip()}")
    if proc.returncode != 0:
        raise SyncError(f"rsync of {project_dir} to the guest's {settings.guest_dir} failed "
                        f"(exit {proc.returncode}):\n{proc.stderr.strip()}")

    def stat(label: str) -> int:
        m = re.search(rf"^{label}: ([\d,]+)", proc.stdout, re.MULTILINE)
        return int(m.group(1).replace(",", "")) if m else 0

    return SyncResult(stat("Number of regular files transferred"), stat("Number of files"),
                      stat("Total bytes sent"), time.monotonic() - started)
