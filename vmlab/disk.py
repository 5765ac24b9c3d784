"""qemu-img wrappers: overlays on read-only base images, and image facts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict

from vmlab import host
from vmlab.errors import MachineError


def _qemu_img(*args: str) -> str:
    argv = [host.which("qemu-img") or "qemu-img", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MachineError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def info(image: Path) -> Dict[str, Any]:
    """qemu-img's facts about one image (virtual-size, backing-filename, ...). -U: it may be in use."""
    return json.loads(_qemu_img("info", "-U", "--output=json", str(image)))


def create_overlay(overlay: Path, base: Path, size_bytes: int) -> None:
    """A qcow2 that reads from `base` (never writing it) and holds every change itself."""
    base_size = info(base)["virtual-size"]
    if size_bytes < base_size:
        raise MachineError(f"disk_size {size_bytes / 2**30:.1f}G is smaller than the image it starts from "
                           f"({base_size / 2**30:.1f}G, {base}); raise disk_size")
    tmp = overlay.with_suffix(".partial")
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.resolve()), str(tmp), str(size_bytes))
    tmp.rename(overlay)


def create_blank(path: Path, size_bytes: int) -> None:
    """An empty qcow2 disk to install a guest on."""
    tmp = path.with_suffix(".partial")
    _qemu_img("create", "-q", "-f", "qcow2", str(tmp), str(size_bytes))
    tmp.rename(path)


def delete_snapshot(image: Path, tag: str) -> None:
    """Delete an internal snapshot from an image no QEMU has open."""
    _qemu_img("snapshot", "-d", tag, str(image))
