"""Making images: install from an ISO, provision, verify with the mount suite, freeze as golden.

Each phase is a checkpoint kept in the cache by the key of its inputs: a failed
provision never redoes the install, a second `vm.golden` reuses the first. The
VMs these phases boot are stopped again whatever happens.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict

from vmlab import host
from vmlab.config import SuiteConfig
from vmlab.errors import ConsoleError, MachineError, PrerequisiteMissing, ProvisionError
from vmlab.images import golden
from vmlab.install import recipe, seed
from vmlab.install.console import Console
from vmlab.lab import images, lifecycle, loop, warming
from vmlab.lab.vm import GuestVM
from vmlab.lab.vmdir import Origin, OriginKind
from vmlab.progress import Heartbeat
from vmlab.qemu import accel, agent, disk, snapshots
from vmlab.qemu.machine import Machine, MachineSpec, console_now
from vmlab.qemu.qmp import Monitor
from vmlab.remote import keys
from vmlab.remote.ssh import GuestSSH
from vmlab.runs.results import RunReport

log = logging.getLogger(__name__)

MOUNT_SUITE = Path(__file__).resolve().parents[1] / "scripts" / "mount-suite.sh"  # in the package: installed too
GUEST_MOUNT_SUITE = "/tmp/vmlab-mount-suite.sh"
TIMED = "console.timed.jsonl"  # the install's console, what it read and typed, with times (install/console.py)


def install(vm: GuestVM) -> Path:
    """Install the guest from its ISO onto a blank disk by its recipe; a cached checkpoint.

    The installed disk (read-only once made) and the keys it trusts are kept in the
    cache by key, so a failed provision, a new VM or another lab never installs again.
    """
    profile = vm.profile
    host.require(host.VM_TOOLS, "installing a guest")
    medium = images.medium(vm)
    key, inputs = images.installed_key(vm)
    if vm.project.cache.has(images.INSTALLED, key):
        log.info("VM %s: the %s install %s is cached", vm.name, profile.name, key)
        return vm.project.cache.path(images.INSTALLED, key)
    rec = images.install_recipe(vm)
    return vm.project.cache.get_or_build(images.INSTALLED, key, inputs,
                                         lambda out: _run_install(vm, rec, medium, out),
                                         f"the {profile.name} install {key}")


def _run_install(vm: GuestVM, rec: recipe.Recipe, medium: Path, out: Path) -> Dict[str, Any]:
    """Install onto a new blank disk of the VM, then move it into `out` (the checkpoint)."""
    with vm.stopped(soft_timeout=0):
        vm.vmdir.forget_disk()  # a failed install's half-written disk is never reused
        vm.vmdir.dir.mkdir(parents=True, exist_ok=True)
        disk.create_blank(vm.vmdir.disk, vm.config.disk_bytes)
        vm.vmdir.set_origin(Origin(OriginKind.INSTALLER, medium))
    shutil.copytree(vm.project.keys().dir, out / "keys", ignore=shutil.ignore_patterns(".lock"))
    installed_keys = keys.LabKeys(out / "keys")
    runner = Machine(f"{vm.name}-install", vm.vmdir.dir / "install")
    runner.dir.mkdir(parents=True, exist_ok=True)
    scripts = {name: (rec.path.parent / name).read_bytes() for name in rec.seed}
    # One vCPU: an installer gains nothing from more, and a multi-vCPU guest under TCG can
    # lose a timer wakeup (an RCU stall that hung the rehearsal's live CD once in CI).
    spec = MachineSpec(name=runner.name, accel=vm.accelerator(out), memory_mib=vm.config.memory_mib, cpus=1,
                       disk=vm.vmdir.disk, install_iso=medium,
                       seed_iso=seed.for_vm(runner.dir / "seed.iso", installed_keys, vm.name, scripts))
    started = time.monotonic()
    try:
        with runner.launched(spec):
            log.info("VM %s: installing from %s over the serial console (%s; transcript %s)", vm.name,
                     medium.name, rec.description, runner.console_log)
            with Heartbeat(log, lambda t: f"  ... installing: {t:.0f} s so far; console: "
                                          f"{console_now(runner.console_log)}"):
                with Console(runner.console_socket, fails=rec.fails, timed=runner.dir / TIMED) as con:
                    rec.run(con, {"vm": vm.name})
                if not runner.wait_stopped(120):
                    raise ConsoleError(f"VM {vm.name}: the install powered off, but QEMU still runs after 120s")
    except ConsoleError as e:
        transcript = f"Full transcript: {runner.console_log} (timed: {runner.dir / TIMED})"
        raise ConsoleError(f"VM {vm.name}: the install failed: {e.message}", hint=e.hint,
                           detail="\n".join(part for part in (e.detail, transcript) if part)) from None
    finally:
        runner.stop(soft_timeout=0)
    shutil.move(str(vm.vmdir.disk), out / "disk.qcow2")  # a rename when the cache shares the file system
    vm.vmdir.forget_disk()  # the VM's next disk is an overlay on it
    os.chmod(out / "disk.qcow2", 0o444)
    log.info("VM %s: installed in %.0fs", vm.name, time.monotonic() - started)
    return {"medium": str(medium), "install_seconds": round(time.monotonic() - started, 1),
            "transcript": str(runner.console_log)}


def provision(vm: GuestVM) -> str:
    """Boot the VM from its base and install what the config asks for (see loop.ensure_provisioned).

    It always starts again from the base (the installed or built disk), so a failed
    provision costs a provision, never an install. The VM is left running.
    """
    key = images.provision_key(vm)
    if vm.vmdir.provisioned_key() == key and vm.vmdir.disk.exists():
        log.info("VM %s is provisioned already (%s)", vm.name, key)
        return key
    with vm.stopped(soft_timeout=0):
        vm.vmdir.forget_disk()
        origin = images.base(vm)  # not a golden copy: provisioning makes goldens
        disk.create_overlay(vm.vmdir.disk, origin.path / "disk.qcow2", vm.config.disk_bytes)
        vm.vmdir.set_origin(origin)
    lifecycle.start(vm)
    try:
        loop.ensure_provisioned(vm, vm.connection())
    except KeyboardInterrupt:  # cut off (a failure keeps the guest up for its diagnostics): stop what we started
        vm.power_off(soft_timeout=0)
        raise
    return key


def verify(vm: GuestVM) -> RunReport:
    """Run vmlab's privileged mount suite in the running VM, as any suite runs; a golden image must pass it."""
    vm.connection().put(MOUNT_SUITE, GUEST_MOUNT_SUITE)
    junit = "/tmp/vmlab-mount-suite.xml"
    suite = SuiteConfig(name="mounts", command=f"sh {GUEST_MOUNT_SUITE}", workdir="/tmp", privileged=True,
                        env=(("JUNIT", junit),), timeout=900, junit=junit)
    report = loop.run_suites(vm, [suite])
    if not report.passed:
        raise ProvisionError(f"VM {vm.name}: the mount suite failed; see {report.results_dir}")
    (result,) = report.suites
    log.info("VM %s: the mount suite passed (%d checks, %.0fs); results in %s", vm.name,
             result.passed, result.duration_seconds, report.results_dir)
    return report


