"""Named snapshots of a running VM (disk, RAM and devices) inside its qcow2, over QMP.

QEMU's `snapshot-save` deletes an existing snapshot of the same tag *before* it
writes the new one, so re-saving "clean" on a full disk would lose the old one.
vmlab therefore stores generations: the name "clean" is the newest of the tags
"clean@1", "clean@2", ...; a new generation is written first and the older ones
are deleted only once it exists. The qcow2 stays the only record of snapshots.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from vmlab.errors import ConfigError, MachineError, NoSuchSnapshot, SnapshotError
from vmlab.qemu import disk
from vmlab.qemu.qmp import Monitor

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")  # with fullmatch: "$" lets a newline end it
NODE = "disk0"  # the VM disk's node name (see machine.py); it also holds the RAM state
_job_ids = itertools.count(1)


@dataclass(frozen=True)
class Snapshot:
    name: str
    tag: str  # what QEMU calls it: name@generation
    generation: int
    date: float  # host time when taken (epoch seconds)
    vm_state_bytes: int
    guest_clock_seconds: float  # the guest's virtual clock (time it had run) when taken

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "date": time.strftime("%Y-%m-%d %H:%M:%S",
                time.localtime(self.date)), "size_bytes": self.vm_state_bytes,
                "guest_clock_seconds": round(self.guest_clock_seconds, 1)}


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(f"snapshot name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
    return name


def listed(image: Path) -> List[Snapshot]:
    """The newest generation of every named snapshot in `image`, oldest first."""
    newest: Dict[str, Snapshot] = {}
    for s in _all(image):
        if s.name not in newest or s.generation > newest[s.name].generation:
            newest[s.name] = s
    return sorted(newest.values(), key=lambda s: s.date)


def find(image: Path, name: str) -> Snapshot:
    for s in listed(image):
        if s.name == name:
            return s
    names = ", ".join(s.name for s in listed(image))
    if names:
        raise NoSuchSnapshot(f"no snapshot named {name!r} in {image} (snapshots: {names}; see `invoke vm.snapshots`)")
    raise NoSuchSnapshot(f"no snapshot named {name!r} in {image}: it has none. `invoke vm.snapshot --name {name}` "
                         "saves the running VM as one; a VM started from its golden image (`invoke vm.golden`) "
                         "has 'clean'")


def _all(image: Path) -> List[Snapshot]:
    found = []
    for raw in disk.info(image).get("snapshots", []):
        name, _, gen = raw["name"].rpartition("@")
        if name and gen.isdigit():
            found.append(Snapshot(name, raw["name"], int(gen), raw["date-sec"] + raw["date-nsec"] / 1e9,
                                  raw["vm-state-size"], raw["vm-clock-sec"] + raw["vm-clock-nsec"] / 1e9))
    return found


def save(mon: Monitor, image: Path, name: str, timeout: float = 300) -> Snapshot:
    """Save the VM's whole state as `name`; the previous `name` survives any failure."""
    check_name(name)
    older = [s for s in _all(image) if s.name == name]
    tag = f"{name}@{max((s.generation for s in older), default=0) + 1}"
    with _running_afterwards(mon):
        try:
            mon.run_job("snapshot-save", f"vmlab-save-{os.getpid()}-{next(_job_ids)}", timeout,
                        tag=tag, vmstate=NODE, devices=[NODE])
        except MachineError as e:
            _delete_quietly(mon, tag)
            kept = f"; the previous {name!r} is kept" if older else ""
            raise SnapshotError(f"could not save snapshot {name!r} of {image}: {e}{kept}") from None
    for old in older:
        _delete(mon, old.tag)
    return find(image, name)


def load(mon: Monitor, image: Path, name: str, timeout: float = 300) -> Snapshot:
    """Put the VM back to `name` (disk, RAM, devices). A paused VM stays paused."""
    snap = find(image, name)
    with _running_afterwards(mon):
        try:
            mon.run_job("snapshot-load", f"vmlab-load-{os.getpid()}-{next(_job_ids)}", timeout,
                        tag=snap.tag, vmstate=NODE, devices=[NODE])
        except MachineError as e:
            raise SnapshotError(f"could not restore snapshot {name!r} of {image}: {e}") from None
    return snap


def delete(mon: Optional[Monitor], image: Path, name: str) -> None:
    """Delete every generation of `name`, through QEMU if it runs, else with qemu-img."""
    tags = [s.tag for s in _all(image) if s.name == name]
    if not tags:
        find(image, name)  # raises with the list of names
    for tag in tags:
        if mon is not None:
            _delete(mon, tag)
        else:
            disk.delete_snapshot(image, tag)


def _delete(mon: Monitor, tag: str) -> None:
    mon.run_job("snapshot-delete", f"vmlab-delete-{os.getpid()}-{next(_job_ids)}", 120, tag=tag, devices=[NODE])


def _delete_quietly(mon: Monitor, tag: str) -> None:
    try:
        _delete(mon, tag)
    except MachineError:
        pass  # nothing was written under that tag


class _running_afterwards:
    """A VM that was running before a snapshot job is running after it, even if the job failed."""

    def __init__(self, mon: Monitor):
        self.mon = mon
        self.was_running = False

    def __enter__(self) -> None:
        self.was_running = self.mon.status() == "running"

    def __exit__(self, *exc: object) -> None:
        if self.was_running and self.mon.status() != "running":
            self.mon.command("cont")
