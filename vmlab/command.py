"""What running a command in the guest gives back, however it ran (paramiko, OpenSSH, the console)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CommandResult:
    command: str
    exit_status: int  # -1 when there was none (timed out, connection lost)
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out
