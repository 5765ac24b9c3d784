"""The project's files into the guest: rsync over the VM's shared SSH connection.

Incremental, with --delete (a file deleted on the host is deleted in the guest),
symlinks sent as symlinks; `.git` and the top-level `vm/` are never sent, nor the
config's excludes, nor (with `gitignore: true`) what git ignores. That is git's
own answer (`git ls-files --ignored`), not rsync's reading of .gitignore files:
rsync's rules differ from git's (`!` re-includes, for one), and users expect git's.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from vmlab import host
from vmlab.config import SyncConfig
from vmlab.errors import ConfigError, GuestUnreachable, SyncError
from vmlab.openssh import SSH_FAILED, SharedConnection

ALWAYS_EXCLUDED = ("--exclude=.git", "--exclude=/vm/")
STAMP_SUFFIX = ".vmlab-synced"  # beside the guest's copy: <guest_dir>.vmlab-synced (see SyncGate)
log = logging.getLogger(__name__)
RSYNC_LOST_CONNECTION = 12  # rsync's "error in rsync protocol data stream": its remote shell went away
NOT_SYNCED = 97  # what a suite's session exits with when the host gave up before syncing


@dataclass(frozen=True)
class SyncResult:
    files_transferred: int
    files_total: int
    bytes_sent: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.files_transferred} of {self.files_total} files sent "
                f"({self.bytes_sent / 1024:.0f} KiB) in {self.seconds:.2f}s")


def git_ignored(project_dir: Path) -> List[str]:
    """What git ignores in the project (and does not track), relative to it, folders ending
    in '/': .gitignore files with every rule git has, .git/info/exclude, core.excludesFile."""
    host.require(["git"], "sync.gitignore: true")
    proc = subprocess.run([host.which("git") or "git", "-c", "core.fsmonitor=false", "ls-files", "-z", "--others",
                           "--ignored", "--exclude-standard", "--directory"],
                          cwd=project_dir, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"sync.gitignore is true, but git cannot say what it ignores in {project_dir} (it must "
                          f"be a git checkout): {proc.stderr.decode(errors='replace').strip()}")
    return [os.fsdecode(path) for path in proc.stdout.split(b"\0") if path]


def _anchored(path: str) -> str:
    """An rsync exclude matching exactly this path under the project: a backslash escapes a
    wildcard character only in a pattern that has one."""
    return "/" + (re.sub(r"([*?\[\\])", r"\\\1", path) if re.search(r"[*?\[]", path) else path)


def rsync_argv(conn: SharedConnection, project_dir: Path, settings: SyncConfig) -> list:
    """rsync's command line; with settings.gitignore it reads git_ignored's list, anchored, on stdin."""
    argv = [host.which("rsync") or "rsync", "-a", "--delete", "--stats", *ALWAYS_EXCLUDED,
            *(f"--exclude={pattern}" for pattern in settings.excludes)]
    if settings.gitignore:
        argv += ["--from0", "--exclude-from=-"]
    # --mkpath (rsync 3.2.3+) makes guest_dir; a `mkdir -p && rsync` wrapper costs an exec (~40 ms under TCG)
    return argv + ["--mkpath", "-e", shlex.join(conn.ssh_command()),
                   f"{project_dir}/", f"{conn.destination}:{settings.guest_dir}/"]


def sync(conn: SharedConnection, project_dir: Path, settings: SyncConfig) -> SyncResult:
    """Make the guest's copy of `project_dir` (at settings.guest_dir) equal to it."""
    host.require(["rsync", "ssh"], "syncing the project into the guest")
    started = time.monotonic()
    ignored = "".join(_anchored(path) + "\0" for path in git_ignored(project_dir)) if settings.gitignore else ""
    proc = subprocess.run(rsync_argv(conn, project_dir, settings), input=ignored, capture_output=True,
                          text=True, errors="surrogateescape", check=False)
    if proc.returncode in (SSH_FAILED, RSYNC_LOST_CONNECTION):  # which of the two rsync says is a race
        conn.run(":", timeout=30)  # GuestUnreachable if SSH itself fails: the guest is not answering
    if proc.returncode == SSH_FAILED:
        raise GuestUnreachable(f"rsync could not reach the guest on 127.0.0.1:{conn.port}: {proc.stderr.strip()}")
    if proc.returncode != 0:
        hint = ("\nThe guest's login shell printed something before rsync could start (a line in "
                "~/.bashrc, ~/.profile or /etc/profile?): rsync needs it silent for commands. "
                "`invoke vm.ssh -c true` shows what it prints.") if "is your shell clean" in proc.stderr else ""
        raise SyncError(f"rsync of {project_dir} to the guest's {settings.guest_dir} failed "
                        f"(exit {proc.returncode}):\n{proc.stderr.strip()}{hint}")

    def stat(label: str) -> int:
        m = re.search(rf"^{label}: ([\d,]+)", proc.stdout, re.MULTILINE)
        return int(m.group(1).replace(",", "")) if m else 0

    return SyncResult(stat("Number of regular files transferred"), stat("Number of files"),
                      stat("Total bytes sent"), time.monotonic() - started)


