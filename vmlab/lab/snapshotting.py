"""Saved states of a VM: snapshot, restore (live, in seconds), suspend and resume.

The states live in the VM's own qcow2 (see snapshots.py). A restore returns only
once SSH answers and the guest's clock, randomness and name are set again. A
suspend that fails leaves the guest running as it was; a start from any other
state ends a suspension, so an old suspended state never comes back over newer work.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Dict, List

from vmlab import golden, snapshots, warm
from vmlab.config import VMConfig
from vmlab.errors import MachineError, PrerequisiteMissing, SnapshotError
from vmlab.lab import lifecycle
from vmlab.lab.vmdir import SUSPEND, VMDir
from vmlab.machine import MachineStatus, State
from vmlab.qmp import Monitor
from vmlab.snapshots import Snapshot

if TYPE_CHECKING:
    from vmlab.lab import Lab

log = logging.getLogger(__name__)


def snapshot(vm: VMConfig, vmdir: VMDir, name: str = "clean") -> Snapshot:
    """Save the running VM's disk, RAM and devices as `name`."""
    snapshots.check_name(name)  # a bad name is said first, not after the user started the VM for it
    with vmdir.lock():
        lifecycle.require_running(vm, vmdir)
        with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
            snap = snapshots.save(mon, vmdir.disk, name)
    log.info("VM %s: saved snapshot %r (%d MiB of RAM state)", vm.name, snap.name, snap.vm_state_bytes >> 20)
    return snap


def listed(vmdir: VMDir) -> List[Snapshot]:
    return snapshots.listed(vmdir.disk) if vmdir.disk.exists() else []


def delete(vm: VMConfig, vmdir: VMDir, name: str) -> None:
    if not vmdir.disk.exists():
        raise SnapshotError(f"VM {vm.name} has no disk, so no snapshot {name!r}")
    with vmdir.lock():
        if vmdir.machine.pid() is None:
            snapshots.delete(None, vmdir.disk, name)
        else:
            with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
                snapshots.delete(mon, vmdir.disk, name)


def restore(lab: "Lab", vm: VMConfig, vmdir: VMDir, name: str = "clean") -> Dict[str, float]:
    """Put the VM back to `name`: live if QEMU runs, else by starting QEMU from it.

    Returns once a command has run over SSH (a new connection: every earlier one died
    with the restore) and the guest has been set right; the timings it took.
    """
    with vmdir.lock():
        if not vmdir.disk.exists():
            raise PrerequisiteMissing(f"VM {vm.name} has no disk yet, so no snapshot to restore",
                                      hint="start it: invoke vm.start, then save one: invoke vm.snapshot")
        snapshots.find(vmdir.disk, name)  # an unknown name fails before anything changes
        lifecycle.close_connection(lab, vm, vmdir)  # the restore kills the guest's end of it
        log.info("VM %s: restoring %r", vm.name, name)
        started = time.monotonic()
        if vmdir.machine.pid() is not None:
            with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
                snapshots.load(mon, vmdir.disk, name)
            timings = {"load_seconds": round(time.monotonic() - started, 2)}
            lifecycle.after_restore(lab, vm, vmdir, vm.boot_timeout)
            how = "live"
        else:
            if vmdir.machine.status(query_qemu=False).state == State.CRASHED:
                log.warning("VM %s: QEMU had died; starting it from snapshot %r", vm.name, name)
            lifecycle.start_from_snapshot(lab, vm, vmdir, name)
            timings, how = {}, "started from the snapshot"
        _sync_record_of(lab, vmdir, name)
        timings["total_seconds"] = round(time.monotonic() - started, 2)
    log.info("VM %s: restored to %r (%s) in %.1fs", vm.name, name, how, timings["total_seconds"])
    return timings


def _sync_record_of(lab: "Lab", vmdir: VMDir, name: str) -> None:
    """Back to the warm state's "clean", the guest's copy of the project is the one synced before
    its warm-up: its sync record says so, and the next loop turn sends only what changed since.
    (Were "clean" taken again since, the guest's stamp would not match the record: a full rsync.)"""
    origin = vmdir.origin()
    state = warm.find(lab.config.state_dir, origin.warm) if origin and origin.warm else None
    if name == golden.SNAPSHOT and state:
        state.sync_record_into(vmdir.sync_record)


def suspend(lab: "Lab", vm: VMConfig, vmdir: VMDir) -> Snapshot:
    """Save the whole running state to the VM's disk and stop QEMU: no RAM is held."""
    with vmdir.lock():
        lifecycle.require_running(vm, vmdir)
        lifecycle.close_connection(lab, vm, vmdir)
        port = vmdir.machine.state()["ssh_port"]
        with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
            mon.command("stop")  # nothing changes between the snapshot and the quit
            try:
                snap = snapshots.save(mon, vmdir.disk, SUSPEND)
            except BaseException:
                _resume_quietly(mon)  # a failed suspend leaves the guest running, as it was
                raise
        vmdir.mark_suspended(port, time.time())  # before QEMU goes: the saved state is what counts now
        vmdir.machine.stop(soft_timeout=0)
    return snap


def resume(lab: "Lab", vm: VMConfig, vmdir: VMDir) -> MachineStatus:
    """Bring a suspended VM back with the same SSH port and its processes still running."""
    with vmdir.lock():
        port = vmdir.suspended_port()
        if port is None:
            raise PrerequisiteMissing(f"VM {vm.name} is not suspended ({vmdir.status().state})")
        lifecycle.start_from_snapshot(lab, vm, vmdir, SUSPEND, ssh_port=port)
        lifecycle.forget_suspended(vm, vmdir)  # its RAM state is no longer needed
    return vmdir.status()


def _resume_quietly(mon: Monitor) -> None:
    try:
        mon.command("cont")
    except MachineError as e:
        log.warning("could not let the guest run again after the failed suspend: %s", e)
