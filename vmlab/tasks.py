"""Invoke tasks: argument parsing and printing only; each is a thin call into Lab.

A project uses them with a one-line tasks.py: `from vmlab.tasks import ns`.
Exit codes: 0 done, 1 failed, 2 could not start (something missing or misconfigured).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from invoke import Collection, Exit, task

from vmlab import config as config_mod
from vmlab import golden as golden_images
from vmlab.console import attach
from vmlab.errors import VmlabError
from vmlab.lab import Lab

VM_HELP = "VM name from vmlab.yaml (default: $VM, else the first VM)"
CONFIG_HELP = "config file (default: $VMLAB_CONFIG, else ./vmlab.yaml, else built-in defaults)"


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="vmlab: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # its transport noise is not for users
    logging.getLogger("qemu").setLevel(logging.CRITICAL)


def _lab(config: Optional[str]) -> Lab:
    return Lab(config_mod.load(config))


def _vm(vm: Optional[str]) -> Optional[str]:
    return vm or os.environ.get("VM") or None


def cli(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn vmlab's errors into a message and an exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except VmlabError as e:
            raise Exit(f"vmlab: error: {e}", code=e.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("vmlab: interrupted", code=130) from None

    return wrapper


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def start(c, vm=None, config=None):
    """Start a VM (building its image first if needed) and wait until SSH answers."""
    _lab(config).start(_vm(vm))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "timeout": "seconds to wait for the guest to power off before forcing QEMU to quit"})
@cli
def stop(c, vm=None, config=None, timeout=60.0):
    """Stop a VM: ACPI power-off, then QMP quit, then kill; always cleans up sockets and pid file."""
    lab = _lab(config)
    how = lab.stop(_vm(vm), soft_timeout=float(timeout))
    print(f"VM {lab.vm(_vm(vm)).name}: {how}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print one JSON object for the VM",
            "all": "with --json: every VM, as {\"vms\": [...]}"})
@cli
def status(c, vm=None, config=None, json_=False, all_=False):
    """Show VMs: state, pid, SSH port, accelerator (a table, or JSON with --json)."""
    lab = _lab(config)
    if json_:
        if all_:
            print(json.dumps({"vms": [s.as_dict() for s in lab.statuses()]}, indent=2))
        else:
            print(json.dumps(lab.status(_vm(vm)).as_dict(), indent=2))
        return
    rows = [("NAME", "STATE", "PID", "SSH", "ACCEL", "QEMU", "UP")]
    for s in lab.statuses() if not _vm(vm) else [lab.status(_vm(vm))]:
        up = _duration(time.time() - s.started_at) if s.started_at else "-"
        ssh = f"127.0.0.1:{s.ssh_port}" if s.ssh_port else "-"
        rows.append((s.name, s.state, str(s.pid or "-"), ssh, s.accel or "-", s.qemu_status or "-", up))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    for s in lab.statuses():
        if s.state == "crashed":
            print(f"\n{s.name}: {s.detail}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@task(help={"command": "run this one command and exit with its status (default: interactive shell)",
            "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def ssh(c, command=None, vm=None, config=None):
    """Open a shell in the VM, or run one command (-c CMD) and return its exit code."""
    lab = _lab(config)
    if command is None:
        argv = lab.ssh_argv(_vm(vm))
        os.execv(argv[0], argv)
    result = lab.run(command, _vm(vm), stdout=sys.stdout, stderr=sys.stderr)
    if result.exit_status != 0:
        raise Exit(code=result.exit_status if result.exit_status > 0 else 1)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def console(c, vm=None, config=None):
    """Attach to the VM's serial console (Ctrl-] detaches; all output is also in vm/NAME/console.log)."""
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    machine = lab.machine(v)
    if machine.pid() is None:
        raise Exit(f"vmlab: error: VM {v.name} is not running; start it: invoke vm.start", code=2)
    attach(machine.console_socket, v.name)


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Exit(f"vmlab: error: {question} Refusing without --yes (no terminal to ask)", code=1)
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise Exit("vmlab: nothing done", code=1)


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def destroy(c, yes=False, vm=None, config=None):
    """Stop a VM and delete its disk and state folder (cached images are kept)."""
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    _confirm(yes, f"Destroy VM {v.name} and delete {lab.machine(v).dir}?")
    how = lab.destroy(v.name)
    print(f"VM {v.name}: {how}; deleted {lab.machine(v).dir}")


SNAP_HELP = "snapshot name (default: clean)"


