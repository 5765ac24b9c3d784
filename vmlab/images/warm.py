"""Warm states: one project's own clean state, its build caches filled, on top of a shared golden image.

A golden image is shared by every project with the same inputs (golden.py) and never
written after it is made; a warm-up (`warm:` in vmlab.yaml) runs the project's own
build in the guest, so its result belongs to that project alone. It lives in the
project's state folder, never in the cache:

    vm/.warm/<key>/disk.qcow2    a VM disk made from the golden image after the project was
                                 synced and `warm:` ran in it, with "clean" taken again there;
                                 mode 0444, never written again (a VM gets a copy)
                   warm.json     what made it: the golden key, the warm-up, when, how long, its output
                   synced.json   the sync record of the guest's copy it holds: a first loop turn after
                                 a restore sends only what changed since (vmlab/sync/)

The key hashes the golden image's key and what the warm-up runs (command, user, folder,
environment), not the project's files: a changed project only makes the cache less
full, while a changed `warm:` makes `vmlab golden` warm up again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from vmlab import records
from vmlab.atomic import made_as
from vmlab.config import SuiteConfig
from vmlab.images.cache import key_of

FOLDER = ".warm"  # under the state folder: a VM's name cannot start with a dot
RECORD = "warm.json"
SYNC_RECORD = "synced.json"


def key(golden_key: str, warm: SuiteConfig, guest_dir: str, ssh_user: str) -> str:
    """The warm state's key: the golden image it starts from and what its warm-up runs, where and as whom.
    Its timeout is left out: a longer limit makes the same state."""
    what = dataclasses.asdict(warm)
    what.pop("timeout")
    return key_of({"golden": golden_key, "warm": what, "guest_dir": guest_dir, "ssh_user": ssh_user, "format": 1})


@dataclass(frozen=True)
class WarmState:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def key(self) -> str:
        return self.dir.name

    @property
    def record(self) -> Dict[str, Any]:
        return records.read(self.dir / RECORD)

    @property
    def made_at(self) -> float:
        return float(self.record.get("made_at", 0))

    def new_disk(self, path: Path) -> None:
        """A VM disk that starts as this warm state (a copy: the state itself is never written)."""
        with made_as(path) as tmp:
            shutil.copyfile(self.disk, tmp)
            os.chmod(tmp, 0o644)

    def sync_record_into(self, record: Path) -> None:
        """The VM's sync record becomes the one of the guest's copy this state holds."""
        source = self.dir / SYNC_RECORD
        if source.is_file():
            shutil.copyfile(source, record)


def folder(state_dir: Path) -> Path:
    return state_dir / FOLDER


def find(state_dir: Path, warm_key: str) -> Optional[WarmState]:
    state = WarmState(folder(state_dir) / warm_key)
    return state if (state.dir / RECORD).is_file() and state.disk.is_file() else None


def states(state_dir: Path) -> List[WarmState]:
    """Every complete warm state of the project, newest first."""
    found = [WarmState(p.parent) for p in folder(state_dir).glob(f"*/{RECORD}")]
    return sorted(found, key=lambda s: s.made_at, reverse=True)


def publish(state_dir: Path, warm_key: str, disk: Path, sync_record: Path, facts: Dict[str, Any]) -> WarmState:
    """Move a stopped VM's warmed disk into place as warm state `warm_key`, whole or not at all;
    the warm states made before for the same VM are deleted (their disks were copied, never shared)."""
    parent = folder(state_dir)
    parent.mkdir(parents=True, exist_ok=True)
    partial = parent / f".{warm_key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        shutil.move(str(disk), partial / "disk.qcow2")
        os.chmod(partial / "disk.qcow2", 0o444)
        if sync_record.is_file():
            shutil.copyfile(sync_record, partial / SYNC_RECORD)
        record = dict(facts, key=warm_key, made_at=time.time())
        records.write(partial / RECORD, record, indent=2)
        final = parent / warm_key
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for old in states(state_dir):
        if old.key != warm_key and old.record.get("vm") == facts.get("vm"):
            shutil.rmtree(old.dir, ignore_errors=True)
    return WarmState(final)
