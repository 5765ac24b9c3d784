"""The guest's side of the sync: the shell lines a suite's session runs before the suite.

This module writes all of vmlab's shell for the sync, and reads the lines it prints. The
session talks to the host (gate.py) on its own lines, never through the suite's exit code:

    guest: vmlab-sync: copy fresh PID      (or `stale`) whether the copy is the one last sent;
                                           PID, the session's shell (the suite runs under it)
    host:  go | tar [NAMES] | synced       one line on the session's input, a tar after `tar`
    guest: vmlab-sync: ready [unstamped]   the copy is as the host's project: the suite runs
                                           (`unstamped`: the stamp could not be written)
           vmlab-sync: failed              it could not be made so: the session ends here

Lines before the first (a login shell's chatter) and after the last are the suite's output.
The pieces, each in its function below: the stamp, the check, the inline writes, the
answers. Under TCG every exec costs ~50 ms, so the shell runs none on the fast paths but
the check's find (and tar, when a tar is sent); the rest are builtins.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional

from vmlab.sync.rules import Excludes

MARK = "vmlab-sync: "
STAMP_SUFFIX = ".vmlab-synced"  # beside the guest's copy: <guest_dir>.vmlab-synced
# A file's time in the guest moves in clock ticks (4 ms at HZ=250, 10 ms at DragonFly's HZ=100):
# the suite must not write in the stamp's tick, or -cnewer would miss it next time.
STAMP_TICK = 0.02
GO, SYNCED = b"go\n", b"synced\n"  # the host's answers that send nothing more (see tar_answer)


@dataclass(frozen=True)
class Status:
    """One of the session's status lines: `copy` (fresh or not, and the shell's pid), `ready`,
    `ready unstamped` or `failed`."""

    word: str
    fresh: bool = False
    pid: Optional[int] = None


def status(line: str) -> Optional[Status]:
    """The status a line of the session's output gives, or None for any other line."""
    if not line.startswith(MARK):
        return None
    words = line[len(MARK):].split()
    if words[:1] == ["copy"] and len(words) == 3:
        return Status("copy", words[1] == "fresh", int(words[2]) if words[2].isdigit() else None)
    if words in (["ready"], ["ready", "unstamped"], ["failed"]):
        return Status(" ".join(words))
    return None


def checkable(folder: str) -> bool:
    """Whether the copy at `folder` can carry a stamp: not the login folder itself."""
    return folder.rstrip("/") not in ("", ".", "~")


def tar_answer(delete: List[str]) -> bytes:
    """The answer line that deletes `delete` (relative to the copy) before the tar that follows it."""
    return ("tar" + "".join(" " + shlex.quote(p) for p in delete) + "\n").encode(errors="surrogateescape")


def prelude(folder: str, expected: Optional[str], token: str, excludes: Excludes, inline: Dict[str, bytes]) -> str:
    """What the session runs before the suite, as the SSH user: the guest's copy at `folder`
    is checked against `expected` (the token of the last sync; None: no check, it is stale),
    written as `inline` says if it holds, then made as the host answers, stamped with `token`."""
    folder = folder.rstrip("/")
    check = _check(folder, expected, excludes) if expected and checkable(folder) else "false"
    if inline and check != "false":
        check += f" && {_writes(folder, inline)} && {_stamp(token)}"
    return (f"s={shlex.quote(folder + STAMP_SUFFIX)}\n"
            f"if {check}; then c=fresh; else c=stale; fi\n"
            f'echo "{MARK}copy $c $$"\n'
            f"read -r answer\n"
            f'case "$answer" in\n'
            f"  go) r=ready ;;\n"
            f"  synced) r=made ;;\n"
            f"  tar*) {_unpack(folder)} && r=made || r=failed ;;\n"
            f"  *) r=failed ;;\n"
            f"esac\n"
            f'if [ $r = made ]; then {_stamp(token)} && sleep {STAMP_TICK} && r=ready || r="ready unstamped"; fi\n'
            f'echo "{MARK}$r"\n'
            f'[ "$r" != failed ] || exit 1\n')


def _stamp(token: str) -> str:
    """The stamp: this sync's token in a file beside the copy, and by its time the moment
    after which a change in the copy is the guest's own. (After it, the suite waits out its
    tick: after an answer, with a `sleep`; after inline writes, the host holds `go` back.)
    One the SSH user cannot write leaves every turn to rsync, and the host says so."""
    return f'{{ echo {token} > "$s"; }} 2>/dev/null'


def _check(folder: str, expected: str, excludes: Excludes) -> str:
    """True when the copy is the one last sent: the stamp holds `expected`, and find(1) sees
    nothing changed in the copy since (-cnewer), but in what rsync leaves alone (.git, vm/,
    excluded names and literal paths), so a build folder listed in the excludes (`build/`,
    `/build/`) can be written without costing a sync."""
    skip = [f"-name {shlex.quote(name)}" + (" -type d" if dir_only else "") for name, dir_only in excludes.names]
    skip += [f"-path {shlex.quote(folder + path if path.startswith('/') else '*/' + path)}"  # top, or any depth
             + (" -type d" if dir_only else "") for path, dir_only in excludes.paths]
    find = f'find {shlex.quote(folder)} \\( {" -o ".join(skip)} \\) -prune -o -cnewer "$s" -print'
    return (f'[ -d {shlex.quote(folder)} ] && {{ read -r t < "$s"; }} 2>/dev/null && '
            f'[ "$t" = {shlex.quote(expected)} ] && changed=$({find}) && [ -z "$changed" ]')


def _writes(folder: str, inline: Dict[str, bytes]) -> str:
    """The edited files written by the shell's own printf, in a subshell in the copy."""
    writes = " && ".join(f"printf %s {shlex.quote(data.decode(errors='surrogateescape'))} > {shlex.quote(path)}"
                         for path, data in inline.items())
    return f"( cd {shlex.quote(folder)} && {writes} )"


def _unpack(folder: str) -> str:
    """After a `tar NAMES` answer: delete the (host-quoted) names, then unpack the rest of the
    input in the copy; tar's complaints go with the session's output."""
    return (f'( cd {shlex.quote(folder)} && {{ [ "$answer" = tar ] || eval "rm -rf -- ${{answer#tar }}"; }} '
            f"&& tar -xpf - 2>&1 )")
