"""A VM's life: start (a boot, or a restore for a fresh golden copy), status, destroy, reset (the stop is
GuestVM.stopped, vm.py).

A start is all or nothing: the command returns once SSH runs a command and the
guest is set right (clock, randomness, name); any failure or Ctrl-C on the way
stops QEMU again (Machine.launched), so no half-started VM is left, and a fresh
golden copy stays fresh until a start of it has succeeded.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from vmlab import host
from vmlab.errors import GuestUnreachable, SnapshotError
from vmlab.images import golden
from vmlab.install import seed
from vmlab.lab import images
from vmlab.lab.project import Project
from vmlab.lab.vm import GuestVM
from vmlab.lab.vmdir import SUSPEND, VMDir
from vmlab.progress import Heartbeat
from vmlab.qemu import agent, snapshots
from vmlab.qemu.machine import MachineSpec, MachineStatus, State, console_now, tail
from vmlab.qemu.qmp import Monitor
from vmlab.remote.openssh import Claim, SharedConnection
from vmlab.remote.ssh import GuestSSH

log = logging.getLogger(__name__)
CLOCK_ASK = "vmlab-after-restore-clock"  # the line by which the guest asks the host for its clock
CLOCK_TOLERANCE = 0.25  # seconds the guest's clock may be off after a restore through the agent
AGENT_WAIT = 10.0  # seconds a restored guest's agent has to answer before SSH is used instead


def spec(vm: GuestVM, paused: bool = False, ssh_port: Optional[int] = None) -> MachineSpec:
    """Disk, seed CD and accelerator for one start of `vm`."""
    folder = images.ensure_disk(vm).path
    return MachineSpec(
        name=vm.name, accel=vm.accelerator(folder), memory_mib=vm.config.memory_mib, cpus=vm.config.cpus,
        disk=vm.vmdir.disk, paused=paused, ssh_port=vm.config.ssh_port if ssh_port is None else ssh_port,
        guest_agent=bool(vm.profile.agent),
        seed_iso=seed.for_vm(vm.vmdir.dir / "seed.iso", vm.keys(), vm.name),
        **images.boot_files(vm, folder),
    )


def start(vm: GuestVM) -> MachineStatus:
    """Start the VM and return once SSH answers: a boot, or a restore for a fresh golden copy."""
    host.require(host.VM_TOOLS, "starting a VM")
    with vm.lock():
        current = vm.machine.status(query_qemu=False)
        if current.state == State.RUNNING:
            log.info("VM %s is already running (ssh port %s)", vm.name, current.ssh_port)
            return vm.machine.status()
        if current.state == State.CRASHED:
            log.warning("VM %s: %s", vm.name, current.detail.split(";")[0] + "; cleaning up")
            vm.machine.clean()
        started = time.monotonic()
        origin = images.ensure_disk(vm)
        if origin.fresh:
            log.info("VM %s: a fresh copy of golden image %s: restored to %r, not booted",
                     vm.name, origin.path.name, golden.SNAPSHOT)
            start_from_snapshot(vm, golden.SNAPSHOT, over_ssh=True)
            vm.vmdir.set_origin(dataclasses.replace(origin, fresh=False))
        else:
            with vm.machine.launched(spec(vm)) as status:
                log.info("VM %s: QEMU is up (pid %s, %s); waiting for SSH on 127.0.0.1:%s (console: %s)",
                         vm.name, status.pid, status.accel, status.ssh_port, vm.machine.console_log)
                wait_for_ssh(vm, vm.config.boot_timeout).close()
        status = vm.machine.status()
        status.extra["boot_seconds"] = round(time.monotonic() - started, 1)
        log.info("VM %s is up: ssh 127.0.0.1:%s, %s, pid %s (%.1fs)", vm.name, status.ssh_port,
                 status.accel, status.pid, status.extra["boot_seconds"])
        ready_for_next_command(vm)
        return status


def start_from_snapshot(vm: GuestVM, snapshot: str, ssh_port: Optional[int] = None, over_ssh: bool = False) -> None:
    """Start QEMU paused, load `snapshot`, run it; returns once the guest is set right.

    `over_ssh`: set it right over SSH even if it has an agent, which shows SSH lets this VM's
    user in: the first start of a fresh golden copy, which stays fresh if it does not.

    (QEMU's own -loadvm refuses snapshots saved by the snapshot-save job: QEMU issue #344.)
    A start from any snapshot but the suspended state ends the suspension: that state is dropped.
    """
    vm.machine.clean()
    with vm.machine.launched(spec(vm, paused=True, ssh_port=ssh_port)):
        with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
            try:
                snapshots.load(mon, vm.vmdir.disk, snapshot)
            except SnapshotError:
                mismatch = _memory_mismatch(vm, snapshot)
                if mismatch:  # what QEMU said ("Error -22 while loading VM state") does not tell this
                    raise SnapshotError(mismatch) from None
                raise
            mon.command("cont")
        after_restore(vm, vm.config.boot_timeout, over_ssh=over_ssh)
    if snapshot != SUSPEND and vm.vmdir.suspended_port() is not None:
        forget_suspended(vm)


def _memory_mismatch(vm: GuestVM, snapshot: str) -> str:
    """Why a snapshot did not load into a new QEMU, if it is that its RAM is another size than
    the VM's `memory:` now (QEMU says only "Error -22 while loading VM state"); else ''."""
    try:
        said = vm.machine.qemu_log.read_text(errors="replace")
    except OSError:
        return ""
    # QEMU 7.2: "Size mismatch: pc.ram: 0x30000000 != 0x40000000" (saved, then this QEMU's); older: "Length ... in"
    found = re.search(r"(?:Size|Length) mismatch: pc\.ram: (0x[0-9a-f]+)(?: in)? != (0x[0-9a-f]+)", said)
    if not found:
        return ""
    saved = int(found.group(1), 16) >> 20
    return (f"VM {vm.name}: snapshot {snapshot!r} holds {saved} MiB of RAM, and the VM has {vm.config.memory_mib} MiB "
            f"now (`memory:` in vmlab.yaml): set memory back to {saved} to restore it, or start the VM afresh "
            f"(vmlab reset --vm {vm.name}); it is stopped")


def forget_suspended(vm: GuestVM) -> None:
    """Drop a saved suspend state of the running VM: it started from something else since."""
    vm.vmdir.clear_suspended()
    with Monitor(vm.machine.qmp_socket, timeout=60) as mon:
        if any(s.name == SUSPEND for s in snapshots.listed(vm.vmdir.disk)):
            snapshots.delete(mon, vm.vmdir.disk, SUSPEND)
    log.info("VM %s: its suspended state was dropped (it runs from another state now)", vm.name)


def booting(ssh: GuestSSH, console_log: Path) -> Heartbeat:
    """Progress lines while `ssh` waits for a guest: why it is not up yet, and its console's last line."""
    return Heartbeat(log, lambda t: f"  still booting after {t:.0f}s ({ssh.last_error}); console: "
                                    f"{console_now(console_log)}")


def wait_for_ssh(vm: GuestVM, timeout: float) -> GuestSSH:
    """A session once SSH runs a command; the error shows the console's last lines."""
    machine = vm.machine
    ssh = GuestSSH(vm.ssh_port, vm.config.ssh_user, vm.keys())
    try:
        with booting(ssh, machine.console_log):
            ssh.wait_ready(timeout, check=machine.assert_alive)
    except GuestUnreachable as e:
        raise GuestUnreachable(f"VM {vm.name}: {e.message}.", hint=e.hint,
                               detail=f"Last console lines ({machine.console_log}):\n{tail(machine.console_log, 15)}"
                               ) from None
    return ssh


def after_restore(vm: GuestVM, timeout: float, over_ssh: bool = False, after: str = "the restore") -> None:
    """Set the guest right after a restore: its clock went back to the snapshot's, its random
    pool repeats, a clone has its origin's name; the profile's after_restore command fixes all
    three, as root.

    A guest with QEMU's guest agent (profile `agent: qemu-ga`) runs it through the agent
    (~0.25 s under TCG, against ~0.8 s for an SSH session); the guest's sshd was answering when
    the snapshot was taken and comes back with it, and the command's last step opens SSH in the
    background for the next one (ready_for_next_command). Otherwise, or if the agent does not
    answer, the line goes over SSH, and shows that SSH answers. `after`: what stopped the guest's
    clock, for messages (a snapshot's save stops it too)."""
    if vm.profile.agent and not over_ssh and _set_right_through_agent(vm, timeout, after):
        return
    _set_right_over_ssh(vm, timeout, after)


def ready_for_next_command(vm: GuestVM) -> None:
    """A start, restore or resume's last step: the shared SSH connection opens in the background
    while the user types the next command (which waits for it if it comes first). Last, so that
    a command cut off before it leaves no ssh behind."""
    vm.connection().open_in_background()


def _set_right_through_agent(vm: GuestVM, timeout: float, after: str) -> bool:
    """The after-restore command through the guest agent; False if the agent does not answer
    within AGENT_WAIT seconds (a snapshot taken before it ran, an agent that died)."""
    if not agent.answers(vm.machine.agent_socket, AGENT_WAIT):
        log.warning("VM %s: the guest agent did not answer within %.0fs after %s; setting the guest right "
                    "over SSH instead (a VM made before its profile had the agent: `vmlab reset` makes it afresh)",
                    vm.name, AGENT_WAIT, after)
        return False
    template = vm.profile.after_restore
    # The guest runs the line some 0.2-0.4 s after it is sent (its first process since the restore,
    # under TCG), so the time sent is ahead by what that took at the last restore; the agent's own
    # clock reading (no process) says how far off it came out, and while that is more than
    # CLOCK_TOLERANCE the line runs again (a second process starts in ~0.1 s).
    lead = vm.vmdir.restore_lead()
    for attempt in range(3 if template else 0):
        now = time.time() + lead
        line = template.format(epoch=f"{now:.3f}", epoch_int=int(round(now)), entropy=secrets.token_hex(64),
                               hostname=vm.name)
        result = agent.run(vm.machine.agent_socket, line, timeout)
        if result.exit_status != 0:
            raise SnapshotError(f"VM {vm.name}: setting the guest right after {after} (clock, randomness, name) "
                                f"failed (exit {result.exit_status}, through the guest agent):",
                                detail=result.output.strip())
        lag = agent.clock_lag(vm.machine.agent_socket)
        if attempt == 0:
            vm.vmdir.set_restore_lead(max(0.0, min(2.0, lead + lag)))
        if abs(lag) < CLOCK_TOLERANCE:
            break
        lead = 0.0  # the next process starts at once
    return True


def _set_right_over_ssh(vm: GuestVM, timeout: float, after: str) -> None:
    """The after-restore command over the VM's shared OpenSSH connection (remote/openssh.py),
    which it opens: the next loop turn finds it open instead of paying a handshake of its own."""
    machine = vm.machine
    conn = vm.connection()
    template = vm.profile.after_restore
    deadline = time.monotonic() + timeout
    last_error = "no attempt yet"
    # The clock is read when the guest asks for it, once SSH is up: a time put in the command
    # line would be behind by the handshake (a second or more on a busy host).
    line = "true"
    if template:
        line = vm.root.shell(f"echo {CLOCK_ASK}; read -r vmlab_epoch vmlab_epoch_int && " + template.format(
            epoch="$vmlab_epoch", epoch_int="$vmlab_epoch_int", entropy=secrets.token_hex(64), hostname=vm.name))

    def clock(said: str) -> Optional[Claim]:
        if said.strip() != CLOCK_ASK:
            return None
        now = time.time()
        return Claim(f"{now:.3f} {int(round(now))}\n".encode())

    with Heartbeat(log, lambda t: f"  SSH not answering after {t:.0f}s ({last_error}); console: "
                                  f"{console_now(machine.console_log)}"), _closed_if_cut_off(conn):
        while True:
            output = io.BytesIO()
            try:
                status = conn.stream(line, output=output, timeout=30, handshake=clock if template else None)
                break
            except GuestUnreachable as e:  # sshd not answering yet (a busy guest, or one still booting)
                last_error = (e.detail or e.message).strip().splitlines()[-1][-200:]  # ssh's own last word
                if "Permission denied" in last_error:
                    last_error = f"authentication failed ({last_error}): the guest does not accept this lab's key"
            machine.assert_alive()
            if time.monotonic() > deadline:
                raise GuestUnreachable(f"VM {vm.name}: SSH on 127.0.0.1:{conn.port} did not answer within "
                                       f"{timeout:.0f}s after {after} (last error: {last_error}).",
                                       detail=f"Last console lines ({machine.console_log}):\n"
                                              f"{tail(machine.console_log, 15)}")
            time.sleep(0.2)
    if status != 0:
        said = output.getvalue().decode(errors="replace").strip()
        raise SnapshotError(f"VM {vm.name}: setting the guest right after {after} (clock, randomness, name) "
                            f"failed ({'timed out' if status == -1 else f'exit {status}'}):", detail=said)


@contextmanager
def _closed_if_cut_off(conn: SharedConnection) -> Iterator[None]:
    """The connection this check opens is closed if the command is cut off (Ctrl-C, SIGTERM):
    an interrupted restore leaves no SSH control master behind (the one before it died with it)."""
    try:
        yield
    except KeyboardInterrupt:
        conn.close(cut_off=True)
        raise


def statuses(project: Project) -> List[MachineStatus]:
    """Every configured VM, and every VM folder in vm/ (clones, and VMs of an earlier config)."""
    state_dir = project.config.state_dir
    names = list(project.config.vms)
    if state_dir.is_dir():
        names += sorted(p.name for p in state_dir.iterdir() if (p / "disk.json").exists() and p.name not in names)
    return [VMDir(n, state_dir / n).status() for n in names]


def destroy(vm: GuestVM) -> str:
    """Stop the VM and delete its folder (disk, logs). Cached and golden images are kept."""
    with vm.stopped(soft_timeout=0) as how:
        shutil.rmtree(vm.vmdir.dir, ignore_errors=True)
    return how


def discard_disk(vm: GuestVM) -> None:
    """Stop the VM and forget its disk (and all records about it); images are untouched."""
    with vm.stopped(soft_timeout=60):
        vm.vmdir.forget_disk()


def reset(vm: GuestVM) -> str:
    """Stop the VM and give it a new disk from where disks of its kind come from."""
    discard_disk(vm)
    with vm.lock():
        origin = images.ensure_disk(vm)
    return f"new disk from the {origin.kind} image"


def demo(vm: GuestVM) -> List[str]:
    """Boot the VM afresh, prove SSH and the console answer, stop it; the lines of a report."""
    if vm.machine.pid() is not None:
        log.info("VM %s is running; stopping it to boot it afresh", vm.name)
        vm.stop()
    status = start(vm)
    try:
        with GuestSSH(status.ssh_port or 0, vm.config.ssh_user, vm.keys()) as ssh:
            facts = ssh.run("echo \"$(hostname) $(uname -sr) $(id -un)\"", timeout=60)
        if not facts.ok:
            raise GuestUnreachable(f"VM {vm.name}: a command over SSH failed: {facts.stderr.strip()}")
        login = _login_prompt(vm)
        report = [f"started in {status.extra['boot_seconds']}s under {status.accel} (pid {status.pid})",
                  f"SSH on 127.0.0.1:{status.ssh_port}: {facts.stdout.strip()}",
                  f"serial console ({vm.machine.console_log}): {login}"]
    finally:
        stopped = vm.stop()
    return report + [f"stopped: {stopped}"]


def _login_prompt(vm: GuestVM) -> str:
    """The login prompt on the serial console, after pressing Enter there as a user would: a
    restored guest (a fresh golden copy starts so) printed its prompt before the snapshot was
    taken, into another boot's console.log, and getty prints it again on Enter."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.settimeout(10)
        console.connect(str(vm.machine.console_socket))
        console.sendall(b"\r")
        return vm.machine.wait_console(r"login:\s*$", timeout=60)
