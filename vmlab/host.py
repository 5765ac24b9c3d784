"""What vmlab needs from the host: tools, their packages, and facts about this boot.

A missing tool is a PrerequisiteMissing (exit code 2) that lists everything
missing at once and the command that installs it, rather than failing later
with a traceback from deep inside a subprocess call.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

from vmlab.errors import CommandFailed, PrerequisiteMissing

# Every host tool (or file) vmlab needs, and the Debian package that provides it.
PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "ssh": "openssh-client",
    "rsync": "rsync",
    "git": "git",  # sync.gitignore: git says what it ignores
    "xorriso": "xorriso",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "grub-mkrescue": "grub-common",  # the rehearsal's install ISO
    "/usr/lib/grub/i386-pc": "grub-pc-bin",  # GRUB's BIOS modules, which grub-mkrescue packs
    "zstd": "zstd",  # packs the system the rehearsal's medium installs
}
# Tools every command that runs a VM needs; image builds need more (see debian.py).
VM_TOOLS = ("qemu-system-x86_64", "qemu-img", "ssh", "rsync", "xorriso")
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(tool: str) -> Optional[str]:
    """Like `which`, but also looks in the sbin folders a non-root PATH may lack; a path must exist."""
    if tool.startswith("/"):
        return tool if os.path.exists(tool) else None
    path = os.environ.get("PATH", "")
    return shutil.which(tool, path=os.pathsep.join([path, *_SBIN]))


def require(tools: Iterable[str], purpose: str) -> None:
    """Raise PrerequisiteMissing naming every missing tool and how to install it."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        packages = sorted({PACKAGES.get(t, t) for t in missing})
        lines = "\n".join(f"  - {t} (Debian package {PACKAGES.get(t, '?')})" for t in missing)
        raise PrerequisiteMissing(f"{purpose} needs tools that are not installed", detail=lines,
                                  hint=f"install them: apt-get install {' '.join(packages)}  (or, as root: "
                                       "invoke vm.host-setup --install)")


def run(argv: Sequence[str], what: str, hint: str = "", **kwargs: Any) -> "subprocess.CompletedProcess[str]":
    """Run a host command that must succeed, for `what`; its output is captured (text).

    A missing tool is PrerequisiteMissing (with its package); a failure is CommandFailed
    with the command, its exit status, the last lines of its output and `hint`."""
    require([argv[0]], what)
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    if "stdout" in kwargs:
        kwargs.setdefault("stderr", subprocess.PIPE)
    else:
        kwargs["capture_output"] = True
    proc = subprocess.run([which(argv[0]) or argv[0], *argv[1:]], text=True, check=False, **kwargs)
    if proc.returncode != 0:
        output = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
        raise CommandFailed(f"{what} failed: `{shlex.join(argv)}` exited with status {proc.returncode}", hint=hint,
                            detail=output)
    return proc


def require_root(purpose: str) -> None:
    if os.geteuid() != 0:
        raise PrerequisiteMissing(f"{purpose} needs root (debootstrap, chroot); run it as root or with sudo")


def private_folder(folder: Path, purpose: str, otherwise: str) -> Path:
    """`folder`, made 0700 if missing; refused if it is not a folder of this user that no one
    else can read or write (a link, another user's, or open to group or others).

    Whoever can write to it can plant what vmlab then uses (a control socket it sends commands
    through, a `bin/bash` a rehearsal step runs as root), so, as OpenSSH refuses unsafe files, it
    is refused; `otherwise` says what the user can do instead (set XDG_RUNTIME_DIR, --work)."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise PrerequisiteMissing(f"cannot make {folder} for {purpose}: {e.strerror}; {otherwise}") from None
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        what = "not a folder" if not stat.S_ISDIR(st.st_mode) else \
            f"owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
        raise PrerequisiteMissing(
            f"{folder} is unsafe for {purpose} ({what}; it must be a folder of uid {os.getuid()} with mode "
            f"0700): remove it (rm -r {shlex.quote(str(folder))}) or {otherwise}")
    return folder


def boot_id() -> str:
    """Changes at every host boot; keys facts that hold only until a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def qemu_version() -> str:
    out = subprocess.run([which("qemu-system-x86_64") or "qemu-system-x86_64", "--version"],
                         capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].replace("QEMU emulator version ", "") if out else "unknown"


# What only vmlab's own tests need: a real sshd on 127.0.0.1 stands in for a guest's
# (installed with its service neither started nor enabled: see install_packages), real
# test runners whose output vmlab reads (tests/test_readout.py; Go also for the DragonFly
# journey's Go module, which the played guest builds with the host's toolchain), and
# shellcheck, through which the test gate's actionlint checks the CI workflow's run: scripts.
TEST_PACKAGES = {"sshd": "openssh-server", "go": "golang-go", "prove": "perl", "shellcheck": "shellcheck"}


def missing_packages(for_tests: bool = False) -> List[str]:
    """The Debian packages vmlab needs (and python3-venv, for a venv; and, `for_tests`, what
    vmlab's own tests need) that dpkg says are not installed."""
    wanted = {*PACKAGES.values(), "python3-venv", *(TEST_PACKAGES.values() if for_tests else ())}
    missing = []
    for package in sorted(wanted):
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                              check=False)
        if "ok installed" not in proc.stdout:
            missing.append(package)
    return missing


def install_packages(packages: List[str]) -> None:
    """apt-get install `packages` (as root), quietly; PrerequisiteMissing with the command otherwise.

    No service a package brings is started or enabled: vmlab needs their programs (an sshd
    for its tests), never a daemon listening on the host's network."""
    command = f"apt-get install {' '.join(packages)}"
    if os.geteuid() != 0:
        raise PrerequisiteMissing(f"missing Debian packages: {' '.join(packages)}; install them as root: {command}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")  # Debian asks it before starting a service; 101: do not
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\n# vmlab: no service starts while it installs packages\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(["apt-get", "update", "-q"], "updating the package lists", env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            f"installing {' '.join(packages)}", env=env)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if "openssh-server" in packages and which("systemctl"):
        subprocess.run(["systemctl", "disable", "--quiet", "ssh"], capture_output=True, check=False)


if __name__ == "__main__":  # python3 -m vmlab.host [--install] [--tests]: what scripts/setup runs, before any venv
    import sys

    wanted = missing_packages(for_tests="--tests" in sys.argv[1:])
    if not wanted:
        sys.exit(0)
    if "--install" not in sys.argv[1:]:
        print(f"missing Debian packages: {' '.join(wanted)} (install: apt-get install {' '.join(wanted)})")
        sys.exit(2)
    print(f"setup: installing Debian packages: {' '.join(wanted)}")
    try:
        install_packages(wanted)
    except (PrerequisiteMissing, CommandFailed) as e:
        print(f"setup: {e}", file=sys.stderr)
        sys.exit(2)
