"""The verbs a user says (start, stop, restore, golden, ...), composed from the rooms.

A Lab is one project's set of VMs: its config, its state folder `vm/`, its keys,
and the cache of images it shares with other projects on the host.

Every VM disk records where it came from in `vm/<name>/disk.json`, its origin:
  {"image": folder}      an overlay on an image built from packages (booted)
  {"installed": folder}  an overlay on a disk a recipe installed (booted by its own loader)
  {"golden": folder, "fresh": bool}   a copy of a golden image's clean.qcow2; a fresh
                         one starts by restoring "clean", not by booting
  {"installer": iso}     a blank disk waiting for vm.install
The origin's folder holds the kernel files (if vmlab boots the kernel) and, for
installed and golden images, the SSH keys the guest trusts.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import secrets
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from vmlab import __version__, accel, builder, disk, fetch, golden, guests, host, keys, locks, recipe, results, seed
from vmlab import diagnostics, snapshots
from vmlab import suites as suite_runner
from vmlab import sync as rsync
from vmlab.cache import ArtefactCache, key_of
from vmlab.console import Console
from vmlab.config import VM_NAME, LabConfig, SuiteConfig, VMConfig, known_profiles
from vmlab.errors import (Busy, ConfigError, ConsoleError, GuestUnreachable, NoSuchSnapshot,
                          PrerequisiteMissing, ProvisionError, RunIncomplete, SnapshotError, SyncError, VmlabError)
from vmlab.machine import Machine, MachineSpec, MachineStatus, last_line, tail
from vmlab.openssh import SharedConnection
from vmlab.qmp import Monitor
from vmlab.snapshots import Snapshot
from vmlab.ssh import CommandResult, GuestSSH

log = logging.getLogger(__name__)

SUSPEND = "suspend"  # the snapshot vm.suspend saves and vm.resume loads
INSTALLED = "installed"  # cache kind: a disk a recipe installed, with the keys it trusts
MOUNT_SUITE = Path(__file__).resolve().parents[1] / "scripts" / "mount-suite.sh"


def with_diagnostics(verb: Callable[..., Any]) -> Callable[..., Any]:
    """If the verb fails after QEMU started, collect a diagnostic bundle and name it in the error."""

    @functools.wraps(verb)
    def wrapper(self: "Lab", name: Optional[str] = None, *args: Any, **kwargs: Any) -> Any:
        try:
            return verb(self, name, *args, **kwargs)
        except VmlabError as e:
            if getattr(e, "diagnostics", None) or isinstance(e, (ConfigError, Busy, NoSuchSnapshot)):
                raise  # a mistake in what was asked, or a bundle made already: nothing to diagnose
            try:
                vm = self.vm(name)
            except VmlabError:
                raise e from None
            machine = self.machine(vm)
            if not diagnostics.started(machine):
                raise
            try:
                folder = diagnostics.collect(machine, lambda: self._diagnostic_ssh(vm, machine))
            except OSError as why:  # a full disk, say: the failure itself must still be told
                failure = type(e)(f"{e}\n(no diagnostic bundle: {why.strerror or why})")
                failure.diagnostics = "none"  # type: ignore[attr-defined]
                raise failure from None
            failure = type(e)(f"{e}\nDiagnostics (console, QEMU log and state, dmesg, mounts): {folder}")
            failure.diagnostics = folder  # type: ignore[attr-defined]
            raise failure from None

    return wrapper


def _shorten(line: str, width: int = 80) -> str:
    """The end of a long console line, cut at a word, for one line of progress."""
    if len(line) <= width:
        return line
    return "..." + line[-width:].split(" ", 1)[-1]


class Lab:
    def __init__(self, config: LabConfig):
        self.config = config
        self.cache = ArtefactCache(config.cache_dir)
        self._warned_tcg = False

    # --- the parts of one VM ---

    def vm(self, name: Optional[str] = None) -> VMConfig:
        """A configured VM, or a clone: any other name, once the VM it clones has a golden image.

        A clone's origin is recorded in vm/<name>/clone.json (`vm.start --clone-of VM`);
        without one, a new name clones the first VM of the config.
        """
        if not name or name in self.config.vms:
            return self.config.vm(name)
        record = self.config.state_dir / name / "clone.json"
        if VM_NAME.match(name) and record.exists():
            return dataclasses.replace(self.config.vm(json.loads(record.read_text())["of"]), name=name, ssh_port=0)
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

    @staticmethod
    def _origin_folder(origin: Dict[str, Any]) -> Path:
        """The cached folder a disk's origin names (see the module's docstring)."""
        return Path(origin.get("golden") or origin.get("image") or origin.get("installed") or "")

    def keys_for(self, machine: Machine) -> keys.LabKeys:
        """A VM made from an installed or golden image trusts the keys that image was made with."""
        origin = self._origin(machine)
        for kind in ("golden", "installed"):
            if kind in origin:
                return keys.LabKeys(Path(origin[kind]) / "keys")
        return self.keys()

    # --- what a VM's disk starts from ---

    def base(self, vm: VMConfig) -> Dict[str, str]:
        """The cached disk a new VM starts from: {"image": folder} or {"installed": folder}.

        A profile with an `image:` section builds it from packages (on demand); one
        that installs from an ISO needs `vm.install` first (it takes minutes).
        """
        profile = guests.load(vm.profile)
        if profile.image:
            return {"image": str(builder.ensure(self.cache, profile, "image", self.options(profile)))}
        key, _ = self.installed_key(vm)
        if not self.cache.has(INSTALLED, key):
            raise PrerequisiteMissing(f"VM {vm.name}'s guest ({profile.name}) is not installed yet: "
                                      "invoke vm.install (or vm.golden --from-scratch)")
        return {"installed": str(self.cache.path(INSTALLED, key))}

    def options(self, profile: guests.Profile) -> Dict[str, Any]:
        return self.config.profile_options(profile.name)

    def base_key(self, vm: VMConfig) -> str:
        """What identifies the base without building it: the image's key or the installed one's."""
        profile = guests.load(vm.profile)
        if profile.image:
            return "image:" + builder.key(profile, "image", self.options(profile))
        return "installed:" + self.installed_key(vm)[0]

    def golden_inputs(self, vm: VMConfig) -> Dict[str, Any]:
        """Everything a golden image of `vm` depends on; its hash is the golden key."""
        profile = guests.load(vm.profile)
        return {"profile": profile.name, "memory_mib": vm.memory_mib, "cpus": vm.cpus,
                "base": self.base_key(vm), "provision": self.provision_key(vm)}

    def clone(self, name: str, of: str) -> VMConfig:
        """Record that VM `name` is a clone of configured VM `of` (it starts from `of`'s golden image)."""
        origin = self.config.vm(of)
        if name in self.config.vms or not VM_NAME.match(name):
            raise ConfigError(f"{name!r} cannot be a clone: it is a configured VM or not a valid VM name")
        if self.golden_of(origin) is None:
            raise PrerequisiteMissing(f"VM {of} has no golden image to clone: invoke vm.golden --vm {of} "
                                      "(or vm.golden-import)")
        folder = self.config.state_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "clone.json").write_text(json.dumps({"of": of}) + "\n")
        return self.vm(name)

    def golden_of(self, vm: VMConfig) -> Optional[golden.Golden]:
        try:
            return golden.find(self.cache, golden.golden_key(self.golden_inputs(vm)))
        except (ConfigError, PrerequisiteMissing):
            return None

    def _ensure_disk(self, vm: VMConfig, machine: Machine) -> Dict[str, Any]:
        """The VM's disk, made if missing: from the golden image if there is one, else from its base."""
        machine.dir.mkdir(parents=True, exist_ok=True)
        if not machine.disk.exists():
            gold = self.golden_of(vm)
            if gold:
                gold.new_disk(machine.disk)
                self._set_origin(machine, {"golden": str(gold.dir), "fresh": True})
            else:
                origin = self.base(vm)
                disk.create_overlay(machine.disk, self._origin_folder(origin) / "disk.qcow2", vm.disk_bytes)
                self._set_origin(machine, origin)
        origin = self._origin(machine)
        if "installer" in origin:
            raise PrerequisiteMissing(f"VM {vm.name}'s disk is blank (made by vm.setup): install the guest "
                                      "on it first (invoke vm.install)")
        folder = self._origin_folder(origin)
        if not origin or not folder.is_dir():
            raise PrerequisiteMissing(f"the image VM {vm.name}'s disk was made from is gone ({folder}); "
                                      f"`invoke vm.destroy --vm {vm.name}` and start again")
        return origin

    def _spec(self, vm: VMConfig, machine: Machine, paused: bool = False, ssh_port: Optional[int] = None) -> MachineSpec:
        """Disk, seed CD and accelerator for one start of `vm`."""
        folder = self._origin_folder(self._ensure_disk(vm, machine))
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
        choice = accel.choose(vm.accel, lambda: self._probe_kernel(folder), self.config.cache_dir)
        if vm.accel == "auto" and choice.accel == "tcg" and not self._warned_tcg:
            log.warning("%s", choice.reason)
            self._warned_tcg = True  # once per command is enough
        return choice

    # --- installing from an ISO ---

    def medium(self, vm: VMConfig) -> Path:
        """The install ISO: downloaded (DragonFly) or built from packages (the rehearsal)."""
        profile = guests.load(vm.profile)
        if profile.medium:
            return builder.ensure(self.cache, profile, "medium", self.options(profile)) / "live.iso"
        return self.fetch_iso(vm.name).path

    def installed_key(self, vm: VMConfig) -> tuple:
        """(key, inputs) of what `vm.install` makes: the medium, the recipe and its scripts, the disk size."""
        profile = guests.load(vm.profile)
        if not profile.install:
            raise PrerequisiteMissing(f"guest profile {profile.name!r} is not installed from an ISO")
        rec = recipe.load(profile.dir / profile.install["recipe"])
        if profile.medium:
            medium = "built:" + builder.key(profile, "medium", self.options(profile))
        else:  # the verified ISO's sha256, from the cache: asking never downloads
            medium = "sha256:" + self.fetch_iso(vm.name, offline=True).sha256
        inputs = {"profile": profile.name, "medium": medium, "disk_bytes": vm.disk_bytes}
        return key_of(inputs, rec.files), inputs

    @with_diagnostics
    def install(self, name: Optional[str] = None) -> Path:
        """Install the guest from its ISO onto a blank disk by its recipe; a cached checkpoint.

        The installed disk (read-only once made) and the keys it trusts are kept in the
        cache by key, so a failed provision, a new VM or another lab never installs again.
        """
        vm = self.vm(name)
        profile = guests.load(vm.profile)
        host.require(host.VM_TOOLS, "installing a guest")
        medium = self.medium(vm)
        key, inputs = self.installed_key(vm)
        if self.cache.has(INSTALLED, key):
            log.info("VM %s: the %s install %s is cached", vm.name, profile.name, key)
            return self.cache.path(INSTALLED, key)
        rec = recipe.load(profile.dir / profile.install["recipe"])
        return self.cache.get_or_build(INSTALLED, key, inputs, lambda out: self._run_install(vm, rec, medium, out),
                                       f"the {profile.name} install {key}")

    def _run_install(self, vm: VMConfig, rec: recipe.Recipe, medium: Path, out: Path) -> Dict[str, Any]:
        """Install onto a new blank disk of the VM, then move it into `out` (the checkpoint)."""
        machine = self.machine(vm)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            machine.stop(soft_timeout=0)
            machine.disk.unlink(missing_ok=True)  # a failed install's half-written disk is never reused
            machine.dir.mkdir(parents=True, exist_ok=True)
            disk.create_blank(machine.disk, vm.disk_bytes)
            self._set_origin(machine, {"installer": str(medium)})
        shutil.copytree(self.keys().dir, out / "keys", ignore=shutil.ignore_patterns(".lock"))
        installed_keys = keys.LabKeys(out / "keys")
        runner = Machine(f"{vm.name}-install", machine.dir / "install")
        runner.dir.mkdir(parents=True, exist_ok=True)
        scripts = {name: (rec.path.parent / name).read_bytes() for name in rec.seed}
        # One vCPU: an installer gains nothing from more, and a multi-vCPU guest under TCG can
        # lose a timer wakeup (an RCU stall that hung the rehearsal's live CD once in CI).
        spec = MachineSpec(name=runner.name, accel=self._accel(vm, out), memory_mib=vm.memory_mib, cpus=1,
                           disk=machine.disk, install_iso=medium,
                           seed_iso=seed.for_vm(runner.dir / "seed.iso", installed_keys, vm.name, scripts))
        started = time.monotonic()
        runner.launch(spec)
        log.info("VM %s: installing from %s over the serial console (%s; transcript %s)", vm.name, medium.name,
                 rec.description, runner.console_log)
        try:
            with Console(runner.console_socket, fails=rec.fails) as con:
                rec.run(con, {"vm": vm.name})
            if not runner.wait_stopped(120):
                raise ConsoleError(f"VM {vm.name}: the install powered off, but QEMU still runs after 120s")
        except ConsoleError as e:
            raise ConsoleError(f"VM {vm.name}: the install failed: {e}\nFull transcript: {runner.console_log}") from None
        finally:
            runner.stop(soft_timeout=0)
        shutil.move(str(machine.disk), out / "disk.qcow2")  # a rename when the cache shares the file system
        (machine.dir / "disk.json").unlink(missing_ok=True)  # the VM's next disk is an overlay on it
        os.chmod(out / "disk.qcow2", 0o444)
        log.info("VM %s: installed in %.0fs", vm.name, time.monotonic() - started)
        return {"medium": str(medium), "install_seconds": round(time.monotonic() - started, 1),
                "transcript": str(runner.console_log)}

    # --- provisioning ---

    def provision_key(self, vm: VMConfig) -> str:
        profile = guests.load(vm.profile)
        script = profile.provision.get("script")
        packages = sorted(self.options(profile).get("packages", []))
        return key_of({"packages": packages}, [profile.dir / script] if script else [])

    @with_diagnostics
    def provision(self, name: Optional[str] = None) -> str:
        """Boot the VM from its base and run the profile's provision script over SSH as root.

        It always starts again from the base (the installed or built disk), so a failed
        provision costs a provision, never an install. The VM is left running.
        """
        vm = self.vm(name)
        machine = self.machine(vm)
        profile = guests.load(vm.profile)
        key = self.provision_key(vm)
        marker = machine.dir / "provisioned.json"
        if marker.exists() and json.loads(marker.read_text()).get("key") == key and machine.disk.exists():
            log.info("VM %s is provisioned already (%s)", vm.name, key)
            return key
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            machine.stop(soft_timeout=0)
            marker.unlink(missing_ok=True)
            machine.disk.unlink(missing_ok=True)
            self._set_origin(machine, self.base(vm))  # not a golden copy: provisioning makes goldens
            folder = self._origin_folder(self._origin(machine))
            disk.create_overlay(machine.disk, folder / "disk.qcow2", vm.disk_bytes)
        self.start(vm.name)
        script = profile.provision.get("script")
        packages = [str(p) for p in self.options(profile).get("packages", [])]
        if script:
            log.info("VM %s: provisioning with %s %s", vm.name, Path(script).name, " ".join(packages))
            with self.ssh(vm.name) as session:
                session.put(profile.dir / script, "/tmp/vmlab-provision.sh")
                result = session.run(shlex.join(["sh", "/tmp/vmlab-provision.sh", *packages]),
                                     timeout=4 * 3600, stdout=sys.stdout, stderr=sys.stderr)
            if not result.succeeded:
                raise ProvisionError(f"VM {vm.name}: provisioning failed (exit {result.exit_status}); the "
                                     f"install is kept, `invoke vm.provision` tries again from it.\n"
                                     + "\n".join((result.stdout + result.stderr).splitlines()[-30:]))
        marker.write_text(json.dumps({"key": key, "packages": packages, "at": time.time()}) + "\n")
        return key

    @with_diagnostics
    def verify(self, name: Optional[str] = None) -> Dict[str, Any]:
        """Run vmlab's privileged mount suite in the running VM; a golden image must pass it."""
        vm = self.vm(name)
        machine = self.machine(vm)
        run_dir = results.new_run(machine.dir / "results")
        with GuestSSH(self.shared(vm, machine).port, "root", self.keys_for(machine)) as session:
            session.put(MOUNT_SUITE, "/tmp/vmlab-mount-suite.sh")
            started = time.monotonic()
            outcome = session.run("JUNIT=/tmp/vmlab-mount-suite.xml sh /tmp/vmlab-mount-suite.sh", timeout=900)
            (run_dir / "mounts.log").write_text(outcome.stdout + outcome.stderr)
            junit = run_dir / "mounts.junit.xml"
            try:
                session.fetch("/tmp/vmlab-mount-suite.xml", junit)
            except FileNotFoundError:
                junit = None
        result = results.SuiteResult("mounts", "passed" if outcome.succeeded else "failed", outcome.exit_status,
                                     time.monotonic() - started, run_dir / "mounts.log", junit)
        result.counts = results.count(result)
        report = results.write(run_dir, {"vm": dataclasses.asdict(vm), "results_dir": str(run_dir),
                                         "vmlab": __version__, "qemu": host.qemu_version()}, [result])
        if not report["passed"]:
            raise ProvisionError(f"VM {vm.name}: the mount suite failed; see {run_dir}\n"
                                 + "\n".join(outcome.stdout.splitlines()[-20:]))
        log.info("VM %s: the mount suite passed (%d checks, %.0fs); results in %s", vm.name,
                 result.counts["tests"], result.duration, run_dir)
        return report

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

    def cache_listing(self) -> Dict[str, Any]:
        """What the cache holds: ISOs, and every built artefact by kind (images, media, installs, goldens)."""
        root = self.cache.root
        kinds = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("isos", "logs", "debs")) \
            if root.is_dir() else []
        return {"cache": str(root), "isos": fetch.cached(root),
                "artefacts": {kind: self.cache.entries(kind) for kind in kinds if self.cache.entries(kind)}}

    def prune_isos(self) -> List[Path]:
        """Delete cached ISOs and partial downloads no profile's configured release uses."""
        keep = set()
        for profile in map(guests.load, known_profiles()):
            if profile.iso:
                release = self.options(profile).get("release") or profile.iso["release"]
                keep.add(Path(profile.iso["path"].format(release=release)).name)
        return fetch.prune(self.cache.root, keep)

    def setup(self, name: Optional[str] = None, offline: bool = False) -> Dict[str, Any]:
        """Everything a VM needs before its install: the ISO and the blank disk it is installed on
        (for a guest built from packages: its base image)."""
        vm = self.vm(name)
        machine = self.machine(vm)
        profile = guests.load(vm.profile)
        if profile.image:
            self._ensure_disk(vm, machine)
            return {"disk": str(machine.disk), "image": self._origin(machine)["image"]}
        medium = self.fetch_iso(vm.name, offline=offline).path if profile.iso else self.medium(vm)
        machine.dir.mkdir(parents=True, exist_ok=True)
        if not machine.disk.exists():
            disk.create_blank(machine.disk, vm.disk_bytes)
            self._set_origin(machine, {"installer": str(medium)})
        facts = {"disk": str(machine.disk), "medium": str(medium)}
        if profile.iso:
            facts["sha256"] = self.fetch_iso(vm.name, offline=True).sha256
        return facts

    def _probe_kernel(self, folder: Path) -> Path:
        """A Linux kernel for the KVM probe: the guest's own if it has one, else any cached one,
        else the Debian image's (built for it: a BSD guest brings no Linux kernel)."""
        for candidate in [folder / "vmlinuz", *sorted(self.cache.root.glob("*/*/vmlinuz"))]:
            if candidate.is_file():
                return candidate
        debian = guests.load("debian")
        return builder.ensure(self.cache, debian, "image", self.options(debian)) / "vmlinuz"

    # --- lifecycle ---

    @with_diagnostics
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
                spec = self._spec(vm, machine)
                try:  # from the launch to SSH answering, any failure or Ctrl-C stops QEMU again
                    status = machine.launch(spec)
                    log.info("VM %s: QEMU is up (pid %s, %s); waiting for SSH on 127.0.0.1:%s (console: %s)",
                             vm.name, status.pid, status.accel, status.ssh_port, machine.console_log)
                    self._wait_for_ssh(vm, machine, vm.boot_timeout).close()
                except BaseException:
                    machine.stop(soft_timeout=0)
                    raise
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
                               _shorten(last_line(machine.console_log)) or "(nothing yet)"))
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
        """Stop the VM and give it a new disk from where disks of its kind come from; images are untouched."""
        vm = self.vm(name)
        machine = self.machine(vm)
        self._discard_disk(vm, machine)
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            origin = self._ensure_disk(vm, machine)
        return f"new disk from the {next(iter(origin))} image"

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

    @with_diagnostics
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

    @with_diagnostics
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
        spec = self._spec(vm, machine, paused=True, ssh_port=ssh_port)
        try:
            machine.launch(spec)
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

    @with_diagnostics
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

    @with_diagnostics
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

    @with_diagnostics
    def make_golden(self, name: Optional[str] = None, from_scratch: bool = False) -> golden.Golden:
        """A golden image of the VM, provisioned and verified by the mount suite; the VM is left stopped.

        From scratch, the VM is first reset and every phase runs in turn (fetch or build
        the medium, install, provision), each reusing its cached checkpoint when its
        inputs have not changed. A cached golden image with the same key is reused.
        """
        vm = self.vm(name)
        machine = self.machine(vm)
        if from_scratch:
            profile = guests.load(vm.profile)
            if profile.iso and vm.fallback:
                try:
                    self.fetch_iso(vm.name)
                except PrerequisiteMissing as e:
                    log.warning("no ISO for VM %s can be had (%s); making the golden image of VM %s instead, "
                                "as its 'fallback' says", vm.name, str(e).splitlines()[0].rstrip(":"), vm.fallback)
                    return self.make_golden(vm.fallback, from_scratch=True)
            self._discard_disk(vm, machine)
            if profile.install:
                self.install(vm.name)
        inputs = self.golden_inputs(vm)
        key = golden.golden_key(inputs)
        gold = golden.find(self.cache, key)
        if gold:
            log.info("golden image %s (same inputs) is cached in %s: VM %s now runs from it", key, gold.dir, vm.name)
        else:
            self.provision(vm.name)
            if machine.pid() is None:
                self.start(vm.name)
            self.verify(vm.name)
            with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
                log.info("VM %s: powering off so its disk is consistent", vm.name)
                self._close_shared(vm, machine)
                machine.stop(soft_timeout=120)
                folder = self._origin_folder(self._origin(machine))
                kernel_files = {f.name: f for f in self._boot_files(vm, folder).values() if isinstance(f, Path)}
                gold = golden.make(self.cache, key, inputs, machine.disk, kernel_files, self.keys_for(machine),
                                   lambda clean: self._snapshot_clean(vm, clean))
        self._discard_disk(vm, machine)  # captured in the golden image; vm.start now restores from it
        log.info("VM %s: golden image %s is ready; `invoke vm.start --vm %s` starts from it by restoring "
                 "'clean'", vm.name, gold.key, vm.name)
        return gold

    def _discard_disk(self, vm: VMConfig, machine: Machine) -> None:
        """Stop the VM and forget its disk (and that it was provisioned); images are untouched."""
        with locks.held(machine.dir / ".lock", f"VM {vm.name}", wait=False):
            self._close_shared(vm, machine)
            machine.stop(soft_timeout=60)
            for name in ("disk.qcow2", "disk.json", "provisioned.json", "synced.json", f"{SUSPEND}.json"):
                (machine.dir / name).unlink(missing_ok=True)

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

    def _diagnostic_ssh(self, vm: VMConfig, machine: Machine) -> GuestSSH:
        session = GuestSSH(machine.state()["ssh_port"], "root", self.keys_for(machine))
        session.wait_ready(timeout=10)
        return session

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

    @with_diagnostics
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
                   restore_on_failure: bool = False, sync_first: bool = False) -> Dict[str, Any]:
        """Run suites in order into a new results folder; returns the report (see results.py).

        After a privileged suite fails or times out, `restore_on_failure` puts the VM
        back to its "clean" snapshot so the next run starts clean. `sync_first` syncs
        the project first, within the first suite's session and only if the guest's copy
        may differ (see sync.SyncGate): the edit-test loop's fast path.
        """
        vm = self.vm(name)
        machine = self.machine(vm)
        conn = self.shared(vm, machine)
        run_dir = results.new_run(machine.dir / "results")
        run_as_root = "" if vm.ssh_user == "root" else guests.load(vm.profile).privileged
        guest = self._guest_facts(conn, machine)
        meta = {"vm": dataclasses.asdict(vm), "guest": {k: guest[k] for k in ("os", "kernel")}, "vmlab": __version__,
                "qemu": guest["qemu"], "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "results_dir": str(run_dir)}
        done: List[results.SuiteResult] = []
        gate = rsync.SyncGate(conn, self.config.project_dir, self.config.sync, machine.dir / "synced.json") \
            if sync_first else None
        for suite in suites:
            log.info("suite %s: %s%s", suite.name, suite.command, " (as root)" if suite.privileged else "")
            try:
                result = suite_runner.run(conn, suite, self.config.sync.guest_dir, run_dir, run_as_root, gate=gate)
                gate = None
            except GuestUnreachable as e:
                results.write(run_dir, meta, done)
                raise RunIncomplete(f"VM {vm.name}: SSH stopped answering during suite {suite.name}: {e}; "
                                    f"results so far in {run_dir}") from None
            except SyncError as e:
                raise RunIncomplete(f"suite {suite.name} did not run: the project could not be synced first.\n{e}") \
                    from None
            done.append(result)
            if not result.passed and suite.privileged and restore_on_failure:
                log.info("suite %s %s: restoring VM %s to 'clean'", suite.name, result.status, vm.name)
                self.restore(vm.name, golden.SNAPSHOT)
                conn = self.shared(vm, machine)
        return results.write(run_dir, meta, done)

    def _guest_facts(self, conn: SharedConnection, machine: Machine) -> Dict[str, str]:
        """The guest's OS and kernel, and QEMU's version: asked once per QEMU process."""
        cache = machine.dir / "guest.json"
        pid = machine.pid()
        try:
            facts = json.loads(cache.read_text())
            if facts.get("pid") == pid and "qemu" in facts:
                return facts
        except (OSError, ValueError):
            pass
        out = io.BytesIO()
        conn.run("uname -s; uname -r", output=out, timeout=60)
        os_name, _, kernel = out.getvalue().decode(errors="replace").strip().partition("\n")
        facts = {"pid": pid, "os": os_name, "kernel": kernel, "qemu": host.qemu_version()}
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
