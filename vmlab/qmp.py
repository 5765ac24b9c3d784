"""The QEMU monitor (QMP) of one VM, over its unix socket, through qemu.qmp.

A Monitor is a short session: open, a few commands, close. QMP errors become
MachineError naming the command and QEMU's own description; a monitor that
drops while QEMU quits is expected and tolerated.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Optional

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
            # The legacy connect() waits for the greeting without a deadline, and QEMU greets one
            # QMP client at a time: while another holds the monitor, connect() would never return.
            self._qmp._qmp.await_greeting = self._qmp._qmp.negotiate = True
            self._qmp._sync(self._qmp._qmp.connect(str(self.socket)), self.timeout)
        except asyncio.TimeoutError:
            self._qmp = None
            raise MachineError(f"QEMU's monitor at {self.socket} did not answer within {self.timeout:.0f}s "
                               "(QEMU serves one monitor client at a time: is another connected?)") from None
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
        except ExecuteError as e:  # str() is QEMU's own description of why
            raise MachineError(f"QEMU refused {name}: {e}") from None
        except (QMPError, OSError, EOFError, asyncio.TimeoutError) as e:
            raise MachineError(f"QEMU's monitor failed during {name}: {e or type(e).__name__}") from None

    def status(self) -> str:
        """QEMU's run state: 'running', 'paused', 'shutdown', 'postmigrate', ..."""
        return self.command("query-status")["status"]

    def run_job(self, command: str, job_id: str, timeout: float, **args: Any) -> None:
        """Run a QMP job (snapshot-save, -load, -delete) to its end and dismiss it.

        Such jobs report failure only in query-jobs[].error, never as a QMP error,
        so the job is polled until it concludes and its error raised as MachineError.
        """
        self.command(command, **{"job-id": job_id}, **args)
        deadline = time.monotonic() + timeout
        while True:
            job = next((j for j in self.command("query-jobs") if j["id"] == job_id), None)
            if job is None:
                raise MachineError(f"QEMU lost track of its {command} job")
            if job["status"] == "concluded":
                break
            if time.monotonic() > deadline:
                raise MachineError(f"{command} did not finish within {timeout:.0f}s (job status {job['status']})")
            time.sleep(0.02)
        self.command("job-dismiss", id=job_id)
        if job.get("error"):
            raise MachineError(f"{command} failed: {job['error']}")
