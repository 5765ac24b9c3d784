"""Saved states of a VM: snapshot, restore (live, in seconds), suspend and resume.

The states live in the VM's own qcow2 (see qemu/snapshots.py). A restore returns only
once SSH answers and the guest's clock, randomness and name are set again. A
suspend that fails leaves the guest running as it was; a start from any other
state ends a suspension, so an old suspended state never comes back over newer work.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, List

from vmlab.errors import MachineError, PrerequisiteMissing, SnapshotError
from vmlab.images import golden, warm
from vmlab.lab import lifecycle
from vmlab.lab.vm import GuestVM
from vmlab.lab.vmdir import SUSPEND
from vmlab.qemu import snapshots
from vmlab.qemu.machine import MachineStatus, State
from vmlab.qemu.qmp import Monitor
from vmlab.qemu.snapshots import Snapshot

log = logging.getLogger(__name__)


def snapshot(vm: GuestVM, name: str = "clean") -> Snapshot:
    """Save the running VM's disk, RAM and devices as `name`.

    QEMU stops the guest while it saves, and the guest's clock stands still meanwhile: it comes
    back behind the host by the save's length (1-2 s under TCG), and a file synced then has a
    time in the guest's future (tar and make warn of it). So the guest is set right after, as
    after a restore."""
    snapshots.check_name(name)  # a bad name is said first, not after the user started the VM for it
    with vm.lock():
        vm.require_running()
        with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
            snap = snapshots.save(mon, vm.vmdir.disk, name)
        lifecycle.after_restore(vm, vm.config.boot_timeout, after="the snapshot's save")
    log.info("VM %s: saved snapshot %r (%d MiB of RAM state)", vm.name, snap.name, snap.vm_state_bytes >> 20)
    return snap


def listed(vm: GuestVM) -> List[Snapshot]:
    return snapshots.listed(vm.vmdir.disk) if vm.vmdir.disk.exists() else []


def delete(vm: GuestVM, name: str) -> None:
    if not vm.vmdir.disk.exists():
        raise SnapshotError(f"VM {vm.name} has no disk, so no snapshot {name!r}")
    with vm.lock():
        if vm.machine.pid() is None:
            snapshots.delete(None, vm.vmdir.disk, name)
        else:
            with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
                snapshots.delete(mon, vm.vmdir.disk, name)


def restore(vm: GuestVM, name: str = "clean") -> Dict[str, float]:
    """Put the VM back to `name`: live if QEMU runs, else by starting QEMU from it.

    Returns once the guest has been set right, through its agent or over a new SSH connection
    (every earlier one died with the restore); the timings it took.
    """
    with vm.lock():
        if not vm.vmdir.disk.exists():
            raise PrerequisiteMissing(f"VM {vm.name} has no disk yet, so no snapshot to restore",
                                      hint="start it: invoke vm.start, then save one: invoke vm.snapshot")
        snapshots.find(vm.vmdir.disk, name)  # an unknown name fails before anything changes
        vm.close_connection()  # the restore kills the guest's end of it
        log.info("VM %s: restoring %r", vm.name, name)
        started = time.monotonic()
        if vm.machine.pid() is not None:
            with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
                _load_and_run(vm, mon, name)
            timings = {"load_seconds": round(time.monotonic() - started, 2)}
            lifecycle.after_restore(vm, vm.config.boot_timeout)
            how = "live"
        else:
            if vm.machine.status(query_qemu=False).state == State.CRASHED:
                log.warning("VM %s: QEMU had died; starting it from snapshot %r", vm.name, name)
            lifecycle.start_from_snapshot(vm, name)
            timings, how = {}, "started from the snapshot"
        _sync_record_of(vm, name)
        lifecycle.ready_for_next_command(vm)
        timings["total_seconds"] = round(time.monotonic() - started, 2)
    log.info("VM %s: restored to %r (%s) in %.1fs", vm.name, name, how, timings["total_seconds"])
    return timings


def _load_and_run(vm: GuestVM, mon: Monitor, name: str) -> None:
    """Load `name` into the running QEMU and let the guest run: a restore is how a guest that
    QEMU stopped (a disk write that found the host filesystem full, a panic) comes back, once
    the cause is gone, as `vmlab doctor` advises."""
    before = mon.status()
    snapshots.load(mon, vm.vmdir.disk, name)  # a stopped guest stays stopped through the load
    if mon.status() != "running":
        why = vm.machine.why_stopped(before)
        if why:
            log.warning("VM %s: QEMU had stopped the guest (%s: %s); it runs again from %r", vm.name, before, why, name)
        mon.command("cont")


def _sync_record_of(vm: GuestVM, name: str) -> None:
    """Back to the warm state's "clean", the guest's copy of the project is the one synced before
    its warm-up: its sync record says so, and the next loop turn sends only what changed since.
    (Were "clean" taken again since, the guest's stamp would not match the record: a full rsync.)"""
    origin = vm.vmdir.origin()
    state = warm.find(vm.project.config.state_dir, origin.warm) if origin and origin.warm else None
    if name == golden.SNAPSHOT and state:
        state.sync_record_into(vm.vmdir.sync_record)


def suspend(vm: GuestVM) -> Snapshot:
    """Save the whole running state to the VM's disk and stop QEMU: no RAM is held."""
    with vm.lock():
        vm.require_running()
        vm.close_connection()
        port = vm.ssh_port
        with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
            mon.command("stop")  # nothing changes between the snapshot and the quit
            try:
                snap = snapshots.save(mon, vm.vmdir.disk, SUSPEND)
            except BaseException:
                _resume_quietly(mon)  # a failed suspend leaves the guest running, as it was
                raise
        vm.vmdir.mark_suspended(port, time.time())  # before QEMU goes: the saved state is what counts now
        vm.machine.stop(soft_timeout=0)
    return snap


def resume(vm: GuestVM) -> MachineStatus:
    """Bring a suspended VM back with the same SSH port and its processes still running."""
    with vm.lock():
        port = vm.vmdir.suspended_port()
        if port is None:
            raise PrerequisiteMissing(f"VM {vm.name} is not suspended ({vm.vmdir.status().state})")
        lifecycle.start_from_snapshot(vm, SUSPEND, ssh_port=port)
        lifecycle.forget_suspended(vm)  # its RAM state is no longer needed
        lifecycle.ready_for_next_command(vm)
    return vm.vmdir.status()


def _resume_quietly(mon: Monitor) -> None:
    try:
        mon.command("cont")
    except MachineError as e:
        log.warning("could not let the guest run again after the failed suspend: %s", e)