def make_golden(vm: GuestVM, from_scratch: bool = False,
                rewarm: bool = False) -> golden.Golden:
    """A golden image of the VM, provisioned and verified by the mount suite; the VM is left stopped.

    From scratch, the VM is first reset and every phase runs in turn (fetch or build
    the medium, install, provision), each reusing its cached checkpoint when its
    inputs have not changed. A cached golden image with the same key is reused.
    With a `warm:` command, the project's warm state on it is made too (warming.py),
    unless one was made for the same command (`rewarm`: made anew all the same).
    """
    if from_scratch:
        profile = vm.profile
        if profile.iso and vm.config.fallback:
            try:
                images.fetch_iso(vm)
            except PrerequisiteMissing as e:
                log.warning("no ISO for VM %s can be had (%s); making the golden image of VM %s instead, "
                            "as its 'fallback' says", vm.name, e.message, vm.config.fallback)
                fallback = GuestVM(vm.project, vm.project.config.vm(vm.config.fallback))
                accel.refuse_unusable(fallback.config.accel)
                with fallback:
                    return make_golden(fallback, from_scratch=True, rewarm=rewarm)
        lifecycle.discard_disk(vm)
        if profile.install:
            install(vm)
    inputs = images.golden_inputs(vm)
    key = golden.golden_key(inputs)
    gold = golden.find(vm.project.cache, key)
    if gold:
        log.info("golden image %s (same inputs) is cached in %s: VM %s now runs from it", key, gold.dir, vm.name)
    else:
        was_running = vm.machine.pid() is not None
        try:
            provision(vm)
            if vm.machine.pid() is None:
                lifecycle.start(vm)
            verify(vm)
        except BaseException:  # a failure or Ctrl-C: the VM this booted does not outlive it
            if not was_running and vm.machine.pid() is not None:
                log.warning("VM %s: stopping it (it was booted for the golden image); `invoke vm.start --vm %s` "
                            "boots it again to look", vm.name, vm.name)
                vm.stop(soft_timeout=0)
            raise
        log.info("VM %s: powering off so its disk is consistent", vm.name)
        with vm.stopped(soft_timeout=120):
            origin = vm.vmdir.origin()
            assert origin is not None  # provision made the disk
            kernel_files = {f.name: f for f in images.boot_files(vm, origin.path).values() if isinstance(f, Path)}
            with Heartbeat(log, lambda t: f"  ... making the golden image: {t:.0f} s so far"):
                gold = golden.make(vm.project.cache, key, inputs, vm.vmdir.disk, kernel_files, vm.keys(),
                                   lambda clean: _snapshot_clean(vm, clean))
    lifecycle.discard_disk(vm)  # captured in the golden image; vm.start now restores from it
    log.info("VM %s: golden image %s is ready; `invoke vm.start --vm %s` starts from it by restoring "
             "'clean'", vm.name, gold.key, vm.name)
    warming.make(vm, gold, again=rewarm)
    return gold


