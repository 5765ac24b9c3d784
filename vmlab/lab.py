"""The verbs a user says (start, stop, status, ssh, destroy), composed from the rooms.

A Lab is one project's set of VMs: its config, its state folder `vm/`, its keys,
and the cache of images it shares with other projects on the host.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from vmlab import accel, debian, disk, guests, host, keys, locks, seed, snapshots
from vmlab.cache import ArtefactCache
from vmlab.config import LabConfig, VMConfig
from vmlab.errors import GuestUnreachable, PrerequisiteMissing, SnapshotError
from vmlab.machine import Machine, MachineSpec, MachineStatus, last_line, tail
from vmlab.qmp import Monitor
from vmlab.snapshots import Snapshot
from vmlab.ssh import CommandResult, GuestSSH

log = logging.getLogger(__name__)


class Lab:
    def __init__(self, config: LabConfig):
        self.config = config
        self.cache = ArtefactCache(config.cache_dir)

    # --- the parts of one VM ---

    def vm(self, name: Optional[str] = None) -> VMConfig:
        return self.config.vm(name)

    def machine(self, vm: VMConfig) -> Machine:
        return Machine(vm.name, self.config.state_dir / vm.name)

    def keys(self) -> keys.LabKeys:
        return keys.ensure(self.config.state_dir / "keys", comment=f"vmlab@{self.config.project_dir.name}")

    def base_image(self, vm: VMConfig) -> Path:
        """The cached image folder this VM's disk starts from."""
        profile = guests.load(vm.profile)
        if profile.name != "debian":
            raise PrerequisiteMissing(f"guest profile {profile.name!r} has no image yet; install it first")
        return debian.ensure_image(self.cache, profile, self.config.profile_options(profile.name))

    # --- lifecycle ---

    def start(self, name: Optional[str] = None) -> MachineStatus:
        """Start the VM (building what it needs first) and return once SSH answers."""
        vm = self.vm(name)
        host.require(host.VM_TOOLS, "starting a VM")
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            current = machine.status(query_qemu=False)
            if current.state == "running":
                log.info("VM %s is already running (ssh port %s)", vm.name, current.ssh_port)
                return machine.status()
            if current.state == "crashed":
                log.warning("VM %s: %s", vm.name, current.detail.split(";")[0] + "; cleaning up")
                machine.clean()
            spec = self._spec(vm, machine)
            if vm.accel == "auto" and spec.accel.accel == "tcg":
                log.warning("%s", spec.accel.reason)
            started = time.monotonic()
            status = machine.launch(spec)
            log.info("VM %s: QEMU is up (pid %s, %s); waiting for SSH on 127.0.0.1:%s (console: %s)",
                     vm.name, status.pid, spec.accel.accel, status.ssh_port, machine.console_log)
            self._wait_for_ssh(vm, machine, vm.boot_timeout).close()
            status = machine.status()
            status.extra["boot_seconds"] = round(time.monotonic() - started, 1)
            log.info("VM %s is up: ssh 127.0.0.1:%s, %s, pid %s (%.1fs)", vm.name, status.ssh_port,
                     status.accel, status.pid, status.extra["boot_seconds"])
            return status

    def _wait_for_ssh(self, vm: VMConfig, machine: Machine, timeout: float) -> GuestSSH:
        """A session once SSH runs a command; on failure or Ctrl-C, QEMU is stopped, not left half-up."""
        ssh = GuestSSH(machine.state()["ssh_port"], vm.ssh_user, self.keys())
        try:
            ssh.wait_ready(timeout, check=machine.assert_alive,
                           progress=lambda t, why: log.info(
                               "  still booting after %.0fs (%s); console: %s", t, why,
                               last_line(machine.console_log)[-80:] or "(nothing yet)"))
            return ssh
        except GuestUnreachable as e:
            machine.stop(soft_timeout=0)
            raise GuestUnreachable(f"VM {vm.name}: {e}; it was stopped.\nLast console lines "
                                   f"({machine.console_log}):\n{tail(machine.console_log, 15)}") from None
        except BaseException:
            machine.stop(soft_timeout=0)  # nothing half-started is left running (also on Ctrl-C)
            raise

    def _spec(self, vm: VMConfig, machine: Machine, paused: bool = False) -> MachineSpec:
        """Disk overlay, seed CD and accelerator for one start of `vm`."""
        profile = guests.load(vm.profile)
        image = self.base_image(vm)
        machine.dir.mkdir(parents=True, exist_ok=True)
        overlay = machine.dir / "disk.qcow2"
        if not overlay.exists():
            disk.create_overlay(overlay, image / "disk.qcow2", vm.disk_bytes)
            (machine.dir / "disk.json").write_text(json.dumps({"base": str(image)}) + "\n")
        base = Path(json.loads((machine.dir / "disk.json").read_text())["base"])
        if not (base / "disk.qcow2").exists():
            raise PrerequisiteMissing(f"the image VM {vm.name}'s disk was made from is gone ({base}); "
                                      f"`invoke vm.destroy --vm {vm.name}` and start again")
        lab_keys = self.keys()
        seed_iso = seed.build(machine.dir / "seed.iso", {
            "authorized_keys": lab_keys.client_public() + "\n",
            "ssh_host_ed25519_key": lab_keys.host.read_bytes(),
            "ssh_host_ed25519_key.pub": lab_keys.host.with_suffix(".pub").read_bytes(),
            "hostname": vm.name + "\n",
        })
        choice = accel.choose(vm.accel, lambda: image / "vmlinuz", self.config.cache_dir)
        boot = profile.boot
        return MachineSpec(
            name=vm.name, accel=choice, memory_mib=vm.memory_mib, cpus=vm.cpus, disk=overlay,
            seed_iso=seed_iso, ssh_port=vm.ssh_port,
            kernel=base / boot["kernel"] if profile.kernel_boot else None,
            initrd=base / boot["initrd"] if boot.get("initrd") else None,
            cmdline=boot.get("cmdline", ""), paused=paused,
        )

    # --- snapshots ---

    def snapshot(self, name: Optional[str] = None, snapshot: str = "clean") -> Snapshot:
        """Save the running VM's disk, RAM and devices as `snapshot`."""
        vm = self.vm(name)
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._require_running(vm, machine)
            with Monitor(machine.qmp_socket, timeout=60) as mon:
                snap = snapshots.save(mon, machine.disk, snapshot)
        log.info("VM %s: saved snapshot %r (%d MiB of RAM state)", vm.name, snap.name, snap.vm_state_bytes >> 20)
        return snap

    def snapshots(self, name: Optional[str] = None) -> List[Snapshot]:
        machine = self.machine(self.vm(name))
        return snapshots.listed(machine.disk) if machine.disk.exists() else []

    def snapshot_delete(self, snapshot: str, name: Optional[str] = None) -> None:
        vm = self.vm(name)
        machine = self.machine(vm)
        if not machine.disk.exists():
            raise SnapshotError(f"VM {vm.name} has no disk, so no snapshot {snapshot!r}")
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            if machine.pid() is None:
                snapshots.delete(None, machine.disk, snapshot)
            else:
                with Monitor(machine.qmp_socket, timeout=60) as mon:
                    snapshots.delete(mon, machine.disk, snapshot)

    def restore(self, name: Optional[str] = None, snapshot: str = "clean") -> Dict[str, float]:
        """Put the VM back to `snapshot`: live if QEMU runs, else by starting QEMU from it.

        Returns once a command has run over SSH (a new connection: every earlier one
        died with the restore) and the guest clock has been set from the host's.
        """
        vm = self.vm(name)
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            if not machine.disk.exists():
                raise PrerequisiteMissing(f"VM {vm.name} has no disk yet: start it and take a snapshot first")
            snapshots.find(machine.disk, snapshot)  # an unknown name fails before anything changes
            started = time.monotonic()
            if machine.pid() is not None:
                with Monitor(machine.qmp_socket, timeout=60) as mon:
                    snapshots.load(mon, machine.disk, snapshot)
                how = "live"
            else:
                if machine.status(query_qemu=False).state == "crashed":
                    log.warning("VM %s: QEMU had died; starting it from snapshot %r", vm.name, snapshot)
                machine.launch(self._spec(vm, machine, paused=True))
                try:
                    with Monitor(machine.qmp_socket, timeout=60) as mon:
                        snapshots.load(mon, machine.disk, snapshot)
                        mon.command("cont")
                except BaseException:
                    machine.stop(soft_timeout=0)
                    raise
                how = "started from the snapshot"
            loaded = time.monotonic() - started
            with self._wait_for_ssh(vm, machine, vm.boot_timeout) as ssh:
                self._after_restore(vm, ssh)
            timings = {"load_seconds": round(loaded, 2), "total_seconds": round(time.monotonic() - started, 2)}
        log.info("VM %s: restored to %r (%s) in %.1fs", vm.name, snapshot, how, timings["total_seconds"])
        return timings

    def _after_restore(self, vm: VMConfig, ssh: GuestSSH) -> None:
        """The guest's clock went back to the snapshot's and its random pool repeats: fix both."""
        command = guests.load(vm.profile).after_restore
        if not command:
            return
        now = time.time()
        result = ssh.run(command.format(epoch=f"{now:.3f}", epoch_int=int(round(now)),
                                        entropy=secrets.token_hex(64)), timeout=30)
        if not result.succeeded:
            raise SnapshotError(f"VM {vm.name}: setting the guest clock after the restore failed "
                                f"(exit {result.exit_status}): {result.stderr.strip()}")

    def _require_running(self, vm: VMConfig, machine: Machine) -> None:
        state = machine.status(query_qemu=False).state
        if state != "running":
            raise PrerequisiteMissing(f"VM {vm.name} is not running ({state}); start it: invoke vm.start")

    def stop(self, name: Optional[str] = None, soft_timeout: float = 60.0) -> str:
        vm = self.vm(name)
        machine = self.machine(vm)
        if not machine.dir.exists():
            return "was not running (never started)"
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            return machine.stop(soft_timeout)

    def status(self, name: Optional[str] = None) -> MachineStatus:
        return self.machine(self.vm(name)).status()

    def statuses(self) -> List[MachineStatus]:
        """Every configured VM, and any VM folder left in vm/ by an earlier config."""
        names = list(self.config.vms)
        if self.config.state_dir.is_dir():
            names += sorted(p.name for p in self.config.state_dir.iterdir()
                            if (p / "disk.qcow2").exists() and p.name not in names)
        return [Machine(n, self.config.state_dir / n).status() for n in names]

    def destroy(self, name: Optional[str] = None) -> str:
        """Stop the VM and delete its folder (disk overlay, logs). Cached images are kept."""
        vm = self.vm(name)
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            how = machine.stop(soft_timeout=0)
            shutil.rmtree(machine.dir, ignore_errors=True)
        return how

    def demo(self, name: Optional[str] = None) -> List[str]:
        """The main job for now: boot the VM, prove SSH and the console answer, stop it.

        Returns the lines of its report; raises on the first thing that does not work.
        """
        vm = self.vm(name)
        machine = self.machine(vm)
        if machine.pid() is not None:
            log.info("VM %s is running; stopping it to boot it afresh", vm.name)
            self.stop(vm.name)
        status = self.start(vm.name)
        try:
            facts = self.run("echo \"$(hostname) $(uname -sr) $(id -un)\"", vm.name, timeout=60)
            if not facts.succeeded:
                raise GuestUnreachable(f"VM {vm.name}: a command over SSH failed: {facts.stderr.strip()}")
            login = machine.wait_console(r"login:\s*$", timeout=60)
            report = [f"booted in {status.extra['boot_seconds']}s under {status.accel} (pid {status.pid})",
                      f"SSH on 127.0.0.1:{status.ssh_port}: {facts.stdout.strip()}",
                      f"serial console ({machine.console_log}): {login}"]
        finally:
            report_stop = self.stop(vm.name)
        return report + [f"stopped: {report_stop}"]

    # --- in the guest ---

    def ssh(self, name: Optional[str] = None) -> GuestSSH:
        """A connected SSH session to a running VM."""
        vm = self.vm(name)
        status = self.machine(vm).status(query_qemu=False)
        if status.state != "running":
            raise PrerequisiteMissing(f"VM {vm.name} is not running ({status.state}); start it: invoke vm.start")
        session = GuestSSH(status.ssh_port, vm.ssh_user, self.keys())
        session.wait_ready(timeout=30)
        return session

    def run(self, command: str, name: Optional[str] = None, **kwargs) -> CommandResult:
        with self.ssh(name) as session:
            return session.run(command, **kwargs)

    def ssh_argv(self, name: Optional[str] = None) -> List[str]:
        """The OpenSSH command line for an interactive shell in the VM."""
        vm = self.vm(name)
        status = self.machine(vm).status(query_qemu=False)
        if status.state != "running":
            raise PrerequisiteMissing(f"VM {vm.name} is not running ({status.state}); start it: invoke vm.start")
        host.require(["ssh"], "an interactive shell")
        return [host.which("ssh") or "ssh", *self.keys().openssh_options(), "-p", str(status.ssh_port),
                f"{vm.ssh_user}@127.0.0.1"]
