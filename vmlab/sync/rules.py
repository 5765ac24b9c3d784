"""What the sync leaves out of the project: one set of rules for everything that reads them.

rsync gets them as its exclude options (rsync.py), the host's scan (tree.py) and `vmlab watch`
apply them to paths, and the guest's change check prunes what they name from its find (guest.py):

- vmlab's own (ALWAYS_EXCLUDED): git's store and vmlab's state, never sent, whatever the config says;
- the config's `sync.excludes`: rsync's patterns, never its rules (the config refuses those:
  schema.rsync_rule; given any in code, the scan applies vmlab's own alone, see Excludes);
- with `sync.gitignore: true`, what git ignores: git's own answer (`git ls-files --ignored`),
  not rsync's reading of .gitignore files (rsync's rules differ from git's: `!` re-includes,
  for one), and users expect git's.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path
from typing import FrozenSet, Iterable, List

from vmlab import host
from vmlab.config import SyncConfig
from vmlab.errors import ConfigError
from vmlab.schema import rsync_rule

ALWAYS_EXCLUDED = (".git", "/vm/")  # never sent, whatever the config says: git's store, vmlab's own state


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
    """vmlab's own excludes and the config's, as the scan can apply them exactly: names at any
    depth (`*.o`, `build/`) and literal paths (`/.venv/`). Any other pattern (a wildcard in a
    path, an rsync rule such as `!`, which the config refuses) makes `exact` False: the scan
    then sees more than rsync sends, so what changed is left to rsync to send, never guessed."""

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


def git_ignored(project_dir: Path) -> List[str]:
    """What git ignores in the project (and does not track), relative to it, folders ending
    in '/': .gitignore files with every rule git has, .git/info/exclude, core.excludesFile.
    A folder that holds only what git ignores is listed as a folder."""
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


class Rules:
    """The sync's rules for one project: `settings`' excludes and, with settings.gitignore,
    git's list as it was when read (read())."""

    def __init__(self, settings: SyncConfig, git: Iterable[str] = ()):
        self.settings = settings
        self.excludes = Excludes(settings.excludes)
        self.git: FrozenSet[str] = frozenset(git)

    @classmethod
    def read(cls, project_dir: Path, settings: SyncConfig) -> "Rules":
        """The rules of `project_dir` now: git is asked (with settings.gitignore) once."""
        return cls(settings, git_ignored(project_dir) if settings.gitignore else ())

    @property
    def exact(self) -> bool:
        """Whether leaves_out() answers as rsync does for every path (see Excludes)."""
        return self.excludes.exact

    def leaves_out(self, path: str, is_dir: bool) -> bool:
        """Whether the sync leaves out `path` (relative, '/' between names) itself; what a folder
        it leaves out holds goes with it (see leaves_out_anywhere)."""
        return self.excludes(path, is_dir) or path in self.git or (is_dir and path + "/" in self.git)

    def leaves_out_anywhere(self, path: str, is_dir: bool) -> bool:
        """Whether the sync leaves out `path` or a folder on its way: for a path met alone (watch)."""
        parts = path.split("/")
        return any(self.leaves_out("/".join(parts[:i]), True) for i in range(1, len(parts))) \
            or self.leaves_out(path, is_dir)

    def git_ignores(self, path: str) -> bool:
        """Whether git's list holds `path` (as a file or a folder) or a folder on its way: for
        a path met alone, which may be gone since the list was read (watch)."""
        parts = path.split("/")
        return path in self.git or path + "/" in self.git or \
            any("/".join(parts[:i]) + "/" in self.git for i in range(1, len(parts)))

    def rsync_options(self) -> List[str]:
        """rsync's exclude options: vmlab's own, the config's, git's list (read on stdin:
        rsync_input()), and vmlab's own again. The config refuses rsync's rules, but none could
        undo vmlab's: an include (`+ `) after the first ones never wins (rsync takes the first
        rule that matches), and a clear (`!`, every rule so far) comes before the last ones."""
        own = [f"--exclude={pattern}" for pattern in ALWAYS_EXCLUDED]
        return [*own, *(f"--exclude={pattern}" for pattern in self.settings.excludes),
                *(["--from0", "--exclude-from=-"] if self.settings.gitignore else []), *own]

    def rsync_input(self) -> str:
        """What rsync_options() has rsync read on its stdin: git's list, each path anchored."""
        return "".join(anchored(path) + "\0" for path in sorted(self.git))
