"""Tasks for snapshots: save, list, delete, restore.
"""

from __future__ import annotations

import json
from typing import Optional

from invoke.context import Context
from invoke.tasks import task

from vmlab.tasks.common import CONFIG_HELP, VM_HELP, cli, print_table, vm_of

SNAP_HELP = "snapshot name (default: clean)"


@task(help={"name": SNAP_HELP, "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def snapshot(c: Context, name: str = "clean", vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Save the running VM's whole state as a snapshot.

    Disk, RAM and devices; a previous snapshot of that name survives any failure.
    """
    from vmlab.lab import snapshotting

    with vm_of(config, vm) as v:
        snap = snapshotting.snapshot(v, name)
    print(f"saved {snap.name}: {snap.vm_state_bytes >> 20} MiB of RAM state")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print JSON"})
@cli
def snapshots(c: Context, vm: Optional[str] = None, config: Optional[str] = None, json_: bool = False) -> None:
    """List the VM's snapshots: name, date, size, clock."""
    from vmlab.lab import snapshotting

    found = [s.as_dict() for s in snapshotting.listed(vm_of(config, vm))]
    if json_:
        print(json.dumps({"snapshots": found}, indent=2))
        return
    rows = [("NAME", "DATE", "SIZE", "GUEST CLOCK")] + [
        (s["name"], s["date"], f"{s['size_bytes'] >> 20} MiB", f"{s['guest_clock_seconds']}s") for s in found]
    print_table(rows)


@task(name="snapshot-delete", help={"name": "snapshot to delete (required)", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def snapshot_delete(c: Context, name: str, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Delete a named snapshot."""
    from vmlab.lab import snapshotting

    snapshotting.delete(vm_of(config, vm), name)
    print(f"deleted {name}")


@task(help={"name": SNAP_HELP, "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def restore(c: Context, name: str = "clean", vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Put the VM back to a snapshot, in seconds.

    Live if it runs, else QEMU starts from the snapshot; the guest's clock, randomness and
    name are right when it returns (SSH may still be opening: the next command waits for it).
    """
    from vmlab.lab import snapshotting

    with vm_of(config, vm, starts=True) as v:
        t = snapshotting.restore(v, name)
    loaded = f" (state loaded in {t['load_seconds']}s)" if "load_seconds" in t else " (QEMU started from it)"
    print(f"restored {name} in {t['total_seconds']}s{loaded}")
