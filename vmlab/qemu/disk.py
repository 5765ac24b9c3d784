"""qemu-img wrappers: overlays on read-only base images, and image facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from vmlab import host
from vmlab.atomic import made_as
from vmlab.errors import MachineError


def _qemu_img(*args: str, what: str) -> str:
    return host.run(["qemu-img", *args], what).stdout


def info(image: Path) -> Dict[str, Any]:
    """qemu-img's facts about one image (virtual-size, backing-filename, ...). -U: it may be in use."""
    facts: Dict[str, Any] = json.loads(_qemu_img("info", "-U", "--output=json", str(image),
                                                 what=f"reading the image {image}"))
    return facts


def create_overlay(overlay: Path, base: Path, size_bytes: int) -> None:
    """A qcow2 that reads from `base` (never writing it) and holds every change itself."""
    base_size = info(base)["virtual-size"]
    if size_bytes < base_size:
        raise MachineError(f"disk_size {size_bytes / 2**30:.1f}G is smaller than the image it starts from "
                           f"({base_size / 2**30:.1f}G, {base}); raise disk_size")
    with made_as(overlay) as tmp:
        _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.resolve()), str(tmp), str(size_bytes),
                  what=f"making the disk {overlay}")


def create_blank(path: Path, size_bytes: int) -> None:
    """An empty qcow2 disk to install a guest on."""
    with made_as(path) as tmp:
        _qemu_img("create", "-q", "-f", "qcow2", str(tmp), str(size_bytes), what=f"making the blank disk {path}")


def delete_snapshot(image: Path, tag: str) -> None:
    """Delete an internal snapshot from an image no QEMU has open."""
    _qemu_img("snapshot", "-d", tag, str(image), what=f"deleting snapshot {tag} of {image}")


def flatten(image: Path, out: Path) -> None:
    """`image` and everything below it as one standalone qcow2 (the image is read as qcow2, never probed)."""
    _qemu_img("convert", "-f", "qcow2", "-O", "qcow2", str(image), str(out), what=f"flattening {image}")


def create_child(folder: Path, name: str, base_name: str) -> None:
    """A qcow2 `name` in `folder` on `base_name` beside it, named relatively: the pair can move together."""
    host.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_name, name],
             f"making {folder / name}", cwd=folder)


def rebase_in_place(image: Path, base: Path) -> None:
    """Make `image` name `base` as its backing file, changing only its header (-u)."""
    _qemu_img("rebase", "-u", "-F", "qcow2", "-b", str(base), str(image), what=f"pointing {image} at {base}")
