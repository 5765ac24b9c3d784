"""The verbs a user says (start, stop, restore, golden, ...), composed from the rooms.

A Lab is one project's set of VMs: its config, its state folder `vm/`, its keys,
and the cache of images it shares with other projects on the host.

Every VM disk records where it came from in `vm/<name>/disk.json`: an image
(`{"image": folder}`: an overlay on a cached base image, booted) or a golden image
(`{"golden": folder, "fresh": bool}`: a copy of its clean.qcow2; a fresh one is
started by restoring "clean", not by booting). The origin decides which kernel
files and which SSH keys the VM uses.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from vmlab import __version__, accel, debian, disk, fetch, golden, guests, host, keys, locks, results, seed, snapshots
from vmlab import suites as suite_runner
from vmlab import sync as rsync
from vmlab.cache import ArtefactCache
from vmlab.config import VM_NAME, LabConfig, SuiteConfig, VMConfig
from vmlab.errors import ConfigError, GuestUnreachable, PrerequisiteMissing, RunIncomplete, SnapshotError
from vmlab.machine import Machine, MachineSpec, MachineStatus, last_line, tail
from vmlab.openssh import SharedConnection
from vmlab.qmp import Monitor
from vmlab.snapshots import Snapshot
from vmlab.ssh import CommandResult, GuestSSH

log = logging.getLogger(__name__)

SUSPEND = "suspend"  # the snapshot vm.suspend saves and vm.resume loads


class Lab:
    def __init__(self, config: LabConfig):
        self.config = config
        self.cache = ArtefactCache(config.cache_dir)
        self._warned_tcg = False

    # --- the parts of one VM ---

    def vm(self, name: Optional[str] = None) -> VMConfig:
        """A configured VM, or a clone: any other name, once the first VM has a golden image."""
        if not name or name in self.config.vms:
            return self.config.vm(name)
        first = self.config.vm()
        if VM_NAME.match(name) and ((self.config.state_dir / name / "disk.json").exists() or self.golden_of(first)):
            return dataclasses.replace(first, name=name, ssh_port=0)
        try:
            return self.config.vm(name)
        except ConfigError as e:
            raise ConfigError(f"{e}; or make a golden image (invoke vm.golden): any other name then "
                              f"starts a clone of VM {first.name!r}") from None

    def machine(self, vm: VMConfig) -> Machine:
        return Machine(vm.name, self.config.state_dir / vm.name)

    def keys(self) -> keys.LabKeys:
        return keys.ensure(self.config.state_dir / "keys", comment=f"vmlab@{self.config.project_dir.name}")

    def _origin(self, machine: Machine) -> Dict[str, Any]:
        try:
            return json.loads((machine.dir / "disk.json").read_text())
        except (OSError, ValueError):
            return {}

    def _set_origin(self, machine: Machine, origin: Dict[str, Any]) -> None:
        (machine.dir / "disk.json").write_text(json.dumps(origin) + "\n")

    def keys_for(self, machine: Machine) -> keys.LabKeys:
        """A VM made from a golden image trusts the keys that image was made with."""
        origin = self._origin(machine)
        return golden.Golden(Path(origin["golden"])).keys if "golden" in origin else self.keys()

    def base_image(self, vm: VMConfig) -> Path:
        """The cached image folder a new VM disk is an overlay on."""
        profile = guests.load(vm.profile)
        if profile.name != "debian":
            raise PrerequisiteMissing(f"guest profile {profile.name!r} has no image yet; install it first")
        return debian.ensure_image(self.cache, profile, self.config.profile_options(profile.name))

    def golden_inputs(self, vm: VMConfig) -> Dict[str, Any]:
        """Everything a golden image of `vm` depends on; its hash is the golden key."""
        profile = guests.load(vm.profile)
        return {"profile": profile.name, "memory_mib": vm.memory_mib, "cpus": vm.cpus,
                "image": debian.image_key(profile, self.config.profile_options(profile.name))}

    def golden_of(self, vm: VMConfig) -> Optional[golden.Golden]:
        try:
            return golden.find(self.cache, golden.golden_key(self.golden_inputs(vm)))
        except (ConfigError, PrerequisiteMissing):
            return None

    def _ensure_disk(self, vm: VMConfig, machine: Machine) -> Dict[str, Any]:
        """The VM's disk, made if missing: from the golden image if there is one, else the base image."""
        machine.dir.mkdir(parents=True, exist_ok=True)
        if not machine.disk.exists():
            gold = self.golden_of(vm)
            if gold:
                gold.new_disk(machine.disk)
                self._set_origin(machine, {"golden": str(gold.dir), "fresh": True})
            else:
                image = self.base_image(vm)
                disk.create_overlay(machine.disk, image / "disk.qcow2", vm.disk_bytes)
                self._set_origin(machine, {"image": str(image)})
        origin = self._origin(machine)
        if "installer" in origin:
            raise PrerequisiteMissing(f"VM {vm.name}'s disk is blank (made by vm.setup): install the guest "
                                      "on it first")
        folder = Path(origin.get("golden") or origin.get("image") or "")
        if not origin or not folder.is_dir():
            raise PrerequisiteMissing(f"the image VM {vm.name}'s disk was made from is gone ({folder}); "
                                      f"`invoke vm.destroy --vm {vm.name}` and start again")
        return origin

    def _spec(self, vm: VMConfig, machine: Machine, paused: bool = False, ssh_port: Optional[int] = None) -> MachineSpec:
        """Disk, seed CD and accelerator for one start of `vm`."""
        origin = self._ensure_disk(vm, machine)
        folder = Path(origin.get("golden") or origin["image"])
        return MachineSpec(
            name=vm.name, accel=self._accel(vm, folder), memory_mib=vm.memory_mib, cpus=vm.cpus,
            disk=machine.disk, paused=paused, ssh_port=vm.ssh_port if ssh_port is None else ssh_port,
            seed_iso=seed.for_vm(machine.dir / "seed.iso", self.keys_for(machine), vm.name),
            **self._boot_files(vm, folder),
        )

    @staticmethod
    def _boot_files(vm: VMConfig, folder: Path) -> Dict[str, Any]:
        """Kernel, initrd and command line for a guest its profile boots directly, from `folder`."""
        boot = guests.load(vm.profile).boot
        return {"kernel": folder / boot["kernel"] if "kernel" in boot else None,
                "initrd": folder / boot["initrd"] if "initrd" in boot else None,
                "cmdline": boot.get("cmdline", "")}

    def _accel(self, vm: VMConfig, folder: Path) -> accel.AccelChoice:
        choice = accel.choose(vm.accel, lambda: folder / "vmlinuz", self.config.cache_dir)
        if vm.accel == "auto" and choice.accel == "tcg" and not self._warned_tcg:
            log.warning("%s", choice.reason)
            self._warned_tcg = True  # once per command is enough
        return choice

    # --- installer media ---

    def fetch_iso(self, name: Optional[str] = None, offline: bool = False) -> fetch.FetchResult:
        """The VM profile's installer ISO, verified, from the cache or its mirrors."""
        vm = self.vm(name)
        profile = guests.load(vm.profile)
        if not profile.iso:
            raise PrerequisiteMissing(f"guest profile {profile.name!r} is not installed from an ISO "
                                      "(its image is built from packages: invoke vm.image)")
        options = self.config.profile_options(profile.name)
        release = options.get("release") or profile.iso["release"]
        return fetch.fetch(mirrors=options.get("mirrors") or profile.iso["mirrors"],
                           path=profile.iso["path"].format(release=release), checksums=profile.iso["checksums"],
                           pin=options.get("checksum"), cache_dir=self.config.cache_dir, offline=offline)

    def setup(self, name: Optional[str] = None, offline: bool = False) -> Dict[str, Any]:
        """Everything a VM needs before its first start: the ISO and a blank disk, or the base image."""
        vm = self.vm(name)
        machine = self.machine(vm)
        if not guests.load(vm.profile).iso:
            self._ensure_disk(vm, machine)
            return {"disk": str(machine.disk), "image": self._origin(machine)["image"]}
        iso = self.fetch_iso(vm.name, offline=offline)
        machine.dir.mkdir(parents=True, exist_ok=True)
        if not machine.disk.exists():
            disk.create_blank(machine.disk, vm.disk_bytes)
            self._set_origin(machine, {"installer": str(iso.path)})
        return {"disk": str(machine.disk), "iso": str(iso.path), "sha256": iso.sha256}

    # --- lifecycle ---

    def start(self, name: Optional[str] = None) -> MachineStatus:
        """Start the VM and return once SSH answers: a boot, or a restore for a fresh golden copy."""
        vm = self.vm(name)
        host.require(host.VM_TOOLS, "starting a VM")
        machine = self.machine(vm)
        if (machine.dir / f"{SUSPEND}.json").exists():
            log.info("VM %s is suspended: resuming it", vm.name)
            self.resume(vm.name)
            return machine.status()
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            current = machine.status(query_qemu=False)
            if current.state == "running":
                log.info("VM %s is already running (ssh port %s)", vm.name, current.ssh_port)
                return machine.status()
            if current.state == "crashed":
                log.warning("VM %s: %s", vm.name, current.detail.split(";")[0] + "; cleaning up")
                machine.clean()
            started = time.monotonic()
            origin = self._ensure_disk(vm, machine)
            if origin.get("fresh"):
                log.info("VM %s: a fresh copy of golden image %s: restored to %r, not booted",
                         vm.name, Path(origin["golden"]).name, golden.SNAPSHOT)
                self._start_from_snapshot(vm, machine, golden.SNAPSHOT).close()
                self._set_origin(machine, dict(self._origin(machine), fresh=False))
            else:
                status = machine.launch(self._spec(vm, machine))
                log.info("VM %s: QEMU is up (pid %s, %s); waiting for SSH on 127.0.0.1:%s (console: %s)",
                         vm.name, status.pid, status.accel, status.ssh_port, machine.console_log)
                self._wait_for_ssh(vm, machine, vm.boot_timeout).close()
            status = machine.status()
            status.extra["boot_seconds"] = round(time.monotonic() - started, 1)
            log.info("VM %s is up: ssh 127.0.0.1:%s, %s, pid %s (%.1fs)", vm.name, status.ssh_port,
                     status.accel, status.pid, status.extra["boot_seconds"])
            return status

    def _wait_for_ssh(self, vm: VMConfig, machine: Machine, timeout: float) -> GuestSSH:
        """A session once SSH runs a command; on failure or Ctrl-C, QEMU is stopped, not left half-up."""
        ssh = GuestSSH(machine.state()["ssh_port"], vm.ssh_user, self.keys_for(machine))
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

    def stop(self, name: Optional[str] = None, soft_timeout: float = 60.0) -> str:
        vm = self.vm(name)
        machine = self.machine(vm)
        if not machine.dir.exists():
            return "was not running (never started)"
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            return machine.stop(soft_timeout)

    def status(self, name: Optional[str] = None) -> MachineStatus:
        return self._status(self.machine(self.vm(name)))

    def statuses(self) -> List[MachineStatus]:
        """Every configured VM, and every VM folder in vm/ (clones, and VMs of an earlier config)."""
        names = list(self.config.vms)
        if self.config.state_dir.is_dir():
            names += sorted(p.name for p in self.config.state_dir.iterdir()
                            if (p / "disk.json").exists() and p.name not in names)
        return [self._status(Machine(n, self.config.state_dir / n)) for n in names]

    def _status(self, machine: Machine) -> MachineStatus:
        status = machine.status()
        suspended = machine.dir / f"{SUSPEND}.json"
        if status.state == "stopped" and suspended.exists():
            status.state = "suspended"
            status.ssh_port = json.loads(suspended.read_text())["ssh_port"]
            status.detail = "its whole state is saved on disk; `vm.resume` brings it back"
        origin = self._origin(machine)
        if origin:
            status.extra["origin"] = "golden" if "golden" in origin else "image"
        return status

    def destroy(self, name: Optional[str] = None) -> str:
        """Stop the VM and delete its folder (disk, logs). Cached and golden images are kept."""
        vm = self.vm(name)
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            how = machine.stop(soft_timeout=0)
            shutil.rmtree(machine.dir, ignore_errors=True)
        return how

    def reset(self, name: Optional[str] = None) -> str:
        """Stop the VM and give it a new disk from where its disk came from; nothing else changes."""
        vm = self.vm(name)
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            how = machine.stop(soft_timeout=0)
            machine.disk.unlink(missing_ok=True)
            (machine.dir / "disk.json").unlink(missing_ok=True)
            (machine.dir / f"{SUSPEND}.json").unlink(missing_ok=True)
            origin = self._ensure_disk(vm, machine)
        return f"{how}; new disk from the {'golden' if 'golden' in origin else 'base'} image"

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
            self._close_shared(vm, machine)  # the restore kills the guest's end of it
            started = time.monotonic()
            if machine.pid() is not None:
                with Monitor(machine.qmp_socket, timeout=60) as mon:
                    snapshots.load(mon, machine.disk, snapshot)
                loaded = time.monotonic() - started
                with self._wait_for_ssh(vm, machine, vm.boot_timeout) as ssh:
                    self._after_restore(vm, ssh)
                how = "live"
            else:
                if machine.status(query_qemu=False).state == "crashed":
                    log.warning("VM %s: QEMU had died; starting it from snapshot %r", vm.name, snapshot)
                self._start_from_snapshot(vm, machine, snapshot).close()
                loaded, how = float("nan"), "started from the snapshot"
            timings = {"load_seconds": round(loaded, 2), "total_seconds": round(time.monotonic() - started, 2)}
        log.info("VM %s: restored to %r (%s) in %.1fs", vm.name, snapshot, how, timings["total_seconds"])
        return timings

    def _start_from_snapshot(self, vm: VMConfig, machine: Machine, snapshot: str,
                             ssh_port: Optional[int] = None) -> GuestSSH:
        """Start QEMU paused, load `snapshot`, run it; a session once SSH answers and the clock is set.

        (QEMU's own -loadvm refuses snapshots saved by the snapshot-save job: QEMU issue #344.)
        """
        machine.clean()
        machine.launch(self._spec(vm, machine, paused=True, ssh_port=ssh_port))
        try:
            with Monitor(machine.qmp_socket, timeout=60) as mon:
                snapshots.load(mon, machine.disk, snapshot)
                mon.command("cont")
        except BaseException:
            machine.stop(soft_timeout=0)
            raise
        ssh = self._wait_for_ssh(vm, machine, vm.boot_timeout)
        self._after_restore(vm, ssh)
        return ssh

    def _after_restore(self, vm: VMConfig, ssh: GuestSSH) -> None:
        """The guest's clock went back to the snapshot's, its random pool repeats, a clone has
        its origin's name: the profile's after_restore command fixes all three."""
        command = guests.load(vm.profile).after_restore
        if not command:
            return
        now = time.time()
        result = ssh.run(command.format(epoch=f"{now:.3f}", epoch_int=int(round(now)),
                                        entropy=secrets.token_hex(64), hostname=vm.name), timeout=30)
        if not result.succeeded:
            raise SnapshotError(f"VM {vm.name}: setting the guest clock after the restore failed "
                                f"(exit {result.exit_status}): {result.stderr.strip()}")

    def _require_running(self, vm: VMConfig, machine: Machine) -> None:
        state = machine.status(query_qemu=False).state
        if state != "running":
            raise PrerequisiteMissing(f"VM {vm.name} is not running ({state}); start it: invoke vm.start")

    # --- sleep and wake ---

    def suspend(self, name: Optional[str] = None) -> Snapshot:
        """Save the whole running state to the VM's disk and stop QEMU: no RAM is held."""
        vm = self.vm(name)
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._require_running(vm, machine)
            self._close_shared(vm, machine)
            port = machine.state()["ssh_port"]
            with Monitor(machine.qmp_socket, timeout=60) as mon:
                mon.command("stop")  # nothing changes between the snapshot and the quit
                snap = snapshots.save(mon, machine.disk, SUSPEND)
            machine.stop(soft_timeout=0)
            (machine.dir / f"{SUSPEND}.json").write_text(json.dumps({"ssh_port": port, "at": time.time()}))
        return snap

    def resume(self, name: Optional[str] = None) -> MachineStatus:
        """Bring a suspended VM back with the same SSH port and its processes still running."""
        vm = self.vm(name)
        machine = self.machine(vm)
        marker = machine.dir / f"{SUSPEND}.json"
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            if not marker.exists():
                raise PrerequisiteMissing(f"VM {vm.name} is not suspended ({machine.status().state})")
            port = json.loads(marker.read_text())["ssh_port"]
            self._start_from_snapshot(vm, machine, SUSPEND, ssh_port=port).close()
            marker.unlink()
            with Monitor(machine.qmp_socket, timeout=60) as mon:
                snapshots.delete(mon, machine.disk, SUSPEND)  # its RAM state is no longer needed
        return machine.status()

    # --- golden images ---

    def make_golden(self, name: Optional[str] = None) -> golden.Golden:
        """Freeze the VM as a golden image (or reuse the cached one with the same key), then run it from it."""
        vm = self.vm(name)
        machine = self.machine(vm)
        inputs = self.golden_inputs(vm)
        key = golden.golden_key(inputs)
        gold = golden.find(self.cache, key)
        if gold:
            log.info("golden image %s (same inputs) is cached in %s: VM %s now runs from it, "
                     "its current disk is replaced", key, gold.dir, vm.name)
        else:
            if not machine.disk.exists():
                self.start(vm.name)
            with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
                log.info("VM %s: powering off so its disk is consistent", vm.name)
                self._close_shared(vm, machine)
                machine.stop(soft_timeout=120)
                folder = Path(self._origin(machine).get("golden") or self._origin(machine)["image"])
                kernel_files = {f.name: f for f in self._boot_files(vm, folder).values() if isinstance(f, Path)}
                gold = golden.make(self.cache, key, inputs, machine.disk, kernel_files, self.keys_for(machine),
                                   lambda clean: self._snapshot_clean(vm, clean))
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            machine.stop(soft_timeout=60)
            machine.disk.unlink(missing_ok=True)  # captured in the golden image
            (machine.dir / "disk.json").unlink(missing_ok=True)
        self.start(vm.name)  # a fresh copy of the golden image: a restore
        return gold

    def _snapshot_clean(self, vm: VMConfig, clean_qcow2: Path) -> None:
        """Boot a guest on a new golden image's clean.qcow2 and save "clean" there, paused first."""
        folder = clean_qcow2.parent
        runner = Machine(f"golden-{vm.name}", folder / "run")
        gold_keys = keys.LabKeys(folder / "keys")
        spec = MachineSpec(
            name=runner.name, accel=self._accel(vm, folder), memory_mib=vm.memory_mib, cpus=vm.cpus,
            disk=clean_qcow2, seed_iso=seed.for_vm(folder / "seed.iso", gold_keys, vm.name),
            **self._boot_files(vm, folder))
        try:
            status = runner.launch(spec)
            log.info("golden image: booting it to take the %r snapshot (console: %s)", golden.SNAPSHOT,
                     runner.console_log)
            with GuestSSH(status.ssh_port, vm.ssh_user, gold_keys) as ssh:
                ssh.wait_ready(vm.boot_timeout, check=runner.assert_alive)
            with Monitor(runner.qmp_socket, timeout=60) as mon:
                mon.command("stop")
                snapshots.save(mon, clean_qcow2, golden.SNAPSHOT)
        finally:
            runner.stop(soft_timeout=0)
            shutil.rmtree(runner.dir, ignore_errors=True)
            (folder / "seed.iso").unlink(missing_ok=True)

    # --- the edit-test loop ---

    def shared(self, vm: VMConfig, machine: Machine) -> SharedConnection:
        """The multiplexed OpenSSH connection the loop uses (see openssh.py for why)."""
        state = machine.status(query_qemu=False)
        if state.state != "running":
            raise RunIncomplete(f"VM {vm.name} is not up ({state.state}): start it with `invoke vm.start`")
        return SharedConnection(machine.dir, state.ssh_port, vm.ssh_user, self.keys_for(machine))

    def _close_shared(self, vm: VMConfig, machine: Machine) -> None:
        port = machine.state().get("ssh_port")
        if port:
            SharedConnection(machine.dir, port, vm.ssh_user, self.keys_for(machine)).close()

    def sync(self, name: Optional[str] = None) -> rsync.SyncResult:
        """Make the guest's copy of the project (sync.guest_dir) equal to the project folder."""
        vm = self.vm(name)
        conn = self.shared(vm, self.machine(vm))
        try:
            done = rsync.sync(conn, self.config.project_dir, self.config.sync)
        except GuestUnreachable as e:
            raise RunIncomplete(f"VM {vm.name}: SSH never answered: {e}") from None
        log.info("synced %s to %s:%s: %s", self.config.project_dir, vm.name, self.config.sync.guest_dir, done)
        return done

    def run_suites(self, suites: List[SuiteConfig], name: Optional[str] = None,
                   restore_on_failure: bool = False) -> Dict[str, Any]:
        """Run suites in order into a new results folder; returns the report (see results.py).

        After a privileged suite fails or times out, `restore_on_failure` puts the VM
        back to its "clean" snapshot so the next run starts clean.
        """
        vm = self.vm(name)
        machine = self.machine(vm)
        conn = self.shared(vm, machine)
        run_dir = results.new_run(machine.dir / "results")
        run_as_root = "" if vm.ssh_user == "root" else guests.load(vm.profile).privileged
        guest = {k: v for k, v in self._guest_facts(conn, machine).items() if k != "pid"}
        meta = {"vm": dataclasses.asdict(vm), "guest": guest, "vmlab": __version__,
                "qemu": host.qemu_version(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "results_dir": str(run_dir)}
        done: List[results.SuiteResult] = []
        for suite in suites:
            log.info("suite %s: %s%s", suite.name, suite.command, " (as root)" if suite.privileged else "")
            try:
                result = suite_runner.run(conn, suite, self.config.sync.guest_dir, run_dir, run_as_root)
            except GuestUnreachable as e:
                results.write(run_dir, meta, done)
                raise RunIncomplete(f"VM {vm.name}: SSH stopped answering during suite {suite.name}: {e}; "
                                    f"results so far in {run_dir}") from None
            done.append(result)
            if not result.passed and suite.privileged and restore_on_failure:
                log.info("suite %s %s: restoring VM %s to 'clean'", suite.name, result.status, vm.name)
                self.restore(vm.name, golden.SNAPSHOT)
                conn = self.shared(vm, machine)
        return results.write(run_dir, meta, done)

    def _guest_facts(self, conn: SharedConnection, machine: Machine) -> Dict[str, str]:
        """The guest's OS and kernel, asked once per QEMU process."""
        cache = machine.dir / "guest.json"
        pid = machine.pid()
        try:
            facts = json.loads(cache.read_text())
            if facts.get("pid") == pid:
                return facts
        except (OSError, ValueError):
            pass
        out = io.BytesIO()
        conn.run("uname -s; uname -r", output=out, timeout=60)
        os_name, _, kernel = out.getvalue().decode(errors="replace").strip().partition("\n")
        facts = {"pid": pid, "os": os_name, "kernel": kernel}
        cache.write_text(json.dumps(facts))
        return facts

    # --- in the guest ---

    def ssh(self, name: Optional[str] = None) -> GuestSSH:
        """A connected SSH session to a running VM."""
        vm = self.vm(name)
        machine = self.machine(vm)
        self._require_running(vm, machine)
        session = GuestSSH(machine.state()["ssh_port"], vm.ssh_user, self.keys_for(machine))
        session.wait_ready(timeout=30)
        return session

    def run(self, command: str, name: Optional[str] = None, **kwargs: Any) -> CommandResult:
        with self.ssh(name) as session:
            return session.run(command, **kwargs)

    def ssh_argv(self, name: Optional[str] = None) -> List[str]:
        """The OpenSSH command line for an interactive shell in the VM."""
        vm = self.vm(name)
        machine = self.machine(vm)
        self._require_running(vm, machine)
        host.require(["ssh"], "an interactive shell")
        return [host.which("ssh") or "ssh", *self.keys_for(machine).openssh_options(),
                "-p", str(machine.state()["ssh_port"]), f"{vm.ssh_user}@127.0.0.1"]
