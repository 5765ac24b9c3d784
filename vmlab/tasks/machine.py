"""Tasks for one VM's life: start, stop, status, ssh, console, destroy, reset, suspend,
resume, demo.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from invoke.context import Context
from invoke.tasks import task

from vmlab.errors import ConfigError, NotConfirmed
from vmlab.spelling import as_typed
from vmlab.tasks.common import CONFIG_HELP, VM_HELP, cli, duration_text, lab_of, print_table, vm_name, vm_of


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "clone_of": "make VM NAME a clone of this configured VM (started from its golden image)"})
@cli
def start(c: Context, vm: Optional[str] = None, config: Optional[str] = None, clone_of: Optional[str] = None) -> None:
    """Start a VM and wait until SSH answers.

    Builds its image first if needed; a fresh copy of a golden image starts by restoring.
    """
    from vmlab.lab import firstrun

    lab = lab_of(config)
    if clone_of:
        name = vm_name(vm)
        if not name:
            raise ConfigError("--clone-of needs the clone's name: --vm NAME")
        lab.clone(name, clone_of)
    with lab.vm(vm_name(vm), starts=True) as v:
        firstrun.start(v)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "timeout": "seconds to wait for the guest to power off before forcing QEMU to quit"})
@cli
def stop(c: Context, vm: Optional[str] = None, config: Optional[str] = None, timeout: float = 60.0) -> None:
    """Stop a VM: ACPI power-off, then quit, then kill.

    Always removes its sockets and pid file.
    """
    v = vm_of(config, vm)
    how = v.stop(soft_timeout=float(timeout))
    print(f"VM {v.name}: {how}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print one JSON object for the VM",
            "all": "with --json: every VM, as {\"vms\": [...]}"})
@cli
def status(c: Context, vm: Optional[str] = None, config: Optional[str] = None, json_: bool = False,
           all_: bool = False) -> None:
    """Show VMs: state, pid, SSH port, accelerator.

    A table, or one JSON object with --json.
    """
    from vmlab.lab import lifecycle

    lab = lab_of(config)
    if json_:
        if all_:
            print(json.dumps({"vms": [s.as_dict() for s in lifecycle.statuses(lab)]}, indent=2))
        else:
            print(json.dumps(lab.vm(vm_name(vm)).vmdir.status().as_dict(), indent=2))
        return
    rows = [("NAME", "STATE", "PID", "SSH", "ACCEL", "QEMU", "UP")]
    for s in lifecycle.statuses(lab) if not vm_name(vm) else [lab.vm(vm_name(vm)).vmdir.status()]:
        up = duration_text(time.time() - s.started_at) if s.started_at else "-"
        ssh = f"127.0.0.1:{s.ssh_port}" if s.ssh_port else "-"
        rows.append((s.name, s.state, str(s.pid or "-"), ssh, s.accel or "-", s.qemu_status or "-", up))
    print_table(rows)
    for s in lifecycle.statuses(lab):
        if s.state == "crashed":
            print(f"\n{s.name}: {s.detail}")


@task(help={"command": "run this one command and exit with its status (default: interactive shell)",
            "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def ssh(c: Context, command: Optional[str] = None, vm: Optional[str] = None,
        config: Optional[str] = None) -> Optional[int]:
    """Open a shell in the VM, or run one command (-c).

    With -c CMD it exits with the command's status; piped input goes to the command.
    """
    v = vm_of(config, vm)
    if command is None:
        argv = v.ssh_argv()
        os.execv(argv[0], argv)
    piped = None if sys.stdin.isatty() else sys.stdin.buffer  # `cat f | invoke vm.ssh -c 'cat > f'`
    result = v.run(command, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer, stdin=piped)
    return result.exit_status if result.exit_status >= 0 else 1  # -1: it had none (cut off)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def console(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Attach to the serial console (Ctrl-] detaches).

    Everything the guest prints is also in vm/NAME/console.log.
    """
    from vmlab.install.console import attach  # pexpect: only this task needs it

    v = vm_of(config, vm)
    attach(v.console_socket(), v.name)


def _confirmed(yes: bool, question: str) -> bool:
    """--yes, or the user's yes on the terminal; no terminal to ask on is an error."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise NotConfirmed(f"{question} Refusing without --yes (no terminal to ask)")
    if input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return True
    print("vmlab: nothing done", file=sys.stderr)
    return False


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def destroy(c: Context, yes: bool = False, vm: Optional[str] = None, config: Optional[str] = None) -> Optional[int]:
    """Stop a VM and delete its disk and state folder.

    Cached and golden images are kept.
    """
    from vmlab.lab import lifecycle

    v = vm_of(config, vm)
    if not _confirmed(yes, f"Destroy VM {v.name} and delete {v.vmdir.dir}?"):
        return 1
    how = lifecycle.destroy(v)
    print(f"VM {v.name}: {how}; deleted {v.vmdir.dir}")
    return None


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def reset(c: Context, yes: bool = False, vm: Optional[str] = None, config: Optional[str] = None) -> Optional[int]:
    """Give the VM a fresh disk from its golden or base image.

    Stops it first; the images themselves are never touched.
    """
    from vmlab.lab import lifecycle

    v = vm_of(config, vm)
    if not _confirmed(yes, f"Throw away everything on VM {v.name}'s disk?"):
        return 1
    print(f"VM {v.name}: {lifecycle.reset(v)}")
    return None


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def suspend(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Save the VM's running state to disk and stop QEMU."""
    from vmlab.lab import snapshotting

    with vm_of(config, vm) as v:
        snapshotting.suspend(v)
    print(as_typed(f"VM {v.name}: suspended; `invoke vm.resume` brings it back"))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def resume(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Bring a suspended VM back, same SSH port."""
    from vmlab.lab import snapshotting

    with vm_of(config, vm, starts=True) as v:
        st = snapshotting.resume(v)
    print(f"VM {st.name}: resumed, ssh 127.0.0.1:{st.ssh_port}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def demo(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Boot the VM afresh, prove SSH and the console."""
    from vmlab.lab import lifecycle

    for line in lifecycle.demo(vm_of(config, vm)):
        print(line)