@task(help={"name": SNAP_HELP, "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def snapshot(c, name="clean", vm=None, config=None):
    """Save the running VM's disk, RAM and devices as a named snapshot (the old one survives failures)."""
    snap = _lab(config).snapshot(_vm(vm), name)
    print(f"saved {snap.name}: {snap.vm_state_bytes >> 20} MiB of RAM state")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print JSON"})
@cli
def snapshots(c, vm=None, config=None, json_=False):
    """List the VM's snapshots: name, date, size of the RAM state, guest clock."""
    found = [s.as_dict() for s in _lab(config).snapshots(_vm(vm))]
    if json_:
        print(json.dumps({"snapshots": found}, indent=2))
        return
    rows = [("NAME", "DATE", "SIZE", "GUEST CLOCK")] + [
        (s["name"], s["date"], f"{s['size_bytes'] >> 20} MiB", f"{s['guest_clock_seconds']}s") for s in found]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@task(name="snapshot-delete", help={"name": "snapshot to delete (required)", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def snapshot_delete(c, name, vm=None, config=None):
    """Delete a named snapshot."""
    _lab(config).snapshot_delete(name, _vm(vm))
    print(f"deleted {name}")


@task(help={"name": SNAP_HELP, "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def restore(c, name="clean", vm=None, config=None):
    """Put the VM back to a snapshot in seconds: live if running, else started from it."""
    t = _lab(config).restore(_vm(vm), name)
    print(f"restored {name} in {t['total_seconds']}s (state loaded in {t['load_seconds']}s)")


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def reset(c, yes=False, vm=None, config=None):
    """Stop the VM and give it a fresh disk from its golden (or base) image; images are untouched."""
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    _confirm(yes, f"Throw away everything on VM {v.name}'s disk?")
    print(f"VM {v.name}: {lab.reset(v.name)}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def suspend(c, vm=None, config=None):
    """Save the VM's whole running state to its disk and stop QEMU (no RAM held)."""
    lab = _lab(config)
    lab.suspend(_vm(vm))
    print(f"VM {lab.vm(_vm(vm)).name}: suspended; `invoke vm.resume` brings it back")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def resume(c, vm=None, config=None):
    """Bring a suspended VM back, same SSH port, its processes still running."""
    st = _lab(config).resume(_vm(vm))
    print(f"VM {st.name}: resumed, ssh 127.0.0.1:{st.ssh_port}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def golden(c, vm=None, config=None):
    """Freeze the provisioned VM as a golden image (read-only base + clean snapshot); it then runs from it."""
    gold = _lab(config).make_golden(_vm(vm))
    print(f"golden image {gold.key}: {gold.dir}")


@task(name="golden-export", help={"output": "file to write (default: golden-KEY.tar)", "vm": VM_HELP,
                                  "config": CONFIG_HELP})
@cli
def golden_export(c, output=None, vm=None, config=None):
    """Write the VM's golden image and its manifest to one file (for a CI cache)."""
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    gold = lab.golden_of(v)
    if gold is None:
        raise Exit(f"vmlab: error: VM {v.name} has no golden image yet; make it: invoke vm.golden", code=2)
    path = golden_images.export(gold, Path(output or f"golden-{gold.key}.tar"))
    print(f"{path} ({path.stat().st_size >> 20} MiB, golden image {gold.key})")


@task(name="golden-import", help={"input": "a file written by vm.golden-export", "config": CONFIG_HELP})
@cli
def golden_import(c, input, config=None):
    """Load a golden image exported by vm.golden-export into the cache, verifying every file."""
    gold = golden_images.import_(_lab(config).cache, Path(input))
    print(f"golden image {gold.key}: {gold.dir}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def demo(c, vm=None, config=None):
    """The main job: boot the VM from scratch, prove SSH and the serial console, stop it."""
    for line in _lab(config).demo(_vm(vm)):
        print(line)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def image(c, vm=None, config=None):
    """Build (or find in the cache) the base image the VM starts from, and print where it is."""
    lab = _lab(config)
    started = time.monotonic()
    folder = lab.base_image(lab.vm(_vm(vm)))
    print(f"{folder} ({time.monotonic() - started:.1f}s)")


vm_tasks = Collection("vm", start, stop, status, ssh, console, destroy, reset, snapshot, snapshots,
                      snapshot_delete, restore, suspend, resume, golden, golden_export, golden_import, demo, image)
ns = Collection(vm_tasks)
