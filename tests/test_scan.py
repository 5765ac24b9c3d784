"""The host's scan of the project (vmlab.sync.tree.scan), which decides what the loop's fast path
sends without rsync, must list exactly what rsync sends. No VM is needed: real rsync copies
a real tree into a local folder, and that copy is the oracle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Set

import pytest

from vmlab.config import SyncConfig
from vmlab.sync.rules import Rules
from vmlab.sync.tree import diff, scan
from vmlab.watch import Ignored

FILES = ["top.txt", "sub/top.txt", "a.tmp", "sub/b.tmp", ".git/HEAD", "sub/.git", "vm/default/disk",
         "sub/vm/kept", ".venv/bin/python", "sub/.venv/kept", "docs/build/page.html", "x/docs/build/page.html",
         "docs/keep.md", "build/out.o", "sub/build/out.o", "notes/build", "src/main.c"]


def project(root: Path) -> Path:
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / "cache").mkdir()
    (root / "linked").symlink_to("cache")  # a link to a folder: rsync -a sends it as a link
    return root


def rsync_sends(root: Path, excludes: List[str], tmp_path: Path) -> Set[str]:
    """What real rsync copies, with vmlab's own exclude arguments (Rules.rsync_options)."""
    out = tmp_path / "copy"
    shutil.rmtree(out, ignore_errors=True)
    args = Rules(SyncConfig(excludes=tuple(excludes))).rsync_options()
    subprocess.run(["rsync", "-a", *args, f"{root}/", f"{out}/"], check=True)
    return {str(p.relative_to(out)) for p in out.rglob("*")}


@pytest.mark.parametrize("excludes", [
    [],
    ["*.tmp", "build/"],
    ["/.venv/", "docs/build", "/top.txt", "linked/", "notes/"],
    ["/build", "sub/", "*.c"],
], ids=["none", "names", "paths", "mixed"])
def test_the_scan_lists_exactly_what_rsync_sends(tmp_path: Path, excludes: List[str]) -> None:
    root = project(tmp_path / "project")
    tree = scan(root, Rules(SyncConfig(guest_dir="p", excludes=excludes)))
    assert tree.exact
    assert set(tree.entries) == rsync_sends(root, excludes, tmp_path)


@pytest.mark.parametrize("pattern", ["!", "!top.txt", "+ *", "- *.tmp", "+ .git", "-top.txt", " top.txt", "*",
                                     "?.tmp", "a.tmp/", "top.txt/", ".git/", "vm", "/vm", "sub/vm/", "*.tmp*"])
def test_the_scan_agrees_with_rsync_on_every_pattern_it_applies(tmp_path: Path, pattern: str) -> None:
    """A pattern the scan applies itself (`exact`) leaves out what rsync leaves out, no more and
    no less; any other it leaves to rsync. Rules (`!`, which clears rsync's list, `+ `, `- `),
    which the config refuses, are never taken for names: the scan took `!` for a file name
    while rsync, told `!`, dropped every exclude before it and sent .git and vm/."""
    root = project(tmp_path / "project")
    (root / "!top.txt").write_text("a name with a bang")
    tree = scan(root, Rules(SyncConfig(guest_dir="p", excludes=(pattern, "*.c"))))
    sent = rsync_sends(root, [pattern, "*.c"], tmp_path)
    assert not {p for p in sent if p.split("/")[0] in (".git", "vm")}, "vmlab's own excludes were cleared"
    if tree.exact:
        assert set(tree.entries) == sent
    else:
        assert set(tree.entries) >= sent


def test_a_pattern_the_scan_cannot_apply_leaves_the_turn_to_rsync(tmp_path: Path) -> None:
    """`src/*.c` (a wildcard in a path) is rsync's to apply: the scan lists more than rsync
    sends, so it offers no delta of its own, whatever changed."""
    root = project(tmp_path / "project")
    settings = SyncConfig(guest_dir="p", excludes=["src/*.c"])
    before = scan(root, Rules(settings))
    assert not before.exact and "src/main.c" in before.entries and "src/main.c" not in rsync_sends(
        root, ["src/*.c"], tmp_path)
    (root / "src" / "main.c").write_text("edited")
    assert diff(before.entries, scan(root, Rules(settings))) is None


