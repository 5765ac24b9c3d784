"""A diagnostic bundle: what to look at when something failed after QEMU started.

`vm/<name>/diagnostics/<time>/` gets the end of the console (of the VM, and of its
install if there was one, whose whole console is kept with times: install-console.timed.jsonl),
QEMU's log and its run state over QMP, and, when SSH
still answers, the guest's dmesg and mount table. Errors then name the folder, so
a failure in CI leaves what is needed to understand it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from vmlab.errors import VmlabError
from vmlab.qemu.machine import Machine, tail
from vmlab.qemu.qmp import Monitor
from vmlab.remote.ssh import GuestSSH

CONSOLE_LINES = 200


def started(machine: Machine) -> bool:
    """Whether QEMU ever ran for this VM (only then is there something to collect)."""
    return any(p.exists() for p in (machine.qemu_log, machine.dir / "install" / "qemu.log"))


def collect(machine: Machine, connect: Optional[Callable[[], GuestSSH]]) -> Path:
    """Write the bundle for `machine`; `connect` gives an SSH session to the guest, if it can."""
    folder = machine.dir / "diagnostics" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    for run in (machine.dir, machine.dir / "install"):
        prefix = "" if run == machine.dir else "install-"
        if (run / "console.log").exists():
            (folder / f"{prefix}console-tail.txt").write_text(tail(run / "console.log", CONSOLE_LINES) + "\n")
        for name in ("qemu.log", "state.json", "last-state.json",  # last-state.json: a QEMU already stopped
                     "console.timed.jsonl"):  # an install's whole console with times: a test can replay it
            if (run / name).exists():
                shutil.copyfile(run / name, folder / f"{prefix}{name}")
    status: Dict[str, Any] = {"qemu": "not running"}
    if machine.pid() is not None:
        try:
            with Monitor(machine.qmp_socket, timeout=5) as mon:
                status = {"qemu": "running", "query-status": mon.command("query-status")}
        except VmlabError as e:
            status = {"qemu": "running", "qmp": f"no answer: {e}"}
    (folder / "qmp-status.json").write_text(json.dumps(status, indent=2) + "\n")
    if connect is not None and machine.pid() is not None:
        try:
            with connect() as ssh:
                for name, command in (("dmesg.txt", "dmesg | tail -n 200"), ("mount.txt", "mount")):
                    result = ssh.run(command, timeout=20)
                    (folder / name).write_text(result.stdout + result.stderr)
        except (VmlabError, OSError) as e:
            (folder / "ssh.txt").write_text(f"SSH did not answer: {e}\n")
    return folder
