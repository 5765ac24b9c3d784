"""The QEMU monitor (QMP) of one VM, over its unix socket, through qemu.qmp.

A Monitor is a short session: open, a few commands, close. QMP errors become
MachineError naming the command and QEMU's own description; a monitor that
drops while QEMU quits is expected and tolerated.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from vmlab.errors import MachineError

CLOSE_LIMIT = 5.0  # seconds a close may take (it takes milliseconds) while Ctrl-C waits

if TYPE_CHECKING:  # qemu.qmp and asyncio (~30 ms) are imported by the first monitor session
    from qemu.qmp.legacy import QEMUMonitorProtocol


class Monitor:
    """`greeting=False` for QEMU's guest agent, which speaks QMP without the greeting and
    capabilities negotiation (qemu/agent.py)."""

    def __init__(self, socket: Path, timeout: float = 30.0, greeting: bool = True):
        self.socket = socket
        self.timeout = timeout
        self.greeting = greeting
        self._qmp: Optional[QEMUMonitorProtocol] = None

    def __enter__(self) -> "Monitor":
        import asyncio

        from qemu.qmp import QMPError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self._qmp = QEMUMonitorProtocol(str(self.socket))
        try:
            # The legacy connect() waits for QEMU's greeting without a time limit, and QEMU greets
            # one QMP client at a time: while another holds the monitor, or when QEMU is stopped
            # (SIGSTOP) or wedged, it accepts the connection but never greets, and vm.stop hung for
            # ever. Its own connect, as the legacy one sets it up, under the monitor's time limit.
            self._qmp._qmp.await_greeting = self._qmp._qmp.negotiate = self.greeting
            self._qmp._sync(self._qmp._qmp.connect(str(self.socket)), self.timeout)
        except asyncio.TimeoutError:
            self.__exit__()  # the half-made connection
            raise MachineError(f"QEMU's monitor at {self.socket} did not answer within {self.timeout:g}s "
                               "(QEMU serves one monitor client at a time: is another connected? "
                               "or QEMU is stopped)") from None
        except (QMPError, OSError) as e:
            self.__exit__()
            raise MachineError(f"cannot reach QEMU's monitor at {self.socket}: {e}") from None
        except BaseException:  # Ctrl-C or SIGTERM while connecting: the half-made connection too
            self.__exit__()
            raise
        self._qmp.settimeout(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the session with Ctrl-C and SIGTERM held back until it is closed (a few ms): a
        close cut off half-way leaves a session that qemu.qmp closes again when Python exits, and
        that close fails with a traceback printed after the command's own last words."""
        import asyncio

        from qemu.qmp import QMPError

        if self._qmp is not None:
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:  # legacy close(), under a time limit: signals are not held for long whatever QEMU does
                self._qmp._sync(self._qmp._qmp.disconnect(), CLOSE_LIMIT)
            except (QMPError, OSError, EOFError, asyncio.TimeoutError):
                pass  # QEMU may be gone already (after quit): nothing to close
            finally:
                self._qmp = None
                signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal that came meanwhile is handled now

    def command(self, name: str, **args: Any) -> Any:
        import asyncio

        from qemu.qmp import QMPError
        from qemu.qmp.qmp_client import ExecuteError

        assert self._qmp is not None, "use Monitor as a context manager"
        try:
            return self._qmp.cmd(name, **args)
        except ExecuteError as e:  # str() is QEMU's own description of why
            raise MachineError(f"QEMU refused {name}: {e}") from None
        except (QMPError, OSError, EOFError, asyncio.TimeoutError) as e:
            raise MachineError(f"QEMU's monitor failed during {name}: {e or type(e).__name__}") from None

    def status(self) -> str:
        """QEMU's run state: 'running', 'paused', 'shutdown', 'postmigrate', ..."""
        return str(self.command("query-status")["status"])

    def run_job(self, command: str, job_id: str, timeout: float, **args: Any) -> None:
        """Run a QMP job (snapshot-save, -load, -delete) to its end and dismiss it.

        Such jobs report failure only in query-jobs[].error, never as a QMP error,
        so the job is polled until it concludes and its error raised as MachineError.
        """
        deadline = time.monotonic() + timeout
        self._settle_leftovers(deadline)
        self.command(command, **{"job-id": job_id}, **args)
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

    def _settle_leftovers(self, deadline: float) -> None:
        """A job of a vmlab command that was cut off (Ctrl-C, SIGTERM) stays in QEMU: wait for
        it to end and dismiss it, so the next job neither collides with it nor runs beside it."""
        while True:
            left = [j for j in self.command("query-jobs") if str(j["id"]).startswith("vmlab-")]
            for job in left:
                if job["status"] == "concluded":
                    self.command("job-dismiss", id=job["id"])
            if all(j["status"] == "concluded" for j in left):
                return
            if time.monotonic() > deadline:
                raise MachineError(f"QEMU still runs {left[0]['type']} job {left[0]['id']} of an interrupted "
                                   "vmlab command; try again when it ends, or `invoke vm.stop`")
            time.sleep(0.05)
