"""One VM as a command sees it: its resolved config, its guest profile (read once), its folder
and QEMU, the keys its guest trusts, its SSH port, and the ways in and out of it.

`Lab.vm(name)` makes one per command; every room of the lab (images, lifecycle,
snapshotting, loop, building, warming, firstrun) takes it. Like QEMU's own
python/qemu/machine `QEMUMachine`, what needs the guest running checks so first and says
which state it found (NotRunning), and the way out is one method: `stopped()` takes the
VM's lock, closes the shared SSH connection, then stops QEMU (`power_off`, for a caller
that holds the lock already). Used as a context manager (`with lab.vm(name) as vm:`), a verb
that fails after QEMU started names a diagnostic bundle in its error.
"""

from __future__ import annotations

import functools
import logging
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Type, TypeVar, cast

from vmlab import guests, host
from vmlab.command import CommandResult
from vmlab.config import VMConfig, default_cache_dir
from vmlab.errors import Busy, ConfigError, NoSuchSnapshot, NotRunning, VmlabError
from vmlab.lab.project import Project
from vmlab.lab.vmdir import VMDir
from vmlab.qemu import accel, diagnostics
from vmlab.qemu.machine import State
from vmlab.remote.keys import LabKeys
from vmlab.remote.openssh import SharedConnection
from vmlab.remote.ssh import GuestSSH
from vmlab.remote.transport import Root, Transport

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # both SSH clients are one Transport (remote/transport.py): mypy checks that here
    _CLIENTS: Tuple[Type[Transport], ...] = (SharedConnection, GuestSSH)

Method = TypeVar("Method", bound=Callable[..., Any])


def running(method: Method) -> Method:
    """A method that needs the VM's QEMU running (as qemu.qmp's `@require(Runstate.RUNNING)`):
    refused with NotRunning, which names the state the VM is in, before anything is tried."""

    @functools.wraps(method)
    def guarded(self: "GuestVM", *args: Any, **kwargs: Any) -> Any:
        self.require_running()
        return method(self, *args, **kwargs)

    return cast(Method, guarded)


