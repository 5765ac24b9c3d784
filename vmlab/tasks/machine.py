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
from vmlab.tasks.common import CONFIG_HELP, VM_HELP, cli, duration_text, lab_of, print_table, vm_name


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "clone_of": "make VM NAME a clone of this configured VM (started from its golden image)"})
@cli
def start(c: Context, vm: Optional[str] = None, config: Optional[str] = None, clone_of: Optional[str] = None) -> None:
    """Start a VM and wait until SSH answers.

    Builds its image first if needed; a fresh copy of a golden image starts by restoring.
    """
    lab = lab_of(config)
    if clone_of:
        name = vm_name(vm)
        if not name:
            raise ConfigError("--clone-of needs the clone's name: --vm NAME")
        lab.clone(name, clone_of)
    lab.start(vm_name(vm))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "timeout": "seconds to wait for the guest to power off before forcing QEMU to quit"})
@cli
def stop(c: Context, vm: Optional[str] = None, config: Optional[str] = None, timeout: float = 60.0) -> None:
    """Stop a VM: ACPI power-off, then quit, then kill.

    Always removes its sockets and pid file.
    """
    lab = lab_of(config)
    how = lab.stop(vm_name(vm), soft_timeout=float(timeout))
    print(f"VM {lab.vm(vm_name(vm)).name}: {how}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print one JSON object for the VM",
            "all": "with --json: every VM, as {\"vms\": [...]}"})
@cli
def status(c: Context, vm: Optional[str] = None, config: Optional[str] = None, json_: bool = False,
           all_: bool = False) -> None:
    """Show VMs: state, pid, SSH port, accelerator.

    A table, or one JSON object with --json.
    """
    lab = lab_of(config)
    if json_:
        if all_:
            print(json.dumps({"vms": [s.as_dict() for s in lab.statuses()]}, indent=2))
        else:
            print(json.dumps(lab.status(vm_name(vm)).as_dict(), indent=2))
        return
    rows = [("NAME", "STATE", "PID", "SSH", "ACCEL", "QEMU", "UP")]
    for s in lab.statuses() if not vm_name(vm) else [lab.status(vm_name(vm))]:
        up = duration_text(time.time() - s.started_at) if s.started_at else "-"
        ssh = f"127.0.0.1:{s.ssh_port}" if s.ssh_port else "-"
        rows.append((s.name, s.state, str(s.pid or "-"), ssh, s.accel or "-", s.qemu_status or "-", up))
    print_table(rows)
    for s in lab.statuses():
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
    lab = lab_of(config)
    if command is None:
        argv = lab.ssh_argv(vm_name(vm))
        os.execv(argv[0], argv)
    piped = None if sys.stdin.isatty() else sys.stdin.buffer  # `cat f | invoke vm.ssh -c 'cat > f'`
    result = lab.run(command, vm_name(vm), stdout=sys.stdout.buffer, stderr=sys.stderr.buffer, stdin=piped)
    return result.exit_status if result.exit_status >= 0 else 1  # -1: it had none (cut off)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def console(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Attach to the serial console (Ctrl-] detaches).

    Everything the guest prints is also in vm/NAME/console.log.
    """
    from vmlab.console import attach  # pexpect: only this task needs it

    lab = lab_of(config)
    attach(lab.console_socket(vm_name(vm)), lab.vm(vm_name(vm)).name)


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
    lab = lab_of(config)
    v = lab.vm(vm_name(vm))
    if not _confirmed(yes, f"Destroy VM {v.name} and delete {lab.vmdir(v).dir}?"):
        return 1
    how = lab.destroy(v.name)
    print(f"VM {v.name}: {how}; deleted {lab.vmdir(v).dir}")
    return None


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def reset(c: Context, yes: bool = False, vm: Optional[str] = None, config: Optional[str] = None) -> Optional[int]:
    """Give the VM a fresh disk from its golden or base image.

    Stops it first; the images themselves are never touched.
    """
    lab = lab_of(config)
    v = lab.vm(vm_name(vm))
    if not _confirmed(yes, f"Throw away everything on VM {v.name}'s disk?"):
        return 1
    print(f"VM {v.name}: {lab.reset(v.name)}")
    return None


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def suspend(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Save the VM's running state to disk and stop QEMU."""
    lab = lab_of(config)
    lab.suspend(vm_name(vm))
    print(as_typed(f"VM {lab.vm(vm_name(vm)).name}: suspended; `invoke vm.resume` brings it back"))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def resume(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Bring a suspended VM back, same SSH port."""
    st = lab_of(config).resume(vm_name(vm))
    print(f"VM {st.name}: resumed, ssh 127.0.0.1:{st.ssh_port}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def demo(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Boot the VM afresh, prove SSH and the console."""
    for line in lab_of(config).demo(vm_name(vm)):
        print(line)
