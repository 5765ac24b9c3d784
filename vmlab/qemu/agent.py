"""QEMU's guest agent (qemu-ga) of one VM: a shell line run as root, without SSH.

A guest whose profile says `agent: qemu-ga` runs the agent on a virtio port whose host end
is `vm/<name>/agent.sock` (qemu/machine.py). After a restore it sets the guest right (clock,
randomness, name) in a tenth of the time an SSH session takes under TCG: no key exchange,
no login, no PAM session. The agent speaks QMP without the greeting, so qemu.qmp talks to
it (as QEMU's own qemu-ga-client does); replies are matched by id, so one left over from
before a snapshot is dropped. Who can connect to the socket can already do anything to the
VM through qmp.sock beside it; QEMU makes both so that only their owner can connect.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import MachineError
from vmlab.qemu.qmp import Monitor


@dataclass(frozen=True)
class AgentResult:
    exit_status: int
    output: str  # stdout then stderr, as the agent captured them


def answers(socket: Path, timeout: float) -> bool:
    """Whether the agent answers a guest-sync within `timeout` seconds (it starts with the
    guest's services, and a guest without it never answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Monitor(socket, timeout=max(0.1, min(2.0, deadline - time.monotonic())), greeting=False) as agent:
                token = secrets.randbelow(2**31)
                if agent.command("guest-sync", id=token) == token:
                    return True
        except MachineError:
            pass  # no answer within this try: the agent is not up yet, or there is none
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def clock_lag(socket: Path, timeout: float = 10) -> float:
    """Seconds the guest's clock is behind the host's (negative: ahead), read with the agent's
    own guest-get-time (no process is started in the guest: a round trip of milliseconds)."""
    with Monitor(socket, timeout=timeout, greeting=False) as agent:
        before = time.time()
        guest_ns = int(agent.command("guest-get-time"))
        after = time.time()
    return (before + after) / 2 - guest_ns / 1e9


def run(socket: Path, line: str, timeout: float) -> AgentResult:
    """Run `line` with /bin/sh as root in the guest; MachineError if the agent does not
    answer or the line does not end within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with Monitor(socket, timeout=timeout, greeting=False) as agent:
        pid = agent.command("guest-exec", path="/bin/sh", arg=["-c", line], **{"capture-output": True})["pid"]
        while True:
            status = agent.command("guest-exec-status", pid=pid)
            if status["exited"]:
                break
            if time.monotonic() > deadline:
                raise MachineError(f"the guest agent's command did not end within {timeout:.0f}s: {line}")
            time.sleep(0.01)
    output = b"".join(base64.b64decode(status.get(key, "")) for key in ("out-data", "err-data"))
    exit_status = status["exitcode"] if "exitcode" in status else 128 + int(status.get("signal", 0))
    return AgentResult(exit_status, output.decode(errors="replace"))