def _snapshot_clean(vm: GuestVM, clean_qcow2: Path) -> None:
    """Boot a guest on a new golden image's clean.qcow2 and save "clean" there, paused first.

    Its QEMU's sockets are in the VM's folder (locked, its own QEMU stopped), where the VM's
    own sockets fit: under the cache's deeper golden/.KEY.partial/ a unix socket's 107 bytes
    ran out after the whole install, provision and mount suite had run."""
    folder = clean_qcow2.parent
    runner = Machine(f"golden-{vm.name}", vm.vmdir.dir / "golden")
    gold_keys = keys.LabKeys(folder / "keys")
    spec = MachineSpec(
        name=runner.name, accel=vm.accelerator(folder), memory_mib=vm.config.memory_mib, cpus=vm.config.cpus,
        disk=clean_qcow2, seed_iso=seed.for_vm(folder / "seed.iso", gold_keys, vm.name),
        guest_agent=bool(vm.profile.agent), **images.boot_files(vm, folder))
    try:
        with runner.launched(spec) as status:
            log.info("golden image: booting it to take the %r snapshot (console: %s)", golden.SNAPSHOT,
                     runner.console_log)
            with GuestSSH(status.ssh_port or 0, vm.config.ssh_user, gold_keys) as ssh, \
                    lifecycle.booting(ssh, runner.console_log):
                ssh.wait_ready(vm.config.boot_timeout, check=runner.assert_alive)
                if vm.profile.agent and not agent.answers(runner.agent_socket, 60):  # restores count on it
                    raise MachineError(f"golden image: the guest agent ({vm.profile.agent}, `agent:` in "
                                       f"{vm.profile.file}) did not answer within 60s of SSH answering; "
                                       "is it in the image, and started at boot?")
            with Monitor(runner.qmp_socket, timeout=60) as mon:
                mon.command("stop")
                snapshots.save(mon, clean_qcow2, golden.SNAPSHOT)
    finally:
        runner.stop(soft_timeout=0)
        shutil.rmtree(runner.dir, ignore_errors=True)
        (folder / "seed.iso").unlink(missing_ok=True)
