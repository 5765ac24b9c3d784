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
from typing import TYPE_CHECKING, Any, Dict

from vmlab import disk, golden, host, keys, recipe, seed, snapshots
from vmlab.config import SuiteConfig, VMConfig
from vmlab.console import Console
from vmlab.errors import ConsoleError, PrerequisiteMissing, ProvisionError
from vmlab.lab import images, lifecycle, loop, warming
from vmlab.lab.vmdir import Origin, OriginKind, VMDir
from vmlab.machine import Machine, MachineSpec, console_now
from vmlab.progress import Heartbeat
from vmlab.qmp import Monitor
from vmlab.results import RunReport
from vmlab.ssh import GuestSSH

if TYPE_CHECKING:
    from vmlab.lab import Lab

log = logging.getLogger(__name__)

MOUNT_SUITE = Path(__file__).resolve().parents[1] / "scripts" / "mount-suite.sh"  # in the package: installed too
GUEST_MOUNT_SUITE = "/tmp/vmlab-mount-suite.sh"
TIMED = "console.timed.jsonl"  # the install's console, what it read and typed, with times (console.py)


def install(lab: "Lab", vm: VMConfig, vmdir: VMDir) -> Path:
    """Install the guest from its ISO onto a blank disk by its recipe; a cached checkpoint.

    The installed disk (read-only once made) and the keys it trusts are kept in the
    cache by key, so a failed provision, a new VM or another lab never installs again.
    """
    profile = lab.profile(vm)
    host.require(host.VM_TOOLS, "installing a guest")
    medium = images.medium(lab, vm)
    key, inputs = images.installed_key(lab, vm)
    if lab.cache.has(images.INSTALLED, key):
        log.info("VM %s: the %s install %s is cached", vm.name, profile.name, key)
        return lab.cache.path(images.INSTALLED, key)
    rec = images.install_recipe(lab, vm)
    return lab.cache.get_or_build(images.INSTALLED, key, inputs,
                                  lambda out: _run_install(lab, vm, vmdir, rec, medium, out),
                                  f"the {profile.name} install {key}")


