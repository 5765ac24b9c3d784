"""Warming up: the project's clean state with its build caches filled (see vmlab/images/warm.py for where it lives).

The clean snapshot of a golden image holds empty build caches, so every restore threw
away what the last turn compiled and the first turn after it built everything again
under emulation (issue 25: ten times a steady turn). `warm:` is a command run in the
synced project, as the suites run (same user, same sync), in a VM made from the golden
image; "clean" is then taken again in that VM's disk, which becomes the project's warm
state. VMs of the project start from it, and a restore goes back to it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from vmlab.config import SuiteConfig
from vmlab.errors import ProvisionError
from vmlab.images import golden, warm
from vmlab.lab import images, lifecycle, loop
from vmlab.lab.vm import GuestVM
from vmlab.qemu import snapshots
from vmlab.qemu.qmp import Monitor
from vmlab.runs.results import RunReport

log = logging.getLogger(__name__)
OUTPUT_LINES = 25  # of a failed warm-up's output, in the error


def make(vm: GuestVM, gold: golden.Golden, again: bool = False) -> Optional[warm.WarmState]:
    """The warm state of `vm` on `gold`: reused if one was made for the same `warm:`
    (`again`: made anew, for a project whose dependencies changed), else made now.

    A VM made from the golden image syncs the project and runs the warm-up as a suite; a
    failed warm-up is ProvisionError naming its output, and nothing is kept. The VM is
    left stopped with no disk: its next start copies the warm state.
    """
    spec = images.warm_suite_of(vm)
    if spec is None:
        return None
    wanted = warm.key(gold.key, spec, vm.project.config.sync.guest_dir, vm.config.ssh_user)
    existing = warm.find(vm.project.config.state_dir, wanted)
    if existing and not again:
        log.info("VM %s: the warm state made %s for this `warm:` is kept (%s)", vm.name, age_text(existing.made_at),
                 existing.dir)
        return existing
    log.info("VM %s: warming up: syncing the project and running `%s`%s, then taking %r again", vm.name,
             spec.command, " as root" if spec.privileged else "", golden.SNAPSHOT)
    lifecycle.discard_disk(vm)
    started = time.monotonic()
    try:
        with vm.lock():
            images.ensure_disk(vm, from_warm=False)
        lifecycle.start(vm)
        report = loop.run_suites(vm, [spec], sync_first=True)
        if not report.passed:
            raise failure(vm, spec, report)
        seconds = round(time.monotonic() - started, 1)
        with vm.lock():
            vm.close_connection()
            with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
                mon.command("stop")  # nothing runs between the warm-up's end and the snapshot
                snapshots.save(mon, vm.vmdir.disk, golden.SNAPSHOT)
            vm.machine.stop(soft_timeout=0)
            made = warm.publish(vm.project.config.state_dir, wanted, vm.vmdir.disk, vm.vmdir.sync_record, {
                "vm": vm.name, "golden": gold.key, "command": spec.command, "privileged": spec.privileged,
                "workdir": spec.workdir, "seconds": seconds, "results": report.results_dir})
            vm.vmdir.forget_disk()
    except BaseException:  # a failure or Ctrl-C: no VM left running, no half-warm disk reused
        lifecycle.discard_disk(vm)
        raise
    log.info("VM %s: warm state %s made in %.0fs (%s); a start or restore now goes back to it", vm.name, wanted,
             seconds, made.dir)
    return made


def failure(vm: GuestVM, spec: SuiteConfig, report: RunReport) -> ProvisionError:
    """What a user needs when the warm-up failed: its command, how it ended, its output's end, where the rest is."""
    log_file = Path(report.results_dir) / f"{spec.name}.log"
    try:
        lines = log_file.read_text(errors="replace").splitlines()[-OUTPUT_LINES:]
    except OSError:
        lines = []
    how = f"{report.suites[0].status}, exit {report.suites[0].exit_code}" if report.suites else "did not finish"
    return ProvisionError(f"VM {vm.name}: the warm-up `{spec.command}` {how}; the golden image is kept, but no warm "
                          f"state was made. Its output: {log_file}", detail="\n".join(lines))


def age_text(made_at: float) -> str:
    seconds = max(0.0, time.time() - made_at)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"
