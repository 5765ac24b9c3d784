"""What changed in the project since the last sync, and sending only that.

rsync finds what changed by scanning both copies: ~0.3-0.5 s under TCG even when
one file changed, because the guest's side of the scan is emulated. The host can
know on its own: a scan of its tree (every path rsync would send, with size, times
and mode) is kept in the VM's folder after each sync (vm/NAME/synced.json), and
the next turn's scan is compared with it. The changed files then go as one tar
stream on the suite's own SSH session and deletions as one `rm`: no second session,
no guest-side scan. The record is only trusted while the guest's copy is the one
it describes (sync.SyncGate checks the guest's stamp), so a restore, a reset or a
start of another disk makes the next turn a full rsync.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import shlex
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

from vmlab.config import SyncConfig
from vmlab.schema import rsync_rule

Entry = Tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, mode: any change means "send it"
MAX_FILES = 500  # more than this, or MAX_BYTES, and rsync (compressed, by blocks) is the better tool
MAX_BYTES = 16 << 20
INLINE_BYTES = 64 << 10  # up to this much of edited files goes in the session's command line, not a tar
ALWAYS_EXCLUDED = (".git", "/vm/")  # never sent, whatever the config says: git's store, vmlab's own state


@dataclass
class Tree:
    """The host's side of the project as rsync would send it: relative path -> Entry."""

    entries: Dict[str, Entry]
    digest: str  # of the entries and of the sync settings: equal digests, nothing to send
    exact: bool = True  # False: it also lists paths rsync leaves out (see Excludes)


@dataclass
class Delta:
    """Paths to send (files, links, new folders) and paths to delete in the guest's copy."""

    send: List[str] = field(default_factory=list)
    delete: List[str] = field(default_factory=list)
    size: int = 0

    def __bool__(self) -> bool:
        return bool(self.send or self.delete)

    def __str__(self) -> str:
        sent = f"{len(self.send)} changed file{'s' if len(self.send) != 1 else ''} sent ({self.size / 1024:.0f} KiB)"
        return sent + (f", {len(self.delete)} deleted" if self.delete else "")


def is_plain_name(pattern: str) -> bool:
    """An exclude rsync matches against a name at any depth, the way fnmatch does: skipping
    such folders in the scan cannot hide a change rsync would send."""
    return bool(pattern.rstrip("/")) and not rsync_rule(pattern) and not re.search(r"[/\[\\]|\*\*",
                                                                                   pattern.rstrip("/"))


def is_literal_path(pattern: str) -> bool:
    """An exclude naming one path (`/.venv/`, `docs/build`): a slash before its end, no
    wildcard, no rule prefix. rsync matches it against the whole path: from the top when it
    starts with `/`, else against the path's end."""
    body = pattern.rstrip("/")
    return "/" in body and bool(body.strip("/")) and not rsync_rule(pattern) and not re.search(r"[*?\[\\]|//", body)


class Excludes:
    """What rsync leaves out (ALWAYS_EXCLUDED and the config's excludes), as the scan can
    apply it exactly: names at any depth (`*.o`, `build/`) and literal paths (`/.venv/`).
    Any other pattern (a wildcard in a path, an rsync rule such as `!`, which the config
    refuses) makes `exact` False: the scan then sees more than rsync sends, so what changed
    is left to rsync to send, never guessed."""

    def __init__(self, patterns: Iterable[str]):
        given = list(patterns)
        rules = any(rsync_rule(p) for p in given)  # an include or a clear may undo any exclude but vmlab's own,
        patterns = [*ALWAYS_EXCLUDED, *([] if rules else given)]  # so then the scan applies only those
        self.names = [(p.rstrip("/"), p.endswith("/")) for p in patterns if is_plain_name(p)]
        self.paths = [(p.rstrip("/"), p.endswith("/")) for p in patterns if is_literal_path(p)]
        self.exact = not rules and len(self.names) + len(self.paths) == len(patterns)

    def __call__(self, path: str, is_dir: bool) -> bool:
        """Whether rsync leaves out `path` (relative to the project, '/' between names) itself."""
        name = path.rpartition("/")[2]
        for pattern, dir_only in self.names:
            if (is_dir or not dir_only) and fnmatch.fnmatchcase(name, pattern):
                return True
        for pattern, dir_only in self.paths:
            at = path == pattern[1:] if pattern.startswith("/") else path == pattern or path.endswith("/" + pattern)
            if (is_dir or not dir_only) and at:
                return True
        return False