def _run_install(lab: "Lab", vm: VMConfig, vmdir: VMDir, rec: recipe.Recipe, medium: Path,
                 out: Path) -> Dict[str, Any]:
    """Install onto a new blank disk of the VM, then move it into `out` (the checkpoint)."""
    with vmdir.lock():
        lifecycle.close_connection(lab, vm, vmdir)
        vmdir.machine.stop(soft_timeout=0)
        vmdir.forget_disk()  # a failed install's half-written disk is never reused
        vmdir.dir.mkdir(parents=True, exist_ok=True)
        disk.create_blank(vmdir.disk, vm.disk_bytes)
        vmdir.set_origin(Origin(OriginKind.INSTALLER, medium))
    shutil.copytree(lab.keys().dir, out / "keys", ignore=shutil.ignore_patterns(".lock"))
    installed_keys = keys.LabKeys(out / "keys")
    runner = Machine(f"{vm.name}-install", vmdir.dir / "install")
    runner.dir.mkdir(parents=True, exist_ok=True)
    scripts = {name: (rec.path.parent / name).read_bytes() for name in rec.seed}
    # One vCPU: an installer gains nothing from more, and a multi-vCPU guest under TCG can
    # lose a timer wakeup (an RCU stall that hung the rehearsal's live CD once in CI).
    spec = MachineSpec(name=runner.name, accel=images.accelerator(lab, vm, out), memory_mib=vm.memory_mib, cpus=1,
                       disk=vmdir.disk, install_iso=medium,
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
    shutil.move(str(vmdir.disk), out / "disk.qcow2")  # a rename when the cache shares the file system
    vmdir.forget_disk()  # the VM's next disk is an overlay on it
    os.chmod(out / "disk.qcow2", 0o444)
    log.info("VM %s: installed in %.0fs", vm.name, time.monotonic() - started)
    return {"medium": str(medium), "install_seconds": round(time.monotonic() - started, 1),
            "transcript": str(runner.console_log)}


def provision(lab: "Lab", vm: VMConfig, vmdir: VMDir) -> str:
    """Boot the VM from its base and install what the config asks for (see loop.ensure_provisioned).

    It always starts again from the base (the installed or built disk), so a failed
    provision costs a provision, never an install. The VM is left running.
    """
    key = images.provision_key(lab, vm)
    if vmdir.provisioned_key() == key and vmdir.disk.exists():
        log.info("VM %s is provisioned already (%s)", vm.name, key)
        return key
    with vmdir.lock():
        lifecycle.close_connection(lab, vm, vmdir)
        vmdir.machine.stop(soft_timeout=0)
        vmdir.forget_disk()
        origin = images.base(lab, vm)  # not a golden copy: provisioning makes goldens
        disk.create_overlay(vmdir.disk, origin.path / "disk.qcow2", vm.disk_bytes)
        vmdir.set_origin(origin)
    lifecycle.start(lab, vm, vmdir)
    try:
        loop.ensure_provisioned(lab, vm, vmdir, lifecycle.connection(lab, vm, vmdir))
    except KeyboardInterrupt:  # cut off (a failure keeps the guest up for its diagnostics): stop what we started
        lifecycle.close_connection(lab, vm, vmdir)
        vmdir.machine.stop(soft_timeout=0)
        raise
    return key


def verify(lab: "Lab", vm: VMConfig, vmdir: VMDir) -> RunReport:
    """Run vmlab's privileged mount suite in the running VM, as any suite runs; a golden image must pass it."""
    lifecycle.connection(lab, vm, vmdir).put(MOUNT_SUITE, GUEST_MOUNT_SUITE)
    junit = "/tmp/vmlab-mount-suite.xml"
    suite = SuiteConfig(name="mounts", command=f"sh {GUEST_MOUNT_SUITE}", workdir="/tmp", privileged=True,
                        env=(("JUNIT", junit),), timeout=900, junit=junit)
    report = loop.run_suites(lab, vm, vmdir, [suite])
    if not report.passed:
        raise ProvisionError(f"VM {vm.name}: the mount suite failed; see {report.results_dir}")
    (result,) = report.suites
    log.info("VM %s: the mount suite passed (%d checks, %.0fs); results in %s", vm.name,
             result.passed, result.duration_seconds, report.results_dir)
    return report


def make_golden(lab: "Lab", vm: VMConfig, vmdir: VMDir, from_scratch: bool = False,
                rewarm: bool = False) -> golden.Golden:
    """A golden image of the VM, provisioned and verified by the mount suite; the VM is left stopped.

    From scratch, the VM is first reset and every phase runs in turn (fetch or build
    the medium, install, provision), each reusing its cached checkpoint when its
    inputs have not changed. A cached golden image with the same key is reused.
    With a `warm:` command, the project's warm state on it is made too (warming.py),
    unless one was made for the same command (`rewarm`: made anew all the same).
    """
    if from_scratch:
        profile = lab.profile(vm)
        if profile.iso and vm.fallback:
            try:
                images.fetch_iso(lab, vm)
            except PrerequisiteMissing as e:
                log.warning("no ISO for VM %s can be had (%s); making the golden image of VM %s instead, "
                            "as its 'fallback' says", vm.name, e.message, vm.fallback)
                return lab.make_golden(vm.fallback, from_scratch=True, rewarm=rewarm)
        lifecycle.discard_disk(lab, vm, vmdir)
        if profile.install:
            install(lab, vm, vmdir)
    inputs = images.golden_inputs(lab, vm)
    key = golden.golden_key(inputs)
    gold = golden.find(lab.cache, key)
    if gold:
        log.info("golden image %s (same inputs) is cached in %s: VM %s now runs from it", key, gold.dir, vm.name)
    else:
        was_running = vmdir.machine.pid() is not None
        try:
            provision(lab, vm, vmdir)
            if vmdir.machine.pid() is None:
                lifecycle.start(lab, vm, vmdir)
            verify(lab, vm, vmdir)
        except BaseException:  # a failure or Ctrl-C: the VM this booted does not outlive it
            if not was_running and vmdir.machine.pid() is not None:
                log.warning("VM %s: stopping it (it was booted for the golden image); `invoke vm.start --vm %s` "
                            "boots it again to look", vm.name, vm.name)
                lifecycle.stop(lab, vm, vmdir, soft_timeout=0)
            raise
        with vmdir.lock():
            log.info("VM %s: powering off so its disk is consistent", vm.name)
            lifecycle.close_connection(lab, vm, vmdir)
            vmdir.machine.stop(soft_timeout=120)
            origin = vmdir.origin()
            assert origin is not None  # provision made the disk
            kernel_files = {f.name: f for f in images.boot_files(lab, vm, origin.path).values() if isinstance(f, Path)}
            with Heartbeat(log, lambda t: f"  ... making the golden image: {t:.0f} s so far"):
                gold = golden.make(lab.cache, key, inputs, vmdir.disk, kernel_files, lifecycle.keys_for(lab, vmdir),
                                   lambda clean: _snapshot_clean(lab, vm, vmdir, clean))
    lifecycle.discard_disk(lab, vm, vmdir)  # captured in the golden image; vm.start now restores from it
    log.info("VM %s: golden image %s is ready; `invoke vm.start --vm %s` starts from it by restoring "
             "'clean'", vm.name, gold.key, vm.name)
    warming.make(lab, vm, vmdir, gold, again=rewarm)
    return gold


def _snapshot_clean(lab: "Lab", vm: VMConfig, vmdir: VMDir, clean_qcow2: Path) -> None:
    """Boot a guest on a new golden image's clean.qcow2 and save "clean" there, paused first.

    Its QEMU's sockets are in the VM's folder (locked, its own QEMU stopped), where the VM's
    own sockets fit: under the cache's deeper golden/.KEY.partial/ a unix socket's 107 bytes
    ran out after the whole install, provision and mount suite had run."""
    folder = clean_qcow2.parent
    runner = Machine(f"golden-{vm.name}", vmdir.dir / "golden")
    gold_keys = keys.LabKeys(folder / "keys")
    spec = MachineSpec(
        name=runner.name, accel=images.accelerator(lab, vm, folder), memory_mib=vm.memory_mib, cpus=vm.cpus,
        disk=clean_qcow2, seed_iso=seed.for_vm(folder / "seed.iso", gold_keys, vm.name),
        **images.boot_files(lab, vm, folder))
    try:
        with runner.launched(spec) as status:
            log.info("golden image: booting it to take the %r snapshot (console: %s)", golden.SNAPSHOT,
                     runner.console_log)
            with GuestSSH(status.ssh_port or 0, vm.ssh_user, gold_keys) as ssh, \
                    lifecycle.booting(ssh, runner.console_log):
                ssh.wait_ready(vm.boot_timeout, check=runner.assert_alive)
            with Monitor(runner.qmp_socket, timeout=60) as mon:
                mon.command("stop")
                snapshots.save(mon, clean_qcow2, golden.SNAPSHOT)
    finally:
        runner.stop(soft_timeout=0)
        shutil.rmtree(runner.dir, ignore_errors=True)
        (folder / "seed.iso").unlink(missing_ok=True)
