"""The sync in a suite's own session: the host's side of the guest's lines (guest.py).

A loop turn with nothing changed should cost one SSH session, not rsync's (~0.45 s under
TCG for 2,000 files) plus the suite's; one with a file edited, that session and the file.
So the suite's session starts with guest.prelude, and SyncGate answers it as plan.py
decides: nothing, the edited files written by the session itself, a tar of what changed,
or rsync over a second session while the session waits. The suite runs only after the
guest says its copy is ready; a session that never said so is SyncError (check()),
whatever it exited with: the exit code is the suite's.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Optional

from vmlab.config import SyncConfig
from vmlab.errors import SyncError
from vmlab.remote.openssh import Claim, SharedConnection
from vmlab.sync import guest, plan, rsync
from vmlab.sync.plan import Way
from vmlab.sync.rules import Rules
from vmlab.sync.tree import Delta, scan, tar_stream

log = logging.getLogger(__name__)


class SyncGate:
    """Sync only when the guest's copy may differ, decided in the first suite's own session
    (see the module's docstring). `record`: where what was sent is kept (plan.Record)."""

    def __init__(self, conn: SharedConnection, project_dir: Path, settings: SyncConfig, record: Path):
        self.conn, self.project_dir, self.record = conn, project_dir, record
        self.folder = settings.guest_dir.rstrip("/")
        self.rules = Rules.read(project_dir, settings)
        self.tree = scan(project_dir, self.rules)
        self.last = plan.Record.read(record) if guest.checkable(self.folder) else None
        self.plan = plan.decide(self.last, self.tree, project_dir)  # if the guest's copy is as last sent
        self.token = secrets.token_hex(8)  # the stamp's, once this sync is done
        self.guest_pid: Optional[int] = None  # the session's shell in the guest: the suite runs under it
        self.copy_checked = False  # the guest said whether its copy is as last sent
        self.ready: Optional[bool] = None  # its last word: True, the copy is ready; False, it could not be made so
        self.result: Optional[rsync.SyncResult] = None  # set when rsync ran
        self.sent: Optional[Delta] = None  # set when only what changed was sent

    def prelude(self) -> str:
        """Shell lines that run before the suite, as the SSH user."""
        inline = self.plan.contents if self.plan.way is Way.INLINE else {}
        return guest.prelude(self.folder, self.last.token if self.last else None, self.token, self.rules.excludes,
                             inline)

    def claim(self, line: str) -> Optional[Claim]:
        """The handshake (see SharedConnection.run): the guest's status lines, answered."""
        said = guest.status(line)
        if said is None:
            return None
        if said.word != "copy":
            self.ready = said.word != "failed"
            if said.word == "ready unstamped":
                log.warning("the guest could not write vmlab's stamp %s%s (the SSH user must be able to write "
                            "beside the project's copy): every turn will sync with rsync", self.folder,
                            guest.STAMP_SUFFIX)
            return Claim()
        self.copy_checked, self.guest_pid = True, said.pid
        if not said.fresh:
            self.plan = plan.decide(self.last, self.tree, self.project_dir, copy_as_sent=False)
        return Claim(self._answer(), done=False)

    def _answer(self) -> bytes:
        """What the guest's copy needs, as plan.py decided: the answer line, and what follows it."""
        way, started = self.plan.way, time.monotonic()
        if way is Way.NOTHING:
            log.info("in sync: nothing changed in %s or in the guest's copy since the last sync", self.project_dir)
            return guest.GO
        self._remember()
        if way is Way.INLINE:  # the guest wrote the edited files and its stamp
            self.sent = self.plan.changes
            log.info("synced %s: %s, only what changed (no rsync scan)", self.project_dir, self.sent)
            time.sleep(guest.STAMP_TICK)  # the stamp was written before its line was sent: its tick is over after
            return guest.GO
        if way is Way.TAR:
            assert self.plan.changes is not None
            self.sent = self.plan.changes
            data = guest.tar_answer(self.sent.delete) + tar_stream(self.project_dir, self.sent.send)
            log.info("synced %s: %s in %.2fs, only what changed (no rsync scan)", self.project_dir, self.sent,
                     time.monotonic() - started)
            return data
        self.result = rsync.run(self.conn, self.project_dir, self.rules)
        log.info("synced %s: %s (rsync: %s)", self.project_dir, self.result, self.plan.why)
        return guest.SYNCED

    def _remember(self) -> None:
        """The tree as the guest's copy will have it, and the token its stamp will hold: written
        before the guest writes the stamp, so a failure between leaves the two disagreeing (a
        full rsync next time), never agreeing on a copy that was not made. (An INLINE plan's
        stamp is written with its check: a failure after it leaves the old record, as unlike.)"""
        plan.Record(self.tree.digest, self.token, self.tree.entries).write(self.record)

    def check(self, suite: str, log_path: Path) -> None:
        """SyncError unless the guest said its copy was ready before `suite` ran."""
        if not self.copy_checked:
            raise SyncError(f"the guest never ran vmlab's sync check before suite {suite} "
                            f"(see {log_path}: does the SSH user's shell print or exit first?)")
        if self.ready:
            return
        if self.ready is None:
            what = "the session ended before the guest's copy was ready"
        elif self.plan.way is Way.TAR:
            what = "the changed files could not be written in the guest's copy"
        else:
            what = "the guest did not get the host's answer"
        raise SyncError(f"{what}, before suite {suite} (see {log_path}); the next run syncs with rsync")

    def summary(self) -> str:
        """What this turn sent, for the run's report."""
        return str(self.sent or self.result or "in sync")
