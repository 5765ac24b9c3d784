"""The lab: one project's VMs, and the verbs a user says about them (start, restore, golden, quick...).

`Lab` is a thin facade: it turns a VM name into its config and folder and hands
the work to the room that holds it:

    vmdir.py         one VM's folder: its QEMU, its disk's origin, its records
    images.py        what a disk starts from, and the keys that name each image
    lifecycle.py     start, stop, status, destroy, reset
    snapshotting.py  snapshot, restore, suspend, resume
    building.py      install, provision, verify, golden
    warming.py       the project's warm state on its golden image (`warm:`)
    firstrun.py      a VM's first start: its image made from nothing
    loop.py          sync, suites and their reports, ssh

When a verb fails after QEMU started, the error names a diagnostic bundle.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, cast

from vmlab import accel, diagnostics, fetch, golden, guests, keys, warm
from vmlab.cache import ArtefactCache
from vmlab.command import CommandResult
from vmlab.config import VM_NAME, LabConfig, SuiteConfig, VMConfig
from vmlab.errors import Busy, ConfigError, NoSuchSnapshot, NotRunning, PrerequisiteMissing, VmlabError
from vmlab.lab import building, firstrun, images, lifecycle, loop, snapshotting
from vmlab.lab.vmdir import VMDir
from vmlab.machine import MachineStatus, State
from vmlab.results import RunReport
from vmlab.snapshots import Snapshot
from vmlab.ssh import GuestSSH
from vmlab.sync.rsync import SyncResult

log = logging.getLogger(__name__)
Verb = TypeVar("Verb", bound=Callable[..., Any])


def with_diagnostics(verb: Verb) -> Verb:
    """If the verb fails after QEMU started, collect a diagnostic bundle and set it on the error
    (its `diagnostics`: the error then names it)."""

    @functools.wraps(verb)
    def wrapper(self: "Lab", name: Optional[str] = None, *args: Any, **kwargs: Any) -> Any:
        try:
            return verb(self, name, *args, **kwargs)
        except VmlabError as e:
            if e.diagnostics or e.no_diagnostics or isinstance(e, (ConfigError, Busy, NoSuchSnapshot, NotRunning)):
                raise  # a mistake in what was asked, or a bundle made already: nothing to diagnose
            try:
                vm = self.vm(name)
            except VmlabError:
                raise e from None
            vmdir = self.vmdir(vm)
            if not diagnostics.started(vmdir.machine):
                raise
            try:
                e.diagnostics = diagnostics.collect(vmdir.machine, lambda: self._diagnostic_ssh(vm, vmdir))
            except OSError as why:  # a full disk, say: the failure itself must still be told
                e.no_diagnostics = why.strerror or str(why)
            raise

    return cast(Verb, wrapper)


class Lab:
    """A project's VMs: its config, its state folder `vm/`, its keys, and the shared image cache."""

    def __init__(self, config: LabConfig):
        self.config = config
        self.cache = ArtefactCache(config.cache_dir)
        self.warned_tcg = False  # the TCG warning is said once per command

    # --- names ---

    def vm(self, name: Optional[str] = None) -> VMConfig:
        """A configured VM, or a clone: any other name, once the VM it clones has a golden image.

        A clone's origin is recorded in vm/<name>/clone.json (`vm.start --clone-of VM`);
        without one, a new name clones the first VM of the config.
        """
        if not name or name in self.config.vms:
            return self.config.vm(name)
        of = VMDir(name, self.config.state_dir / name).clone_of() if VM_NAME.fullmatch(name) else None
        if of:
            return dataclasses.replace(self.config.vm(of), name=name, ssh_port=0)
        first = self.config.vm()
        if VM_NAME.fullmatch(name) and ((self.config.state_dir / name / "disk.json").exists()
                                    or images.golden_of(self, first)):
            return dataclasses.replace(first, name=name, ssh_port=0)
        try:
            return self.config.vm(name)
        except ConfigError as e:
            raise ConfigError(f"{e}; or make a golden image (invoke vm.golden): any other name then "
                              f"starts a clone of VM {first.name!r}") from None

    def profile(self, vm: VMConfig) -> guests.Profile:
        """The guest profile a VM runs: the project's own folder of that name, else vmlab's."""
        return guests.load(vm.profile, self.config.guest_dirs)

    def vmdir(self, vm: VMConfig) -> VMDir:
        return VMDir(vm.name, self.config.state_dir / vm.name)

    def _at(self, name: Optional[str]) -> Tuple[VMConfig, VMDir]:
        vm = self.vm(name)
        return vm, self.vmdir(vm)

    def _to_run(self, name: Optional[str]) -> Tuple[VMConfig, VMDir]:
        """_at, for a verb that may start QEMU: an accelerator forced but unusable is refused
        first, before an image is built or a disk made for a VM that could not run."""
        vm, vmdir = self._at(name)
        accel.refuse_unusable(vm.accel)
        return vm, vmdir

    def keys(self) -> keys.LabKeys:
        """The lab's own SSH keys (vm/keys/), made on first use."""
        return keys.ensure(self.config.state_dir / "keys", comment=f"vmlab@{self.config.project_dir.name}")

    def clone(self, name: str, of: str) -> VMConfig:
        """Record that VM `name` is a clone of configured VM `of` (it starts from `of`'s golden image)."""
        origin = self.config.vm(of)
        if name in self.config.vms or not VM_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} cannot be a clone: it is a configured VM or not a valid VM name")
        if images.golden_of(self, origin) is None:
            raise PrerequisiteMissing(f"VM {of} has no golden image to clone: invoke vm.golden --vm {of} "
                                      "(or vm.golden-import)")
        VMDir(name, self.config.state_dir / name).mark_clone_of(of)
        return self.vm(name)

    # --- lifecycle ---

    @with_diagnostics
    def start(self, name: Optional[str] = None) -> MachineStatus:
        vm, vmdir = self._to_run(name)
        if vmdir.suspended_port() is not None:
            return self.resume(vm.name)
        if firstrun.needed(self, vm, vmdir):
            firstrun.make(self, vm, vmdir)
        return lifecycle.start(self, vm, vmdir)

    def up(self, name: Optional[str] = None) -> MachineStatus:
        """The edit-test loop's first turn: a VM that is not running is started (or resumed)
        instead of refused, so `make vm-quick` in a new project just works."""
        vm, vmdir = self._at(name)
        status = vmdir.machine.status(query_qemu=False)  # its pid and state file: no QMP session
        if status.state == State.RUNNING:
            return status
        log.info("VM %s is %s: starting it first", vm.name, vmdir.status().state)
        return self.start(vm.name)

    def stop(self, name: Optional[str] = None, soft_timeout: float = 60.0) -> str:
        return lifecycle.stop(self, *self._at(name), soft_timeout)

    def status(self, name: Optional[str] = None) -> MachineStatus:
        return self._at(name)[1].status()

    def statuses(self) -> List[MachineStatus]:
        return lifecycle.statuses(self)

    def destroy(self, name: Optional[str] = None) -> str:
        return lifecycle.destroy(self, *self._at(name))

    def reset(self, name: Optional[str] = None) -> str:
        return lifecycle.reset(self, *self._at(name))

    def demo(self, name: Optional[str] = None) -> List[str]:
        return lifecycle.demo(self, *self._at(name))

    # --- snapshots ---

    @with_diagnostics
    def snapshot(self, name: Optional[str] = None, snapshot: str = "clean") -> Snapshot:
        return snapshotting.snapshot(*self._at(name), snapshot)

    def list_snapshots(self, name: Optional[str] = None) -> List[Snapshot]:
        return snapshotting.listed(self._at(name)[1])

    def snapshot_delete(self, snapshot: str, name: Optional[str] = None) -> None:
        snapshotting.delete(*self._at(name), snapshot)

    @with_diagnostics
    def restore(self, name: Optional[str] = None, snapshot: str = "clean") -> Dict[str, float]:
        return snapshotting.restore(self, *self._to_run(name), snapshot)

    @with_diagnostics
    def suspend(self, name: Optional[str] = None) -> Snapshot:
        return snapshotting.suspend(self, *self._at(name))

    @with_diagnostics
    def resume(self, name: Optional[str] = None) -> MachineStatus:
        return snapshotting.resume(self, *self._to_run(name))

    # --- images ---

    def base(self, name: Optional[str] = None) -> Path:
        return images.base(self, self.vm(name)).path

    def fetch_iso(self, name: Optional[str] = None, offline: bool = False) -> fetch.FetchResult:
        return images.fetch_iso(self, self.vm(name), offline)

    def setup(self, name: Optional[str] = None, offline: bool = False) -> Dict[str, Any]:
        return images.setup(self, *self._at(name), offline)

    def golden_of(self, vm: VMConfig) -> Optional[golden.Golden]:
        return images.golden_of(self, vm)

    def warm_state(self, vm: VMConfig) -> Optional[warm.WarmState]:
        """The project's warm state of `vm` for its `warm:` as it is now (none: no warm-up, or not made yet)."""
        gold = images.golden_of(self, vm)
        return images.warm_state(self, vm, gold) if gold else None

    def golden_key(self, name: Optional[str] = None) -> str:
        return golden.golden_key(images.golden_inputs(self, self.vm(name)))

    def cache_listing(self) -> Dict[str, Any]:
        return images.cache_listing(self)

    def prune_isos(self) -> List[Path]:
        return images.prune_isos(self)

    # --- building ---

    @with_diagnostics
    def install(self, name: Optional[str] = None) -> Path:
        return building.install(self, *self._to_run(name))

    @with_diagnostics
    def provision(self, name: Optional[str] = None) -> str:
        return building.provision(self, *self._to_run(name))

    @with_diagnostics
    def verify(self, name: Optional[str] = None) -> RunReport:
        return building.verify(self, *self._to_run(name))

    @with_diagnostics
    def make_golden(self, name: Optional[str] = None, from_scratch: bool = False,
                    rewarm: bool = False) -> golden.Golden:
        return building.make_golden(self, *self._to_run(name), from_scratch, rewarm)

    # --- the loop ---

    @with_diagnostics
    def sync(self, name: Optional[str] = None) -> SyncResult:
        return loop.sync(self, *self._at(name))

    def run_suites(self, suites: List[SuiteConfig], name: Optional[str] = None,
                   restore_on_failure: bool = False, sync_first: bool = False, raw: bool = False) -> RunReport:
        return loop.run_suites(self, *self._at(name), suites, restore_on_failure, sync_first, raw=raw)

    def ssh(self, name: Optional[str] = None) -> GuestSSH:
        return loop.ssh(self, *self._at(name))

    def run(self, command: str, name: Optional[str] = None, **kwargs: Any) -> CommandResult:
        return loop.run(self, *self._at(name), command, **kwargs)

    def ssh_argv(self, name: Optional[str] = None) -> List[str]:
        return loop.ssh_argv(self, *self._at(name))

    def console_socket(self, name: Optional[str] = None) -> Path:
        """The serial console's socket of a running VM (`vm.console` attaches to it)."""
        vm, vmdir = self._at(name)
        lifecycle.require_running(vm, vmdir)
        return vmdir.machine.console_socket

    def _diagnostic_ssh(self, vm: VMConfig, vmdir: VMDir) -> GuestSSH:
        session = GuestSSH(vmdir.machine.state()["ssh_port"], vm.ssh_user, lifecycle.keys_for(self, vmdir))
        session.wait_ready(timeout=10)
        return session
