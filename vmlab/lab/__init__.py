"""The lab: one project's VMs by name, and the rooms that hold what a user says about a VM.

`Lab` turns a VM name (a configured VM, or a clone) into its `GuestVM`, made once per
command, and holds what the project's VMs share (`Project`: the config, the image cache,
the lab's keys). Every verb is a function of a room that takes the VM (or a method of it):

    project.py       what a project's VMs share: its config, the image cache, the lab's keys
    vmdir.py         one VM's folder: its QEMU, its disk's origin, its records
    vm.py            one VM (GuestVM): its resolved config and profile, keys, SSH; stop
    images.py        what a disk starts from, and the keys that name each image
    lifecycle.py     start (a boot, or a restore of a fresh golden copy), status, destroy, reset
    snapshotting.py  snapshot, restore, suspend, resume
    loop.py          sync, suites and their reports
    warming.py       the project's warm state on its golden image (`warm:`)
    building.py      install, provision, verify, golden
    firstrun.py      a start as a user asks for it: resumed, or its image made first, or booted

A VM used as a context manager (`with lab.vm(name) as vm:`) names a diagnostic bundle in
the error when a verb fails after QEMU started.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from vmlab.config import VM_NAME, VMConfig
from vmlab.errors import ConfigError, PrerequisiteMissing
from vmlab.lab import images
from vmlab.lab.project import Project
from vmlab.lab.vm import GuestVM
from vmlab.lab.vmdir import VMDir
from vmlab.qemu import accel

__all__ = ["GuestVM", "Lab", "Project"]


class Lab(Project):
    """A project's VMs by name: its config, its state folder `vm/`, its keys, and the shared image cache."""

    def vm(self, name: Optional[str] = None, starts: bool = False) -> GuestVM:
        """A configured VM, or a clone: any other name, once the VM it clones has a golden image.

        A clone's origin is recorded in vm/<name>/clone.json (`vm.start --clone-of VM`);
        without one, a new name clones the first VM of the config. For a verb that `starts`
        QEMU, an accelerator forced but unusable is refused first, before an image is built
        or a disk made for a VM that could not run.
        """
        vm = GuestVM(self, self._config(name))
        if starts:
            accel.refuse_unusable(vm.config.accel)
        return vm

    def _config(self, name: Optional[str]) -> VMConfig:
        if not name or name in self.config.vms:
            return self.config.vm(name)
        of = VMDir(name, self.config.state_dir / name).clone_of() if VM_NAME.fullmatch(name) else None
        if of:
            return dataclasses.replace(self.config.vm(of), name=name, ssh_port=0)
        first = self.config.vm()
        if VM_NAME.fullmatch(name) and ((self.config.state_dir / name / "disk.json").exists()
                                    or images.golden_of(GuestVM(self, first))):
            return dataclasses.replace(first, name=name, ssh_port=0)
        try:
            return self.config.vm(name)
        except ConfigError as e:
            raise ConfigError(f"{e}; or make a golden image (invoke vm.golden): any other name then "
                              f"starts a clone of VM {first.name!r}") from None

    def clone(self, name: str, of: str) -> GuestVM:
        """Record that VM `name` is a clone of configured VM `of` (it starts from `of`'s golden image)."""
        origin = GuestVM(self, self.config.vm(of))
        if name in self.config.vms or not VM_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} cannot be a clone: it is a configured VM or not a valid VM name")
        if images.golden_of(origin) is None:
            raise PrerequisiteMissing(f"VM {of} has no golden image to clone: invoke vm.golden --vm {of} "
                                      "(or vm.golden-import)")
        VMDir(name, self.config.state_dir / name).mark_clone_of(of)
        return self.vm(name)
