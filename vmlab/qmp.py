"""The QEMU monitor (QMP) of one VM, over its unix socket, through qemu.qmp.

A Monitor is a short session: open, a few commands, close. QMP errors become
MachineError naming the command and QEMU's own description; a monitor that
drops while QEMU quits is expected and tolerated.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, Optional

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.qmp_client import ExecuteError

from vmlab.errors import MachineError


class Monitor:
    def __init__(self, socket: Path, timeout: float = 30.0):
        self.socket = socket
        self.timeout = timeout
        self._qmp: Optional[QEMUMonitorProtocol] = None

    def __enter__(self) -> "Monitor":
        self._qmp = QEMUMonitorProtocol(str(self.socket))
        try:
            self._qmp.connect()
        except (QMPError, OSError) as e:
            self._qmp = None
            raise MachineError(f"cannot reach QEMU's monitor at {self.socket}: {e}") from None
        self._qmp.settimeout(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._qmp is not None:
            try:
                self._qmp.close()
            except (QMPError, OSError, EOFError):
                pass  # QEMU may be gone already (after quit): nothing to close
            self._qmp = None

    def command(self, name: str, **args: Any) -> Any:
        assert self._qmp is not None, "use Monitor as a context manager"
        try:
            return self._qmp.cmd(name, **args)
        except ExecuteError as e:
            raise MachineError(f"QEMU refused {name}: {e.error.desc}") from None
        except (QMPError, OSError, EOFError, asyncio.TimeoutError) as e:
            raise MachineError(f"QEMU's monitor failed during {name}: {e or type(e).__name__}") from None

    def status(self) -> str:
        """QEMU's run state: 'running', 'paused', 'shutdown', 'postmigrate', ..."""
        return self.command("query-status")["status"]

    def wait_event(self, name: str, timeout: float, match: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The next event called `name` whose data contains `match`; MachineError after `timeout` s."""
        assert self._qmp is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MachineError(f"QEMU sent no {name} event within {timeout:.0f}s")
            try:
                event = self._qmp.pull_event(wait=float(left))
            except asyncio.TimeoutError:
                continue
            if event and event.get("event") == name:
                data = event.get("data", {})
                if all(data.get(k) == v for k, v in (match or {}).items()):
                    return event
