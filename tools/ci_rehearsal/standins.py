"""Stand-ins for what only GitHub has: a checkout, sudo, actions/cache, upload- and
download-artifact, and the clean-up of QEMUs a runner would take with it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence

from ci_rehearsal.records import JobRecord
from vmlab import host
from vmlab.errors import ConfigError

SUDO_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sudo's secure_path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _put(src: Path, dst: Path, link: bool) -> None:
    """Copy a file or folder; `link`: hard links where the file system allows (files never written again)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True,
                        copy_function=_link_or_copy if link else shutil.copy2)
    else:
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        (_link_or_copy if link else shutil.copy2)(str(src), str(dst))


def checkout(repo: Path, ws: Path) -> None:
    """actions/checkout: the working tree as git sees it (tracked and untracked files, not what it
    ignores), committed in a new repository, so that git answers in the workspace as in a checkout."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=False)
    if listed.returncode != 0:
        raise ConfigError(f"{repo}: not a git checkout, so it cannot stand in for actions/checkout: "
                          f"{listed.stderr.decode(errors='replace').strip()}")
    names = sorted({n for n in listed.stdout.decode().split("\0") if n and os.path.lexists(repo / n)})
    for name in names:
        _put(repo / name, ws / name, link=False)
    git = ["git", "-C", str(ws), "-c", "user.name=vmlab rehearsal", "-c", "user.email=rehearsal@localhost",
           "-c", "commit.gpgsign=false"]
    what = "actions/checkout's stand-in"
    host.run([*git, "init", "-q"], what)
    host.run([*git, "add", "-f", "--pathspec-from-file=-", "--pathspec-file-nul"], what, input="\0".join(names))
    host.run([*git, "commit", "-q", "--no-verify", "-m", "the rehearsal's checkout"], what)


def as_sudo(argv: Sequence[str]) -> NoReturn:
    """`sudo` in a rehearsal step: this host runs as root already, so only the environment
    changes, as sudo's env_reset does it: TERM, LANG, LC_* and --preserve-env's names pass."""
    keep, everything, at = set(), False, 0
    while at < len(argv) and argv[at].startswith("-"):
        option = argv[at]
        at += 1
        if option == "--":
            break
        if option.startswith("--preserve-env="):
            keep.update(option.split("=", 1)[1].split(","))
        elif option in ("-E", "--preserve-env"):
            everything = True
        elif option not in ("-n", "--non-interactive", "-H", "--set-home"):
            sys.exit(f"sudo (the CI rehearsal's stand-in): option {option} is not supported")
    if at == len(argv):
        sys.exit("usage: sudo [--preserve-env=NAME,...] COMMAND")
    env = dict(os.environ) if everything else {
        k: v for k, v in os.environ.items() if k in keep or k in ("TERM", "LANG") or k.startswith("LC_")}
    if not everything:
        env["PATH"] = SUDO_PATH
    env.update(HOME="/root", USER="root", LOGNAME="root", SHELL="/bin/bash", SUDO_USER="root", SUDO_UID="0",
               SUDO_GID="0", SUDO_COMMAND=" ".join(argv[at:]))
    try:
        os.execvpe(argv[at], list(argv[at:]), env)
    except OSError as e:
        sys.exit(f"sudo: {argv[at]}: {e.strerror}")


def built_goldens(vmlab_cache: Path) -> List[str]:
    """The golden images made in this cache, not imported: a cache hit makes none."""
    made = []
    for manifest in sorted(vmlab_cache.glob("golden/*/manifest.json")):
        if "imported_from" not in json.loads(manifest.read_text()):
            made.append(manifest.parent.name)
    return made


def kill_qemus(folder: Path) -> List[int]:
    """Kill every QEMU whose command line names `folder` (its disk or sockets are there)."""
    killed = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(folder) in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed.append(int(pid_dir.name))
            except ProcessLookupError:
                pass
    return killed


def signal_group(proc: subprocess.Popen[str], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass



class ActionStandIns:
    """The `uses:` steps a runner takes from GitHub, done with folders: the job's (workspace,
    own folder), the rehearsal's cache store and the run's artifacts folder."""

    ws: Path
    folder: Path
    artifacts: Path
    cache_store: Path
    workflow_path: Path
    record: JobRecord
    repo: Path

    def say(self, text: str) -> None:
        raise NotImplementedError

    def add_post_step(self, step: Any) -> None:
        raise NotImplementedError

    def _uses(self, uses: str, inputs: Dict[str, Any], outputs: Dict[str, Any]) -> int:
        action = uses.split("@", 1)[0]
        if action == "actions/checkout":
            checkout(self.repo, self.ws)
        elif action in ("actions/cache", "actions/cache/restore"):
            hit = self._restore(inputs)
            if hit is not None:
                outputs["cache-hit"] = "true" if hit else "false"
            if action == "actions/cache" and not hit:
                self.add_post_step(lambda: self._save(inputs))
        elif action == "actions/cache/save":
            self._save(inputs)
        elif action == "actions/upload-artifact":
            self._upload(inputs)
        elif action == "actions/download-artifact":
            return self._download(inputs)
        else:
            raise ConfigError(f"{self.workflow_path}: the rehearsal has no stand-in for {uses} "
                              "(it has: checkout, cache, upload-artifact, download-artifact)")
        return 0

    def _paths(self, inputs: Dict[str, Any], what: str) -> List[Path]:
        """The `path:` lines, in the workspace or the job's own folder, never elsewhere on this host."""
        paths = []
        for line in str(inputs.get("path") or "").splitlines():
            if line.strip():
                path = (self.ws / line.strip()).resolve()
                if not path.is_relative_to(self.folder):
                    raise ConfigError(f"{self.workflow_path}: {what} path {line.strip()} is outside the job's "
                                      f"folder {self.folder} (on a runner it would be a fixed path on its disk: "
                                      "write it with ${{ env.VMLAB_CACHE }} or relative to the workspace)")
                paths.append(path)
        if not paths:
            raise ConfigError(f"{self.workflow_path}: {what} without `path:`")
        return paths

    def _entry(self, key: str) -> Path:
        return self.cache_store / re.sub(r"[^A-Za-z0-9._-]", "_", key)[:200]

    def _restore(self, inputs: Dict[str, Any]) -> Optional[bool]:
        """True on the exact key, False on a restore-keys prefix, None when nothing was restored."""
        key = str(inputs.get("key") or "")
        paths = self._paths(inputs, "actions/cache")
        entry, exact = self._entry(key), True
        if not (entry / "manifest.json").exists():
            exact = False
            prefixes = [p.strip() for p in str(inputs.get("restore-keys") or "").splitlines() if p.strip()]
            found = [e for p in prefixes for e in sorted(self.cache_store.glob(self._entry(p).name + "*"),
                                                         key=lambda e: e.stat().st_mtime, reverse=True)
                     if (e / "manifest.json").exists()]
            if not found:
                self.record.caches.append({"key": key, "hit": False})
                self.say(f"cache miss: {key}")
                return None
            entry = found[0]
        for index, path in enumerate(paths):
            if (entry / str(index)).exists():
                _put(entry / str(index), path, link=False)
        self.record.caches.append({"key": key, "hit": exact, "restored": json.loads(
            (entry / "manifest.json").read_text())["key"]})
        self.say(f"cache {'hit' if exact else 'restored from ' + entry.name}: {key}")
        return exact

    def _save(self, inputs: Dict[str, Any]) -> None:
        key = str(inputs.get("key") or "")
        entry = self._entry(key)
        paths = [p for p in self._paths(inputs, "actions/cache") if p.exists()]
        if (entry / "manifest.json").exists() or not paths:
            self.say(f"cache not saved: {key} " + ("exists" if paths else "(no file at its path)"))
            return
        partial = entry.with_name(entry.name + f".partial-{os.getpid()}-{self.record.label}")
        shutil.rmtree(partial, ignore_errors=True)
        for index, path in enumerate(self._paths(inputs, "actions/cache")):
            if path.exists():
                _put(path, partial / str(index), link=True)
        (partial / "manifest.json").write_text(json.dumps({"key": key, "saved_by": self.record.label}) + "\n")
        try:
            os.rename(partial, entry)
        except OSError:  # another job saved the same key first: entries are immutable, as on GitHub
            shutil.rmtree(partial, ignore_errors=True)
        self.record.caches.append({"key": key, "saved": True})
        self.say(f"cache saved: {key}")

    def _upload(self, inputs: Dict[str, Any]) -> None:
        name = str(inputs.get("name") or "artifact")
        paths = [p for p in self._paths(inputs, "actions/upload-artifact") if p.exists()]
        target = self.artifacts / name
        if not paths:
            if inputs.get("if-no-files-found", "warn") == "error":
                raise ConfigError(f"upload-artifact {name}: no files at {inputs.get('path')}")
            self.say(f"warning: upload-artifact {name}: no files at {inputs.get('path')}; nothing uploaded")
            return
        try:
            target.mkdir(parents=True)  # one name once per run, as on GitHub (v4)
        except FileExistsError:
            raise ConfigError(f"upload-artifact: an artifact named {name!r} was uploaded already in this run; "
                              "every shard must upload under a name of its own") from None
        root = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0] if paths[0].is_dir() else \
            paths[0].parent
        for path in paths:
            _put(path, target / path.relative_to(root) if path != root else target, link=True)
        self.record.artifacts.append(name)
        self.say(f"uploaded artifact {name}")

    def _download(self, inputs: Dict[str, Any]) -> int:
        dest = (self.ws / str(inputs.get("path") or ".")).resolve()
        names = [str(inputs["name"])] if inputs.get("name") else sorted(p.name for p in self.artifacts.iterdir())
        for name in names:
            source = self.artifacts / name
            if not source.is_dir():
                self.say(f"download-artifact: there is no artifact {name!r} in this run")
                return 1
            _put(source, dest if inputs.get("name") else dest / name, link=False)
        return 0