def test_watch_leaves_out_what_the_scan_leaves_out(tmp_path: Path) -> None:
    """A save under an anchored exclude (`/.venv/` is what `vmlab init` writes) or a literal
    path starts no run; the same name elsewhere does."""
    root = project(tmp_path / "project")
    ignored = Ignored(root, root / "vm", SyncConfig(excludes=("/top.txt", "/notes/", "docs/build")))
    saved = {name: ignored(None, str(root / name)) for name in
             ("top.txt", "sub/top.txt", "notes/build", "docs/build/page.html", "x/docs/build/page.html",
              "docs/keep.md", ".git/HEAD", "vm/default/disk", "src/main.c")}
    assert saved == {"top.txt": False, "sub/top.txt": True, "notes/build": False, "docs/build/page.html": False,
                     "x/docs/build/page.html": False, "docs/keep.md": True, ".git/HEAD": False,
                     "vm/default/disk": False, "src/main.c": True}


def test_issue24_item10_watch_sees_a_top_level_file_whose_name_starts_with_two_dots(tmp_path: Path) -> None:
    """`..data` is a name like any other (Kubernetes' ConfigMap folders use it): the sync sends
    it, and a save of it must start a run. watch took every path whose relative form starts
    with '..' for one outside the project; only '..' itself, or '../...', is."""
    root = project(tmp_path / "project")
    for name in ("..data", "..hidden/x", "...", "sub/..data"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    assert {"..data", "..hidden/x", "...", "sub/..data"} <= set(scan(root, Rules(SyncConfig())).entries)
    ignored = Ignored(root, root / "vm", SyncConfig())
    assert [ignored(None, str(root / name)) for name in ("..data", "..hidden/x", "...", "sub/..data")] == [True] * 4
    assert not ignored(None, str(tmp_path / "outside.txt")) and not ignored(None, str(tmp_path))


def git_project(root: Path) -> Path:
    """A git checkout: a .gitignore that re-includes (!), an ignored folder, a tracked file git
    would ignore, names with wildcard characters, a folder holding only ignored files."""
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n")
    for name in ("a.log", "keep.log", "main.c", "build/out.o", "sub/deep.log", "sub/keep.log", "st*r.log",
                 "tracked/t.log", "bra[c]ket.c", "bra[c]ket.log", "bracket.c", "logs/only.log", "logs/deep/x.log"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    subprocess.run(["git", "add", "-f", "tracked/t.log"], cwd=root, check=True)
    return root


def test_with_gitignore_watch_starts_a_run_exactly_for_what_rsync_sends(tmp_path: Path) -> None:
    """One reading of git's rules for the sync and for watch (`git ls-files`, as rules.Rules
    reads it): a save starts a run exactly when real rsync, given the sync's options and git's
    list, would send the file. A file deleted is judged by the list from before it went; a new
    file in a folder that held only ignored ones is the sync's again."""
    root = git_project(tmp_path / "project")
    settings = SyncConfig(gitignore=True)
    watched = Ignored(root, root / "vm", settings)
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}
    rules = Rules.read(root, settings)
    copy = tmp_path / "copy"
    subprocess.run(["rsync", "-a", *rules.rsync_options(), f"{root}/", f"{copy}/"], input=rules.rsync_input(),
                   text=True, check=True)
    sent = {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()}
    assert sent == {".gitignore", "keep.log", "main.c", "sub/keep.log", "tracked/t.log", "bra[c]ket.c", "bracket.c"}
    assert {str(Path(p).relative_to(root)) for p in watched.kept({str(root / f) for f in files})} == sent
    (root / "a.log").unlink()
    (root / "main.c").unlink()
    (root / "logs" / "new.c").write_text("new")
    assert watched.kept({str(root / f) for f in ("a.log", "main.c", "logs/new.c", "logs/deep/x.log")}) == \
        {str(root / "main.c"), str(root / "logs" / "new.c")}
