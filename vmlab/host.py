"""What vmlab needs from the host: tools, their packages, and facts about this boot.

A missing tool is a PrerequisiteMissing (exit code 2) that lists everything
missing at once and the command that installs it, rather than failing later
with a traceback from deep inside a subprocess call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional

from vmlab.errors import PrerequisiteMissing

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
        raise PrerequisiteMissing(
            f"{purpose} needs tools that are not installed:\n{lines}\n"
            f"Install them with: apt-get install {' '.join(packages)}  (or run: make setup)"
        )


def require_root(purpose: str) -> None:
    if os.geteuid() != 0:
        raise PrerequisiteMissing(f"{purpose} needs root (debootstrap, chroot); run it as root or with sudo")


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


if __name__ == "__main__":  # `python3 -m vmlab.host` lists the Debian packages scripts/setup installs
    print(" ".join(sorted(set(PACKAGES.values()))))
