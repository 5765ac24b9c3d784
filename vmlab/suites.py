"""Running one test suite from vmlab.yaml in the guest.

The command runs in its work folder under the synced project, as root when it
is privileged (through the profile's sudo/doas for a non-root SSH user), with
its environment, under the guest's own `timeout` (so a hung suite is killed in
the guest, not just abandoned), its output shown live and kept in a log. The
JUnit file it writes, if any, is fetched back.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import IO, Optional

from vmlab import results
from vmlab.config import SuiteConfig
from vmlab.errors import SyncError
from vmlab.openssh import SharedConnection
from vmlab.results import SuiteResult
from vmlab.sync import NOT_SYNCED, SyncGate

TIMED_OUT = (124, 137)  # `timeout`'s status when it stopped the command (137: it had to SIGKILL)
KILL_GRACE = 10  # seconds between the guest's TERM and KILL at a timeout


def in_workdir(guest_dir: str, workdir: str) -> str:
    return workdir if workdir.startswith("/") else f"{guest_dir}/{workdir}".replace("/./", "/").rstrip("/.")


def remote_command(suite: SuiteConfig, guest_dir: str, run_as_root: str) -> str:
    """The one shell line the guest runs for `suite`; `run_as_root` is '' when already root.

    A JUnit file an earlier run left is deleted first (as the suite's own user, who may own
    it), so the file fetched afterwards is this run's or none."""
    stale = f"rm -f {shlex.quote(suite.junit)} && " if suite.junit else ""
    script = f"cd {shlex.quote(in_workdir(guest_dir, suite.workdir))} && {stale}{suite.command}"
    env = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in suite.env) + " " if suite.env else ""
    line = f"timeout -k {KILL_GRACE} {int(suite.timeout)} {env}sh -c {shlex.quote(script)}"
    return f"{run_as_root} {line}" if suite.privileged and run_as_root else line


def run(conn: SharedConnection, suite: SuiteConfig, guest_dir: str, run_dir: Path, run_as_root: str,
        echo: Optional[IO[bytes]] = None, gate: Optional[SyncGate] = None) -> SuiteResult:
    """Run `suite`, keeping its output in run_dir/<name>.log and its JUnit in run_dir/<name>.junit.xml.

    With `gate`, the same session first syncs the project if the guest's copy may differ."""
    log_path = run_dir / f"{suite.name}.log"
    started = [time.monotonic()]

    def handshake(line: str) -> Optional[str]:
        assert gate is not None
        answer = gate.answer(line)
        if answer is not None:
            started[0] = time.monotonic()  # the suite's own time starts once synced
        return answer

    command = remote_command(suite, guest_dir, run_as_root)
    with open(log_path, "wb") as log:
        status = conn.run(gate.prelude() + command if gate else command, output=log,
                          echo=echo if echo is not None else sys.stdout.buffer,
                          timeout=suite.timeout + KILL_GRACE + 30, handshake=handshake if gate else None)
    if gate and status == NOT_SYNCED and not gate.answered:
        raise SyncError(f"the guest never ran vmlab's sync check before suite {suite.name} "
                        f"(see {log_path}: does the SSH user's shell print or exit first?)")
    duration = time.monotonic() - started[0]
    timed_out = status == -1 or (status in TIMED_OUT and duration >= suite.timeout - 1)
    result = SuiteResult(suite.name, "timed out" if timed_out else ("passed" if status == 0 else "failed"),
                         status, duration, log_path)
    if timed_out:
        result.note = f"killed after {suite.timeout:.0f}s (its timeout)"
    if suite.junit:
        remote = in_workdir(in_workdir(guest_dir, suite.workdir), suite.junit)
        data = conn.read(remote)
        if data is None:
            result.note = (result.note + "; " if result.note else "") + f"it wrote no JUnit file at {remote}"
        else:
            result.junit = run_dir / f"{suite.name}.junit.xml"
            result.junit.write_bytes(data)
    result.counts = results.count(result)
    if result.status == "passed" and (result.counts["failures"] or result.counts["errors"]):
        result.status = "failed"  # exit 0, but its own report says otherwise
    return result
