"""The project's files into the guest: rsync over the VM's shared SSH connection.

Incremental, with --delete (a file deleted on the host is deleted in the guest),
symlinks sent as symlinks; `.git` and the top-level `vm/` are never sent, nor the
config's excludes, nor (with `gitignore: true`) what git ignores. That is git's
own answer (`git ls-files --ignored`), not rsync's reading of .gitignore files:
rsync's rules differ from git's (`!` re-includes, for one), and users expect git's.
"""

from __future__ import annotations

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

from vmlab import atomic, delta, host
from vmlab.config import SyncConfig
from vmlab.errors import ConfigError, GuestUnreachable, SyncError
from vmlab.openssh import SSH_FAILED, SharedConnection

STAMP_SUFFIX = ".vmlab-synced"  # beside the guest's copy: <guest_dir>.vmlab-synced (see SyncGate)
log = logging.getLogger(__name__)
RSYNC_LOST_CONNECTION = 12  # rsync's "error in rsync protocol data stream": its remote shell went away
NOT_SYNCED = 97  # what a suite's session exits with when the host gave up before syncing
# A file's time in the guest moves in clock ticks (4 ms at HZ=250, 10 ms at DragonFly's HZ=100):
# the suite must not write in the stamp's tick, or -cnewer would miss it next time.
STAMP_TICK = 0.02


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


def anchored(path: str) -> str:
    """An rsync exclude matching exactly this path under the project: a backslash escapes a
    wildcard character only in a pattern that has one."""
    return "/" + (re.sub(r"([*?\[\\])", r"\\\1", path) if re.search(r"[*?\[]", path) else path)


def exclude_options(settings: SyncConfig) -> List[str]:
    """rsync's exclude options: vmlab's own, the config's, what git ignores (read on stdin), and
    vmlab's own again. The config refuses rsync's rules, but none could undo vmlab's: an include
    (`+ `) after the first ones never wins (rsync takes the first rule that matches), and a
    clear (`!`, every rule so far) comes before the last ones."""
    own = [f"--exclude={pattern}" for pattern in delta.ALWAYS_EXCLUDED]
    return [*own, *(f"--exclude={pattern}" for pattern in settings.excludes),
            *(["--from0", "--exclude-from=-"] if settings.gitignore else []), *own]


def rsync_argv(conn: SharedConnection, project_dir: Path, settings: SyncConfig) -> List[str]:
    """rsync's command line; with settings.gitignore it reads git_ignored's list, anchored, on stdin."""
    argv = [host.which("rsync") or "rsync", "-a", "--delete", "--stats", *exclude_options(settings)]
    # --mkpath (rsync 3.2.3+) makes guest_dir; a `mkdir -p && rsync` wrapper costs an exec (~40 ms under TCG)
    return argv + ["--mkpath", "-e", shlex.join(conn.ssh_command()),
                   f"{project_dir}/", f"{conn.destination}:{settings.guest_dir}/"]


def sync(conn: SharedConnection, project_dir: Path, settings: SyncConfig) -> SyncResult:
    """Make the guest's copy of `project_dir` (at settings.guest_dir) equal to it."""
    host.require(["rsync", "ssh"], "syncing the project into the guest")
    started = time.monotonic()
    ignored = "".join(anchored(path) + "\0" for path in git_ignored(project_dir)) if settings.gitignore else ""
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


def host_tree(project_dir: Path, settings: SyncConfig) -> delta.Tree:
    """The host's side of the project as rsync would send it (see delta.scan), with what git
    ignores (settings.gitignore) left out as rsync leaves it out."""
    return delta.scan(project_dir, settings, set(git_ignored(project_dir)) if settings.gitignore else set())


def host_digest(project_dir: Path, settings: SyncConfig) -> str:
    """Equal digests mean nothing on the host changed that rsync could send."""
    return host_tree(project_dir, settings).digest


