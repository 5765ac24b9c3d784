"""How the guest's copy of the project is made equal to the host's: the one place that decides.

Four ways, cheapest first:

    NOTHING  neither copy changed since the last sync: the suite runs at once
    INLINE   a few small edits of files the guest has (same mode, no NUL byte, nothing
             deleted): written by the session's own shell with printf, no exec
             (every exec costs ~50 ms under TCG, and tar is one)
    TAR      what changed as one tar on the session's input, deletions as one `rm`:
             no rsync scan (~0.3-0.5 s under TCG), no second session
    RSYNC    rsync over a second session, scanning both copies

Two facts decide. What changed on the host: the record of the tree last sent (Record,
vm/NAME/synced.json) against this turn's scan (tree.diff). Whether the guest's copy is
still the one last sent, which only the guest can say (guest.py's check: its stamp holds
the record's token and nothing in its copy changed since): when it is not (an edit or a
build in the guest's copy, a restore to before the sync, a reset), or there is no record,
or too much changed, or an exclude only rsync applies, it is RSYNC. The record goes with
the disk (a snapshot, a warm state: lab/snapshotting.py, images/warm.py), so it is only trusted
while the guest's stamp agrees.
"""

from __future__ import annotations

import enum
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from vmlab import records
from vmlab.sync.tree import Delta, Entry, Tree, diff

INLINE_BYTES = 64 << 10  # up to this much of edited files goes in the session's command line, not a tar


class Way(enum.Enum):
    NOTHING = "nothing"
    INLINE = "inline"
    TAR = "tar"
    RSYNC = "rsync"


@dataclass(frozen=True)
class Record:
    """What the host last sent (vm/NAME/synced.json): the tree's digest and entries, and the
    token the guest's stamp got when its copy was made so."""

    digest: str
    token: str
    tree: Dict[str, Entry]

    @classmethod
    def read(cls, path: Path) -> Optional["Record"]:
        """The record at `path`, or None (none yet, or not one: the next sync is rsync)."""
        data = records.read(path)
        if not all(isinstance(data.get(k), t) for k, t in
                                                 (("digest", str), ("token", str), ("tree", dict))):
            return None
        return cls(data["digest"], data["token"], data["tree"])

    def write(self, path: Path) -> None:
        records.write(path, {"digest": self.digest, "token": self.token, "tree": self.tree})


@dataclass(frozen=True)
class Plan:
    way: Way
    changes: Optional[Delta] = None  # INLINE, TAR: what is sent and deleted
    contents: Dict[str, bytes] = field(default_factory=dict)  # INLINE: each edited file's bytes
    why: str = ""  # RSYNC: why not a cheaper way, for the log


def decide(last: Optional[Record], tree: Tree, project_dir: Path, copy_as_sent: bool = True) -> Plan:
    """The way for this turn: the host's `tree` now, `last` the record of what was sent
    (None: none the guest can be asked about), `copy_as_sent` what the guest's check said.
    Made before the guest is asked (as if its copy is as sent: an INLINE plan's writes go in
    the session's command, guarded by the check), and again if the guest says it is not."""
    if last is None:
        return Plan(Way.RSYNC, why="no record of a sync the guest's copy can be checked against")
    if not copy_as_sent:
        return Plan(Way.RSYNC, why="the guest's copy is not the one last sent (changed there, restored or new)")
    if last.digest == tree.digest:
        return Plan(Way.NOTHING)
    changes = diff(last.tree, tree)
    if changes is None:
        return Plan(Way.RSYNC, why="too much changed, or an exclude only rsync applies")
    if not changes:
        return Plan(Way.RSYNC, why="the excludes or what git ignores changed")  # the digest holds the rules
    contents = inline_contents(changes, last.tree, tree, project_dir)
    return Plan(Way.INLINE, changes, contents) if contents else Plan(Way.TAR, changes)


def inline_contents(changes: Delta, old: Dict[str, Entry], new: Tree, project_dir: Path) -> Dict[str, bytes]:
    """The edited files' bytes when `changes` is the common edit: files that existed, same
    mode, small, no NUL byte (a shell string cannot hold one), nothing deleted; else {}.
    (The files get the guest's time as mtime; a later rsync compares their bytes and fixes it.)"""
    if changes.delete or not changes.send or changes.size > INLINE_BYTES:
        return {}
    contents = {}
    for path in changes.send:
        before, entry = old.get(path), new.entries[path]
        if before is None or not stat.S_ISREG(entry[3]) or tuple(before)[3] != entry[3]:
            return {}
        try:
            data = (project_dir / path).read_bytes()
        except OSError:
            return {}
        if b"\0" in data or len(data) != entry[0]:
            return {}  # a size that moved: it is being written
        contents[path] = data
    return contents
