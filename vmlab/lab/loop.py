"""The edit-test loop: the project into the guest, suites run there, a report of every run.

A run's report (runs/results.py) is written on every way out of it: all suites done,
a suite failing, SSH dying, the sync failing, a restore after a failure failing,
Ctrl-C. It says "passed" only when every suite it was asked to run ran and passed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional

from vmlab import __version__, host, records
from vmlab.config import SuiteConfig
from vmlab.errors import Cancelled, GuestUnreachable, ProvisionError, RunIncomplete, SyncError, Terminated, VmlabError
from vmlab.images import golden
from vmlab.lab import images, snapshotting
from vmlab.lab.vm import GuestVM
from vmlab.remote.openssh import SharedConnection
from vmlab.runs import results
from vmlab.runs import suites as suite_runner
from vmlab.sync import rsync
from vmlab.sync.gate import SyncGate
from vmlab.sync.rules import Rules

log = logging.getLogger(__name__)

GUEST_PROVISION_SCRIPT = "/tmp/vmlab-provision.sh"


def ensure_provisioned(vm: GuestVM, conn: SharedConnection) -> None:
    """What the config asks to be in the guest (`packages:`, the profile's provision script) is
    there before anything runs in it: a VM whose disk was made without them gets them now,
    as root, once. (`vm.golden` makes an image that has them, so new VMs start with them.)"""
    key = images.provision_key(vm)
    if vm.vmdir.provisioned_key() == key:
        return
    profile = vm.profile
    script = profile.provision.script
    packages = [str(p) for p in vm.options.get("packages", [])]
    if script:
        log.info("VM %s: installing what the config asks for (%s) with %s; `invoke vm.golden --vm %s` makes an "
                 "image that has it", vm.name, " ".join(packages) or "no packages", Path(script).name, vm.name)
        conn.put(profile.dir / script, GUEST_PROVISION_SCRIPT)
        output = io.BytesIO()
        status = conn.stream(vm.root.shell(shlex.join(["sh", GUEST_PROVISION_SCRIPT, *packages])),
                          output=output, echo=sys.stdout.buffer, timeout=4 * 3600)
        if status != 0:
            lines = output.getvalue().decode(errors="replace").splitlines()[-30:]
            raise ProvisionError(f"VM {vm.name}: provisioning failed ({' '.join([Path(script).name, *packages])}, "
                                 f"exit {status})", hint=f"`invoke vm.provision --vm {vm.name}` tries again from the "
                                 "base image.", detail="\n".join(lines))
    vm.vmdir.mark_provisioned(key, packages, time.time())


@contextmanager
def closed_if_cut_off(conn: SharedConnection) -> Iterator[None]:
    """A control master this command opened is closed if the command is cut off (Ctrl-C,
    SIGTERM), so an interrupted command leaves nothing running; one it found open stays
    (ControlPersist keeps it for the next command, and others may be using it)."""
    had = conn.control_path.exists()
    try:
        yield
    except KeyboardInterrupt:
        if not had:
            conn.close(cut_off=True)
        raise


def sync(vm: GuestVM) -> rsync.SyncResult:
    """Make the guest's copy of the project (sync.guest_dir) equal to the project folder."""
    config = vm.project.config
    conn = vm.connection()
    log.info("syncing %s to %s:%s with rsync", config.project_dir, vm.name, config.sync.guest_dir)
    try:
        with closed_if_cut_off(conn):
            ensure_provisioned(vm, conn)  # rsync itself may be among what it installs (DragonFly)
            done = rsync.run(conn, config.project_dir, Rules.read(config.project_dir, config.sync))
    except GuestUnreachable as e:
        raise RunIncomplete(f"VM {vm.name}: SSH never answered: {e.message}", hint=e.hint, detail=e.detail) from None
    log.info("synced %s to %s:%s: %s", config.project_dir, vm.name, config.sync.guest_dir, done)
    return done


def run_suites(vm: GuestVM, suites: List[SuiteConfig], restore_on_failure: bool = False, sync_first: bool = False,
               echo: Optional[IO[bytes]] = None, cancel: Optional[threading.Event] = None,
               raw: bool = False) -> results.RunReport:
    """Run suites in order into a new results folder; returns the report (see runs/results.py).

    After a privileged suite fails or times out, `restore_on_failure` puts the VM back
    to its "clean" snapshot so the next one starts clean. `sync_first` syncs the project
    first, within the first suite's session and only if the guest's copy may differ
    (see vmlab/sync/): the edit-test loop's fast path. A run that cannot finish (VM
    down, SSH gone, sync failed) is RunIncomplete: exit code 2, not a failed suite.
    `echo` gets the suites' output live (default: stdout), a line per test or package where
    a suite's format says what its output is, or with `raw` as it comes (see runs/readout.py);
    setting `cancel` stops the run (Cancelled, its report says so: vm.watch after a newer save).
    """
    config = vm.project.config
    run_dir = results.new_run(vm.vmdir.dir / "results")
    run = results.RunReport(vm=dataclasses.asdict(vm.config), vmlab=__version__,
                            started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), results_dir=str(run_dir))
    done: List[results.SuiteResult] = []
    current: Optional[str] = None  # the suite under way when the run was cut off, if any
    why = "vmlab stopped unexpectedly"  # what cut the run off; empty once it finished
    opened: Optional[SharedConnection] = None  # the control master, if this run opened it
    try:
        conn = vm.connection()
        opened = None if conn.control_path.exists() else conn
        facts = guest_facts(conn, vm)
        run = dataclasses.replace(run, guest=facts["guest"], qemu=facts["qemu"])
        ensure_provisioned(vm, conn)
        gate = SyncGate(conn, config.project_dir, config.sync, vm.vmdir.sync_record) if sync_first else None
        for suite in suites:
            current = suite.name
            log.info("suite %s: %s%s", suite.name, suite.command, " (as root)" if suite.privileged else "")
            result = suite_runner.run(conn, suite, config.sync.guest_dir, run_dir, echo=echo, gate=gate,
                                      cancel=cancel, raw=raw)
            if gate:
                run = dataclasses.replace(run, sync=gate.summary())
            done.append(result)
            current, gate = None, None
            if not result.passed and suite.privileged and restore_on_failure:
                log.info("suite %s %s: restoring VM %s to 'clean'", suite.name, result.status, vm.name)
                snapshotting.restore(vm, golden.SNAPSHOT)
                conn = vm.connection()
        why = ""
    except GuestUnreachable as e:
        why = f"SSH stopped answering: {e}"
        raise RunIncomplete(f"VM {vm.name}: SSH stopped answering: {e.message}", hint=e.hint, detail=e.detail,
                            results=run_dir) from None
    except SyncError as e:
        why = f"the project could not be synced first: {e}"
        raise RunIncomplete(f"suite {current} did not run: the project could not be synced first", detail=str(e),
                            results=run_dir) from None
    except Cancelled:
        why = "cancelled: a newer change came"
        raise
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        if opened:  # cut off: leave nothing running (see closed_if_cut_off)
            opened.close(cut_off=True)
        raise
    except VmlabError as e:
        why = e.message
        raise
    finally:
        if why and current:  # the tests it finished before it was cut off still count
            done.append(suite_runner.cut_off(next(s for s in suites if s.name == current), run_dir, why))
        report = results.write(run_dir, run, done, planned=[s.name for s in suites],
                               cut_off=results.CutOff(current, why) if why else None)
    return report


def guest_facts(conn: SharedConnection, vm: GuestVM) -> Dict[str, Any]:
    """The guest's OS and kernel, and QEMU's version: asked once per QEMU process."""
    pid = vm.machine.pid()
    facts = records.read(vm.vmdir.guest_facts)
    if facts.get("pid") == pid and "guest" in facts and "qemu" in facts:
        return {"guest": facts["guest"], "qemu": facts["qemu"]}
    out = io.BytesIO()
    conn.stream("uname -s; uname -r", output=out, timeout=60)
    os_name, _, kernel = out.getvalue().decode(errors="replace").strip().partition("\n")
    facts = {"guest": {"os": os_name, "kernel": kernel}, "qemu": host.qemu_version()}
    records.write(vm.vmdir.guest_facts, dict(facts, pid=pid))
    return facts
