"""A start as a user asks for it (`start`, `up`), and a VM's first start from nothing: its image
is made first, after one line saying what that takes.

`vm.start` (and `vm.quick` and `vm.watch`, which start a stopped VM) come here for a guest
installed from an ISO when the VM has no disk (or only the blank one `vm.setup` makes)
and there is no golden image for it: the ISO is fetched (verified, resumable, with
progress), the guest installed over the serial console, provisioned with the config's
packages, checked with the mount suite and frozen as the golden image, which the start
then restores. Each of those is a cached checkpoint (building.py), so Ctrl-C at any
point keeps what was finished: the next start resumes a cut download and does not redo
a finished install. Until the image exists, `making.json` in the VM's folder says it is
being made, so a start after an interrupted provisioning makes it again rather than
booting the half-provisioned disk.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import List

from vmlab import atomic
from vmlab.errors import Busy, NotCached, PrerequisiteMissing
from vmlab.lab import images, lifecycle, snapshotting
from vmlab.lab.vm import GuestVM
from vmlab.lab.vmdir import OriginKind
from vmlab.qemu import accel
from vmlab.qemu.machine import MachineStatus, State

log = logging.getLogger(__name__)

MAKING = "making.json"  # in the VM's folder while its first image is being made


def start(vm: GuestVM) -> MachineStatus:
    """`vm.start` as a user says it: a suspended VM is resumed, one with no image gets it made
    first (see the module's docstring), and then it starts (lifecycle.start)."""
    if vm.vmdir.suspended_port() is not None:
        return snapshotting.resume(vm)
    if needed(vm):
        make(vm)
    return lifecycle.start(vm)


def up(vm: GuestVM) -> MachineStatus:
    """The edit-test loop's first turn: a VM that is not running is started (or resumed)
    instead of refused, so `make vm-quick` in a new project just works."""
    status = vm.machine.status(query_qemu=False)  # its pid and state file: no QMP session
    if status.state == State.RUNNING:
        return status
    log.info("VM %s is %s: starting it first", vm.name, vm.vmdir.status().state)
    accel.refuse_unusable(vm.config.accel)
    return start(vm)


def needed(vm: GuestVM) -> bool:
    """Whether starting `vm` must first make its image (see the module's docstring)."""
    if not vm.profile.install or images.golden_of(vm) is not None:
        return False
    origin = vm.vmdir.origin() if vm.vmdir.disk.exists() else None
    return origin is None or origin.kind == OriginKind.INSTALLER or (vm.vmdir.dir / MAKING).exists()


def make(vm: GuestVM) -> None:
    """Fetch, install, provision, check and freeze `vm`'s golden image, saying first what it takes.

    Cut off or failed, the VM is left with no disk (the phases that finished are in the
    cache): the next start makes it again from there."""
    from vmlab.lab import building  # all the install and build machinery: loaded by a first start only

    if vm.profile.iso:
        reachable(vm)
    log.info("%s", plan(vm))
    vm.vmdir.dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(vm.vmdir.dir / MAKING, f'{{"since": {time.time():.0f}}}\n')
    try:
        if vm.profile.iso:
            fetch(vm)  # first, and for this VM: no 'fallback' to another guest (that is vm.golden's)
        building.make_golden(vm, from_scratch=True)
    except BaseException:
        # the phases stopped what they started; their disk goes
        with contextlib.suppress(Busy), vm.stopped(soft_timeout=0):
            vm.vmdir.forget_disk()
        raise
    (vm.vmdir.dir / MAKING).unlink(missing_ok=True)


def reachable(vm: GuestVM) -> None:
    """Nothing, if the ISO is cached or a mirror answers; else the one error of an offline first start."""
    from vmlab.images import fetch as downloads  # http.client and urllib: for a first start only

    try:
        images.fetch_iso(vm, offline=True)
        return
    except NotCached:
        pass
    source = images.iso_source(vm)
    why = downloads.unreachable(source["mirrors"], source["path"], source["checksums"])
    if why:
        raise PrerequisiteMissing(f"VM {vm.name} cannot be made yet: its ISO {images.iso_name(vm)} is not in "
                                  "the cache and no mirror answers",
                                  hint=f"`invoke vm.fetch{images.vm_option(vm)}` downloads it once one does.",
                                  detail="  " + "\n  ".join(why))


def plan(vm: GuestVM) -> str:
    """The one line said before the first long step: each step still to do, and how long it
    takes as far as anyone has measured (the profile's `install.takes`), else what it depends on."""
    profile = vm.profile
    steps: List[str] = []
    if profile.iso:
        try:
            images.fetch_iso(vm, offline=True)
        except NotCached:
            size = profile.iso.size
            steps.append(f"download {images.iso_name(vm)}" + (f" ({size})" if size else "") + ", verified")
    elif profile.medium:
        steps.append(f"build the {profile.name} live CD from Debian packages")
    steps.append(f"install {profile.description.split(' installed')[0]} over the serial console")
    packages = [str(p) for p in vm.options.get("packages", [])]
    steps.append(f"install {', '.join(packages)}" if packages else "provision it")
    steps.append("check it with the mount suite and save it as the golden image (later starts restore it in "
                 "seconds)")
    takes = (profile.install.takes if profile.install else "") or \
        "how long depends on the network and on the accelerator"
    return (f"VM {vm.name} has no image yet; making it now, once: {'; '.join(steps)}. {takes}. Ctrl-C keeps "
            "every finished step for the next start")


def fetch(vm: GuestVM) -> None:
    """The VM's ISO, downloaded if need be; when every mirror fails, the command that fetches it later."""
    try:
        images.fetch_iso(vm)
    except PrerequisiteMissing as e:
        raise PrerequisiteMissing(f"VM {vm.name} cannot be made yet: its ISO {images.iso_name(vm)} could not be "
                                  "downloaded",
                                  hint=f"`invoke vm.fetch{images.vm_option(vm)}` tries again (a cut download "
                                       "resumes).", detail=str(e)) from None