def scan(project_dir: Path, settings: SyncConfig, ignored: Set[str]) -> Tree:
    """Every path under `project_dir` that rsync sends, with its Entry (see Excludes: with an
    exclude it cannot apply exactly, it lists more, and the tree is not `exact`). `ignored`
    is git's list (sync.git_ignored), left out as rsync leaves it out, and hashed: a rule
    that stops ignoring a file changes the digest."""
    digest = hashlib.sha256(repr((str(project_dir), settings, sorted(ignored))).encode(errors="surrogateescape"))
    excluded = Excludes(settings.excludes)
    entries: Dict[str, Entry] = {}
    for folder, dirs, files in os.walk(project_dir):
        rel = "" if folder == str(project_dir) else os.path.relpath(folder, project_dir) + "/"
        descend = []
        for name in sorted(files + dirs):
            path = rel + name
            st = os.lstat(os.path.join(folder, name))
            is_dir = stat.S_ISDIR(st.st_mode)  # a link to a folder is a link to rsync -a, not a folder
            if excluded(path, is_dir) or path in ignored or (is_dir and path + "/" in ignored):
                continue
            descend += [name] if is_dir else []
            entry = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
            entries[path] = entry
            digest.update(f"{folder}/{name}\0{entry[0]}\0{entry[1]}\0{entry[2]}\0{entry[3]}\0"
                          .encode(errors="surrogateescape"))
        dirs[:] = descend
    return Tree(entries, digest.hexdigest(), excluded.exact)


def diff(old: Dict[str, Entry], new: Tree) -> Optional[Delta]:
    """What turns the copy `old` describes into `new`, or None when rsync should do it
    (too much to send, a name the one-line protocol cannot carry, or a tree that is not exact)."""
    if not new.exact:
        return None
    delta = Delta()
    for path, entry in new.entries.items():
        before = old.get(path)
        if before is not None and tuple(before) == entry:
            continue
        is_dir = stat.S_ISDIR(entry[3])
        if before is not None and stat.S_IFMT(before[3]) != stat.S_IFMT(entry[3]):
            delta.delete.append(path)  # a file became a folder, or a link: make room first
        elif before is not None and is_dir and stat.S_IMODE(before[3]) == stat.S_IMODE(entry[3]):
            continue  # a folder whose content changed: its files say what
        delta.send.append(path)
        delta.size += 0 if is_dir else entry[0]
    gone = sorted(set(old) - set(new.entries))
    delta.delete += [p for p in gone if not any(p.startswith(d + "/") for d in gone)]
    if len(delta.send) > MAX_FILES or delta.size > MAX_BYTES or any("\n" in p for p in delta.send + delta.delete):
        return None
    delta.send.sort()  # folders before what they hold
    return delta


def tar_stream(project_dir: Path, paths: List[str]) -> bytes:
    """An uncompressed tar of `paths` (relative to project_dir), links as links, folders alone."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            tar.add(str(project_dir / path), arcname=path, recursive=False)
    return out.getvalue()


def answer(delta: Delta, project_dir: Path) -> bytes:
    """The handshake's answer that applies `delta` (see guest_apply): one line, then the tar."""
    removed = " ".join(shlex.quote(p) for p in delta.delete)
    return f"delta {removed}\n".encode(errors="surrogateescape") + tar_stream(project_dir, delta.send)


def inline_writes(delta: Delta, old: Dict[str, Entry], new: Tree, project_dir: Path) -> Optional[str]:
    """The common edit (files that existed, same mode, small, no NUL byte, nothing deleted) as
    shell lines that write them with the shell's own printf: under TCG every exec in the guest
    costs ~50 ms, and this needs none (tar is one). None when `delta` is not such an edit.
    (The files get the guest's time as mtime; a later rsync compares their bytes and fixes it.)"""
    if delta.delete or not delta.send or delta.size > INLINE_BYTES:
        return None
    lines = []
    for path in delta.send:
        before, entry = old.get(path), new.entries[path]
        if before is None or not stat.S_ISREG(entry[3]) or tuple(before)[3] != entry[3]:
            return None
        try:
            data = (project_dir / path).read_bytes()
        except OSError:
            return None
        if b"\0" in data or len(data) != entry[0]:
            return None  # a shell string cannot hold NUL; a size that moved: it is being written
        lines.append(f"printf %s {shlex.quote(data.decode(errors='surrogateescape'))} > {shlex.quote(path)}")
    return " && ".join(lines)


def guest_apply(folder: str) -> str:
    """Shell lines, run in the suite's session after an answer line `delta NAMES...` was read:
    delete the (host-quoted) names, then unpack the rest of the input in the guest's copy."""
    return (f'( cd {shlex.quote(folder)} && {{ [ -z "${{answer#delta}}" ] || eval "rm -rf -- ${{answer#delta}}"; }} '
            f'&& tar -xpf - 2>&1 ) || exit {DELTA_FAILED}')


DELTA_FAILED = 96  # what a suite's session exits with when applying the changed files failed
