"""One VM's folder, `vm/<name>/`: its QEMU, its disk and where that disk came from, and its records.

Every VM disk records its origin in `disk.json`:
  image      an overlay on an image built from packages (vmlab boots its kernel)
  installed  an overlay on a disk a recipe installed (booted by its own loader)
  golden     a copy of a golden image's clean.qcow2, or of the project's warm state on it
             (`warm`: its key, vmlab/images/warm.py); while `fresh`, it starts by restoring "clean",
             not by booting
  installer  a blank disk waiting for `vm.install`
The origin's folder holds the kernel files (if vmlab boots the kernel) and, for
installed and golden images, the SSH keys the guest trusts.

Beside the disk: `suspend.json` (the VM's running state is saved in its disk),
`provisioned.json`, `synced.json` (vmlab/sync/plan.py), `clone.json` (which VM it clones)
and `guest.json` (the guest's OS, asked once per QEMU process).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

from vmlab import locks, records
from vmlab.qemu.machine import Machine, MachineStatus, State
from vmlab.remote.keys import LabKeys

SUSPEND = "suspend"  # the snapshot vm.suspend saves and vm.resume loads


class OriginKind(StrEnum):
    IMAGE = "image"
    INSTALLED = "installed"
    GOLDEN = "golden"
    INSTALLER = "installer"


@dataclass(frozen=True)
class Origin:
    """Where a VM's disk came from: a cached image folder (or, for a blank disk, the installer ISO)."""

    kind: OriginKind
    path: Path
    fresh: bool = False  # a golden copy not started yet: its first start restores "clean"
    warm: str = ""  # the key of the project's warm state the copy was made from (vmlab/images/warm.py), if any

    @property
    def keys(self) -> Optional[LabKeys]:
        """The keys a disk made from an installed or golden image trusts (None: the lab's own)."""
        return LabKeys(self.path / "keys") if self.kind in (OriginKind.GOLDEN, OriginKind.INSTALLED) else None

    def as_json(self) -> Dict[str, Any]:
        return {"kind": self.kind.value, "path": str(self.path), "fresh": self.fresh,
                **({"warm": self.warm} if self.warm else {})}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Origin":
        return cls(OriginKind(data["kind"]), Path(data["path"]), bool(data.get("fresh", False)),
                   str(data.get("warm", "")))


class VMDir:
    """The folder of one VM and what vmlab records there; its QEMU is `machine`."""

    def __init__(self, name: str, folder: Path):
        self.name = name
        self.machine = Machine(name, folder)
        self.dir = self.machine.dir
        self.disk = self.machine.disk

    def lock(self) -> AbstractContextManager[None]:
        """Only one vmlab command changes a VM at a time; a second one is told who holds it."""
        return locks.held(self.dir / ".lock", f"VM {self.name}", wait=False)

    # --- the disk's origin ---

    def origin(self) -> Optional[Origin]:
        data = self._read("disk.json")
        try:
            return Origin.from_json(data) if data else None
        except (KeyError, ValueError):
            return None  # a record of another vmlab version: treated as no disk origin

    def set_origin(self, origin: Origin) -> None:
        self._write("disk.json", origin.as_json())

    def forget_disk(self) -> None:
        """Delete the disk and every record about its contents (the VM must be stopped)."""
        for name in ("disk.qcow2", "disk.json", "provisioned.json", "synced.json", f"{SUSPEND}.json", "guest.json"):
            (self.dir / name).unlink(missing_ok=True)

    # --- records ---

    def suspended_port(self) -> Optional[int]:
        """The SSH port of a suspended VM (resume keeps it), or None if it is not suspended."""
        return self._read(f"{SUSPEND}.json").get("ssh_port")

    def mark_suspended(self, ssh_port: int, at: float) -> None:
        self._write(f"{SUSPEND}.json", {"ssh_port": ssh_port, "at": at})

    def clear_suspended(self) -> None:
        (self.dir / f"{SUSPEND}.json").unlink(missing_ok=True)

    def provisioned_key(self) -> Optional[str]:
        return self._read("provisioned.json").get("key")

    def mark_provisioned(self, key: str, packages: List[str], at: float) -> None:
        self._write("provisioned.json", {"key": key, "packages": packages, "at": at})

    def restore_lead(self) -> float:
        """Seconds the guest took, at the last restore, to run its after-restore line once sent."""
        return float(self._read("restore-lead.json").get("seconds", 0.0))

    def set_restore_lead(self, seconds: float) -> None:
        self._write("restore-lead.json", {"seconds": round(seconds, 3)})

    def clone_of(self) -> Optional[str]:
        return self._read("clone.json").get("of")

    def mark_clone_of(self, of: str) -> None:
        self._write("clone.json", {"of": of})

    @property
    def sync_record(self) -> Path:
        return self.dir / "synced.json"

    @property
    def guest_facts(self) -> Path:
        return self.dir / "guest.json"

    def status(self) -> MachineStatus:
        """QEMU's status, or suspended, with the disk's origin."""
        status = self.machine.status()
        port = self.suspended_port()
        if status.state == State.STOPPED and port is not None:
            status.state, status.ssh_port = State.SUSPENDED, port
            status.detail = "its whole state is saved on disk; `vm.resume` brings it back"
        origin = self.origin()
        if origin:
            status.extra["origin"] = origin.kind.value
        return status

    def _read(self, name: str) -> Dict[str, Any]:
        return records.read(self.dir / name)

    def _write(self, name: str, data: Dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        records.write(self.dir / name, data)