class SyncGate:
    """Sync only when the guest's copy may differ, decided in the first suite's own session.

    A loop turn with nothing changed should cost one SSH session, not rsync's (~0.45 s
    under TCG for 2,000 files) plus the suite's; one with a file edited, that session
    and the file. The host remembers (vm/NAME/synced.json) the project's tree as last
    sent and a random token the guest wrote beside its copy right after (a stamp file).
    The suite's session starts with a check: the stamp holds that token and nothing in
    the copy changed since (find -cnewer) -> "fresh", else "stale"; then it waits for
    the host's answer: `go` (nothing changed on the host either), `delta ...` followed
    by a tar of what the host changed (delta.py: no rsync scan, no second session), or
    `synced` after the host ran rsync over a second channel ("stale", or too much
    changed). So an edit or new file in the guest, or a restore to before the sync (or
    a reset: the record goes with the disk) all make it a full rsync.
    """

    MARK = "vmlab-sync-check:"

    def __init__(self, conn: SharedConnection, project_dir: Path, settings: SyncConfig, record: Path):
        self.conn, self.project_dir, self.settings, self.record = conn, project_dir, settings, record
        self.tree = host_tree(project_dir, settings)
        self.digest = self.tree.digest
        self.token = secrets.token_hex(8)
        self.answered = False  # the guest ran the check
        self.guest_pid: Optional[int] = None  # the session's shell in the guest: the suite runs under it
        self.result: Optional[SyncResult] = None  # set when rsync ran
        self.sent: Optional[delta.Delta] = None  # set when only what changed was sent
        try:
            last = json.loads(record.read_text())
        except (OSError, ValueError):
            last = {}
        self.last = last if isinstance(last, dict) else {}
        # The common edit, known before the session starts: written by the fresh guest itself
        # (delta.inline_writes), with no round trip and no exec.
        self.inline: Optional[delta.Delta] = None
        self._inline_lines: Optional[str] = None
        if "tree" in self.last and "token" in self.last and self.last.get("digest") != self.digest:
            changes = delta.diff(self.last["tree"], self.tree)
            if changes:
                self._inline_lines = delta.inline_writes(changes, self.last["tree"], self.tree, project_dir)
                self.inline = changes if self._inline_lines else None

    def prelude(self) -> str:
        """Shell lines that run before the suite, as the SSH user."""
        folder = self.settings.guest_dir.rstrip("/")
        expected = self.last.get("token")
        if not expected or folder in ("", ".", "~"):
            fresh = "false"  # never synced (or no folder of its own): no need to ask the guest
        else:
            fresh = (f'[ -d {shlex.quote(folder)} ] && {{ read -r t < "$s"; }} 2>/dev/null && '
                     f'[ "$t" = {shlex.quote(str(expected))} ] && '
                     f'changed=$({self._find_changed(folder)}) && [ -z "$changed" ]')
        # After the stamp, the suite waits out its tick (STAMP_TICK): here for the host's answer,
        # which answer() holds back that long (a `sleep` there is an exec, ~16 ms measured under TCG); after
        # a sync, with a `sleep`, as those sessions ran rsync or tar already.
        applied = "fresh"
        if self._inline_lines and fresh != "false":
            fresh += (f" && {{ ( cd {shlex.quote(folder)} && {self._inline_lines} ) || exit {delta.DELTA_FAILED}; }} "
                      f'&& echo {self.token} > "$s"')
            applied = "applied"
        return (f"s={shlex.quote(folder + STAMP_SUFFIX)}\n"
                f"if {fresh}; then echo {self.MARK}{applied} $$; else echo {self.MARK}stale $$; fi\n"
                f"read -r answer || exit {NOT_SYNCED}\n"
                f'if [ "$answer" != go ]; then\n'
                f'  case "$answer" in delta*) {delta.guest_apply(folder)};; synced) ;; *) exit {NOT_SYNCED};; esac\n'
                f'  echo {self.token} > "$s" && sleep {STAMP_TICK}\nfi\n')

    def _find_changed(self, folder: str) -> str:
        """find(1) for what changed in the guest's copy since the stamp, but in what rsync
        leaves alone (.git, vm/, excluded names and literal paths), so a build folder listed
        in the excludes (`build/`, `/build/`) can be written without costing a sync."""
        excludes = delta.Excludes(self.settings.excludes)
        skip = [f"-name {shlex.quote(name)}" + (" -type d" if dir_only else "") for name, dir_only in excludes.names]
        skip += [f"-path {shlex.quote(folder + path if path.startswith('/') else '*/' + path)}"  # top, or any depth
                 + (" -type d" if dir_only else "") for path, dir_only in excludes.paths]
        return f'find {shlex.quote(folder)} \\( {" -o ".join(skip)} \\) -prune -o -cnewer "$s" -print'

    def answer(self, line: str) -> Optional[bytes]:
        """The handshake (see SharedConnection.run): what the guest's copy needs."""
        if not line.startswith(self.MARK):
            return None
        self.answered = True
        line, _, pid = line.partition(" ")
        self.guest_pid = int(pid) if pid.isdigit() else None
        if line == self.MARK + "applied" and self.inline:  # the guest wrote the edited files and its stamp
            self._remember()
            self.sent = self.inline
            log.info("synced %s: %s, only what changed (no rsync scan)", self.project_dir, self.inline)
            time.sleep(STAMP_TICK)  # the stamp was written before this line was sent: its tick is over after
            return b"go\n"
        fresh = line == self.MARK + "fresh"
        if fresh and self.last.get("digest") == self.digest:
            log.info("in sync: nothing changed in %s or in the guest's copy since the last sync", self.project_dir)
            return b"go\n"
        started = time.monotonic()
        changes = delta.diff(self.last.get("tree") or {}, self.tree) if fresh and "tree" in self.last else None
        self._remember()
        if changes:
            self.sent = changes
            data = delta.answer(changes, self.project_dir)
            log.info("synced %s: %s in %.2fs, only what changed (no rsync scan)", self.project_dir, changes,
                     time.monotonic() - started)
            return data
        self.result = sync(self.conn, self.project_dir, self.settings)
        log.info("synced %s: %s", self.project_dir, self.result)
        return b"synced\n"

    def _remember(self) -> None:
        """The tree as the guest's copy will have it, and the token its stamp will hold: written
        before the guest writes the stamp, so a failure between leaves the two disagreeing (a
        full rsync next time), never agreeing on a copy that was not made."""
        data = json.dumps({"digest": self.digest, "token": self.token, "tree": self.tree.entries})
        atomic.write_text(self.record, data)