class GuestVM:
    """One VM of a project: `config` (vmlab.yaml's, resolved: a clone's is its origin's), `profile`,
    `vmdir` (its folder and records) and `machine` (its QEMU)."""

    def __init__(self, project: Project, config: VMConfig):
        self.project = project
        self.config = config
        self.name = config.name
        self.vmdir = VMDir(config.name, project.config.state_dir / config.name)
        self.machine = self.vmdir.machine
        self._accel: Optional[accel.AccelChoice] = None

    def __repr__(self) -> str:
        return f"GuestVM({self.name!r})"

    @cached_property
    def profile(self) -> guests.Profile:
        """The guest profile it runs (profile.yaml, read once): the project's own folder of that name, else vmlab's."""
        return guests.load(self.config.profile, self.project.config.guest_dirs)

    @property
    def options(self) -> Dict[str, Any]:
        """What vmlab.yaml sets for its profile (`profiles: {NAME: {...}}`)."""
        return self.project.config.profile_options(self.profile.name)

    def keys(self) -> LabKeys:
        """The keys its guest trusts: a VM made from an installed or golden image trusts the keys
        that image was made with, any other the lab's own."""
        origin = self.vmdir.origin()
        return (origin.keys if origin else None) or self.project.keys()

    @property
    def ssh_port(self) -> int:
        """The host port its running QEMU forwards to the guest's sshd."""
        return int(self.machine.state()["ssh_port"])

    def lock(self) -> AbstractContextManager[None]:
        return self.vmdir.lock()

    def accelerator(self, folder: Path) -> accel.AccelChoice:
        """The accelerator it runs under, chosen once per command: proven with a Linux kernel at hand
        (`folder`'s, the cache's, the host's), never built for (see qemu/accel.py); TCG by default is said once."""
        if self._accel is None:
            self._accel = accel.choose(self.config.accel, lambda: self.project.probe_kernel(folder),
                                       default_cache_dir())  # the host's verdict, whatever cache_dir says
            if self.config.accel == "auto" and self._accel.accel == "tcg":
                log.warning("%s", self._accel.reason)
        return self._accel

    # --- its state, guarded ---

    def require_running(self) -> None:
        """NotRunning, naming the state QEMU is in, unless it runs (its pid and state file: no QMP)."""
        state = self.machine.status(query_qemu=False).state
        if state != State.RUNNING:
            raise NotRunning(self.name, state)

    def power_off(self, soft_timeout: float = 60.0) -> str:
        """Close the shared SSH connection, then stop QEMU (the caller holds the VM's lock); how it stopped."""
        self.close_connection()
        return self.machine.stop(soft_timeout)

    @contextmanager
    def stopped(self, soft_timeout: float = 60.0) -> Iterator[str]:
        """Under the VM's lock: its SSH connection closed, then QEMU stopped (how: the value); the
        lock is held for what the caller does to the stopped VM (its disk, its folder)."""
        with self.lock():
            yield self.power_off(soft_timeout)

    def stop(self, soft_timeout: float = 60.0) -> str:
        if not self.vmdir.dir.exists():
            return "was not running (never started)"
        with self.stopped(soft_timeout) as how:
            return how

    # --- talking to the guest ---

    @property
    def root(self) -> Root:
        """How a command becomes root in its guest: as it is for ssh_user root, else through the
        profile's `privileged` prefix (the profile is read only then)."""
        user = self.config.ssh_user
        return Root(user, "" if user == "root" else self.profile.privileged)

    def connection(self) -> SharedConnection:
        """The multiplexed OpenSSH connection to the running VM (see remote/openssh.py for why): the
        edit-test loop's transport (remote/transport.py)."""
        state = self.machine.status(query_qemu=False)
        if state.state != State.RUNNING or state.ssh_port is None:
            raise NotRunning(self.name, state.state)
        return SharedConnection(self.vmdir.dir, state.ssh_port, self.config.ssh_user, self.keys(),
                                self.root.privileged)

    def close_connection(self) -> None:
        """Close the shared connection; a stop or restore kills the guest's end of it anyway."""
        port = self.machine.state().get("ssh_port")
        if port:
            SharedConnection(self.vmdir.dir, port, self.config.ssh_user, self.keys()).close()

    @running
    def ssh(self, timeout: float = 30) -> GuestSSH:
        """A connected SSH session (paramiko) to the running VM: `vmlab ssh -c`'s transport."""
        session = GuestSSH(self.ssh_port, self.config.ssh_user, self.keys(), privileged=self.root.privileged)
        session.wait_ready(timeout=timeout)
        return session

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        with self.ssh() as session:
            return session.run(command, **kwargs)

    @running
    def ssh_argv(self) -> List[str]:
        """The OpenSSH command line for an interactive shell in the VM."""
        host.require(["ssh"], "an interactive shell")
        return [host.which("ssh") or "ssh", *self.keys().openssh_options(),
                "-p", str(self.ssh_port), "-l", self.config.ssh_user, "127.0.0.1"]

    @running
    def console_socket(self) -> Path:
        """The serial console's socket of the running VM (`vm.console` attaches to it)."""
        return self.machine.console_socket

    # --- when a verb fails ---

    def __enter__(self) -> "GuestVM":
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """A verb run in `with vm:` that failed after QEMU started gets a diagnostic bundle, set on
        the error (its `diagnostics`: the error then names it)."""
        if not isinstance(error, VmlabError) or error.diagnostics or error.no_diagnostics \
                or isinstance(error, (ConfigError, Busy, NoSuchSnapshot, NotRunning)):
            return  # not vmlab's, a mistake in what was asked, or a bundle made already: nothing to diagnose
        if not diagnostics.started(self.machine):
            return
        try:
            error.diagnostics = diagnostics.collect(self.machine, self._diagnostic_ssh)
        except OSError as why:  # a full disk, say: the failure itself must still be told
            error.no_diagnostics = why.strerror or str(why)

    def _diagnostic_ssh(self) -> GuestSSH:
        session = GuestSSH(self.ssh_port, self.config.ssh_user, self.keys())
        session.wait_ready(timeout=10)
        return session