def host_digest(project_dir: Path, settings: SyncConfig) -> str:
    """A digest of the sync settings and of every path's size, times and mode that rsync
    could send: equal digests mean nothing on the host changed. (It looks at more than
    rsync sends, so a change it sees may send nothing; it never misses one rsync would send.)
    What git ignores (with settings.gitignore) is left out as rsync leaves it out, and the
    list itself is hashed: a rule that stops ignoring a file changes the digest."""
    ignored = set(git_ignored(project_dir)) if settings.gitignore else set()
    digest = hashlib.sha256(repr((str(project_dir), settings, sorted(ignored))).encode(errors="surrogateescape"))
    plain = [p for p in settings.excludes if _is_plain_name(p)]

    def excluded(name: str, is_dir: bool) -> bool:
        return any(fnmatch.fnmatchcase(name, p.rstrip("/")) for p in plain if is_dir or not p.endswith("/"))

    for folder, dirs, files in os.walk(project_dir):
        top = folder == str(project_dir)
        rel = "" if top else os.path.relpath(folder, project_dir) + "/"
        dirs[:] = sorted(d for d in dirs if d != ".git" and not (top and d == "vm") and not excluded(d, True)
                         and not {rel + d, rel + d + "/"} & ignored)
        for name in sorted(f for f in files if not excluded(f, False) and rel + f not in ignored) + dirs:
            st = os.lstat(os.path.join(folder, name))
            digest.update(f"{folder}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_mode}\0"
                          .encode(errors="surrogateescape"))
    return digest.hexdigest()


def _is_plain_name(pattern: str) -> bool:
    """An exclude rsync matches against a name at any depth, the way fnmatch does: skipping
    such folders in host_digest cannot hide a change rsync would send."""
    return bool(pattern.rstrip("/")) and not re.search(r"[/\[\\]|^[-+] |\*\*", pattern.rstrip("/"))


class SyncGate:
    """Sync only when the guest's copy may differ, decided in the first suite's own session.

    A loop turn with nothing changed should cost one SSH session, not rsync's (~0.45 s
    under TCG for 2,000 files) plus the suite's. The host remembers a digest of the
    project as last sent and a random token the guest wrote beside its copy right after
    (a stamp file). The suite's session starts with a check: the stamp holds that token
    and nothing in the copy changed since (find -cnewer) -> "fresh", else "stale", and
    it waits while the host runs rsync over a second channel. So a host edit, an edit
    or new file in the guest, or a restore to before the sync all make it sync.
    """

    MARK = "vmlab-sync-check:"

    def __init__(self, conn: SharedConnection, project_dir: Path, settings: SyncConfig, record: Path):
        self.conn, self.project_dir, self.settings, self.record = conn, project_dir, settings, record
        self.digest = host_digest(project_dir, settings)
        self.token = secrets.token_hex(8)
        self.answered = False  # the guest ran the check
        self.result: Optional[SyncResult] = None  # set when it synced

    def prelude(self) -> str:
        """Shell lines that run before the suite, as the SSH user."""
        folder = self.settings.guest_dir.rstrip("/")
        try:
            last = json.loads(self.record.read_text())
        except (OSError, ValueError):
            last = {}
        expected = last.get("token") if last.get("digest") == self.digest else None
        if not expected or folder in ("", ".", "~"):
            fresh = "false"  # the host changed (or never synced): no need to ask the guest
        else:
            fresh = (f'[ -d {shlex.quote(folder)} ] && {{ read -r t < "$s"; }} 2>/dev/null && [ "$t" = {shlex.quote(expected)} ] && '
                     f'changed=$({self._find_changed(folder)}) && [ -z "$changed" ]')
        # After the stamp, wait out the clock's tick: a file the suite writes in that same
        # tick would have the stamp's ctime, and -cnewer would not see it next time.
        return (f"s={shlex.quote(folder + STAMP_SUFFIX)}\n"
                f"if {fresh}; then echo {self.MARK}fresh; else echo {self.MARK}stale\n"
                f"  read answer && [ \"$answer\" = go ] || exit {NOT_SYNCED}\n"
                f"  echo {self.token} > \"$s\" && sleep 0.02; fi\n")

    def _find_changed(self, folder: str) -> str:
        """find(1) for what changed in the guest's copy since the stamp, but in what rsync
        leaves alone (.git, vm/, excluded names), so a build folder listed in the excludes
        can be written without costing a sync."""
        skip = ["-name .git", f"-path {shlex.quote(folder + '/vm')}"]
        skip += [f"-name {shlex.quote(p.rstrip('/'))}" + (" -type d" if p.endswith("/") else "")
                 for p in self.settings.excludes if _is_plain_name(p)]
        return f'find {shlex.quote(folder)} \\( {" -o ".join(skip)} \\) -prune -o -cnewer "$s" -print'

    def answer(self, line: str) -> Optional[str]:
        """The handshake (see SharedConnection.run): rsync if the guest said "stale"."""
        if not line.startswith(self.MARK):
            return None
        self.answered = True
        if line == self.MARK + "stale":
            self.result = sync(self.conn, self.project_dir, self.settings)
            self.record.write_text(json.dumps({"digest": self.digest, "token": self.token}))
            log.info("synced %s: %s", self.project_dir, self.result)
        else:
            log.info("in sync: nothing changed in %s or in the guest's copy since the last sync", self.project_dir)
        return "go\n"
