"""Running one test suite from vmlab.yaml in the guest.

The command runs in its work folder under the synced project, as root when it
is privileged (through the profile's sudo/doas for a non-root SSH user), with
its environment, under the guest's own `timeout` (so a hung suite is killed in
the guest, not just abandoned), its output shown live and kept in a log. Then
its results are read as one test case per test (its `format:`, see formats.py:
from its output, or from the JUnit file it wrote, fetched back), and the files
it names under `artifacts:` are copied back into the run's folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, List, Optional

from vmlab import host
from vmlab.config import SuiteConfig
from vmlab.errors import Cancelled, GuestUnreachable
from vmlab.remote.openssh import Claim, SharedConnection
from vmlab.remote.transport import Root
from vmlab.runs import formats
from vmlab.runs.readout import Readout
from vmlab.runs.results import Status, SuiteResult
from vmlab.sync.gate import SyncGate

TIMED_OUT = (124, 137)  # `timeout`'s status when it stopped the command (137: it had to SIGKILL)
KILL_GRACE = 10  # seconds between the guest's TERM and KILL at a timeout
SESSION_MARK = "vmlab-suite-session: "  # the first line of a suite's session: its shell's pid
PYTEST_REPORT = "/tmp/vmlab-{}.pytest.xml"  # where pytest writes its JUnit for format pytest (by suite name)


def in_workdir(guest_dir: str, workdir: str) -> str:
    return workdir if workdir.startswith("/") else f"{guest_dir}/{workdir}".replace("/./", "/").rstrip("/.")


def report_file(suite: SuiteConfig, guest_dir: str) -> Optional[str]:
    """The JUnit file the suite writes in the guest: its `junit:`, or the one vmlab asks pytest for."""
    if suite.format == "pytest":
        return PYTEST_REPORT.format(suite.name)
    return in_workdir(in_workdir(guest_dir, suite.workdir), suite.junit) if suite.junit else None


# A word the shell passes on as it is: no quotes, globs, variables, operators or `~`.
PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:,+@%=-]+")
# What only a shell can run (its builtins and keywords): a command starting with one needs `sh -c`.
SHELL_ONLY = frozenset(". : [[ ! { } alias bg break case cd command continue declare do done elif else esac eval "
                       "exec exit export fc fg fi for function getopts hash if in jobs let local read readonly "
                       "return select set shift source then time times trap type typeset ulimit umask unalias "
                       "unset until wait while".split())


def plain_command(command: str) -> bool:
    """True when `command` is one program and its arguments, meaning the same to every shell:
    it can be exec'd by `timeout` directly, without a `sh -c` (an exec: 20-40 ms measured under TCG).
    Not plain: an assignment first (`A=1 cmd`), a job (`%1`), a builtin or keyword."""
    words = command.split()
    return bool(words) and all(PLAIN_WORD.fullmatch(w) for w in words) and "=" not in words[0] \
        and not words[0].startswith("%") and words[0] not in SHELL_ONLY


def remote_command(suite: SuiteConfig, guest_dir: str, root: Root) -> str:
    """The one shell line the guest runs for `suite`, as `root` says for a privileged one.

    A JUnit file an earlier run left is deleted first (as the suite's own user, who may own
    it), so the file fetched afterwards is this run's or none. For format pytest,
    PYTEST_ADDOPTS (the suite's own, if any, and --junitxml) makes pytest write one.
    A plain command of the SSH user's own (the common quick suite) is exec'd by `timeout`
    from its work folder, with no `sh -c` between."""
    report = report_file(suite, guest_dir)
    as_root = suite.privileged and bool(root.prefix)
    if not as_root and not report and plain_command(suite.command):
        exports = "".join(f"export {shlex.quote(f'{k}={v}')} && " for k, v in suite.env)
        return (f"cd {shlex.quote(in_workdir(guest_dir, suite.workdir))} && {exports}"
                f"exec timeout -k {KILL_GRACE} {int(suite.timeout)} {suite.command}")
    stale = f"rm -f {shlex.quote(suite.junit or report)} && " if report else ""  # `junit:` is relative to workdir
    script = f"cd {shlex.quote(in_workdir(guest_dir, suite.workdir))} && {stale}{suite.command}"
    env = dict(suite.env)
    if suite.format == "pytest":
        env["PYTEST_ADDOPTS"] = f"{env.get('PYTEST_ADDOPTS', '')} --junitxml={report}".lstrip()
    prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " if env else ""
    line = f"timeout -k {KILL_GRACE} {int(suite.timeout)} {prefix}sh -c {shlex.quote(script)}"
    return root.program(line) if suite.privileged else line


def run(conn: SharedConnection, suite: SuiteConfig, guest_dir: str, run_dir: Path,
        echo: Optional[IO[bytes]] = None, gate: Optional[SyncGate] = None,
        cancel: Optional[threading.Event] = None, raw: bool = False) -> SuiteResult:
    """Run `suite`, keeping its output in run_dir/<name>.log and its JUnit in run_dir/<name>.junit.xml.

    Its output is shown on `echo` (default: stdout) as it comes: read as its format says,
    a line per test or package (readout.py), or with `raw` as it is.
    With `gate`, the same session first syncs the project if the guest's copy may differ.
    A privileged suite runs as root as the connection's `root` says (transport.Root)."""
    log_path = run_dir / f"{suite.name}.log"
    started = [time.monotonic()]
    session: List[Optional[int]] = [None]  # the guest's session (its shell's pid: sshd makes each a session)

    def handshake(line: str) -> Optional[Claim]:
        if gate is None:  # only the session's own line: it has no input
            claimed = line.startswith(SESSION_MARK)
            if claimed:
                session[0] = _pid(line[len(SESSION_MARK):])
            return Claim(b"") if claimed else None
        claim = gate.claim(line)
        session[0] = gate.guest_pid
        if claim is not None and claim.done:
            started[0] = time.monotonic()  # the suite's own time starts once synced
        return claim

    command = remote_command(suite, guest_dir, conn.root)
    shown = Readout(suite, echo if echo is not None else sys.stdout.buffer, raw)
    with open(log_path, "wb") as log, _stopped_in_guest_if_cut_off(conn, session, suite.privileged):
        status = conn.stream(gate.prelude() + command if gate else f"echo {SESSION_MARK}$$\n{command}", output=log,
                          echo=shown, timeout=suite.timeout + KILL_GRACE + 30, handshake=handshake, cancel=cancel)
    if gate:
        gate.check(suite.name, log_path)  # SyncError if the suite never ran: its exit code is its own
    duration = time.monotonic() - started[0]
    timed_out = status == -1 or (status in TIMED_OUT and duration >= suite.timeout - 1)
    ended = Status.TIMED_OUT if timed_out else (Status.PASSED if status == 0 else Status.FAILED)
    result = SuiteResult(suite.name, ended, status, duration, log_path)
    if timed_out:
        result.note = f"killed after {suite.timeout:.0f}s (its timeout)"
    _read_cases(conn, suite, guest_dir, run_dir, result)
    shown.finish(result)
    if suite.artifacts:
        result.artifacts = fetch_artifacts(conn, suite, guest_dir, run_dir, result)
    return _settle(result)


@contextmanager
def _stopped_in_guest_if_cut_off(conn: SharedConnection, session: List[Optional[int]],
                                 as_root: bool) -> Iterator[None]:
    """A run cut off on the host (vm.watch's newer save, Ctrl-C, SIGTERM) is stopped in the guest
    too: closing the SSH session does not (no terminal, so no hangup), and a suite left running
    holds its mounts and races the next run. Every process of its session is sent TERM, as root
    for a privileged suite; `timeout` passes it on to the suite's process group."""
    try:
        yield
    except (Cancelled, KeyboardInterrupt):
        if session[0]:
            try:
                conn.run(f"pkill -TERM -s {session[0]}", as_root=as_root, timeout=10)
            except GuestUnreachable:
                pass
        raise


def _pid(text: str) -> Optional[int]:
    return int(text) if text.strip().isdigit() else None


def _read_cases(conn: SharedConnection, suite: SuiteConfig, guest_dir: str, run_dir: Path,
                result: SuiteResult) -> None:
    """result.cases from the suite's output or from the JUnit file it wrote (fetched into run_dir).

    A suite that said it writes a JUnit file and exits 0 with none, or with one that is not
    XML or holds no test, has not shown that anything passed: it fails, as a CI reader
    (Jenkins' junit step, test-reporter) fails a run whose report is missing or empty."""
    if suite.format in formats.FROM_FILE:
        remote = report_file(suite, guest_dir)
        assert remote is not None
        data = conn.get(remote)
        if data is None:
            parsed = formats.Parsed([], f"it wrote no JUnit file at {remote}")
        else:
            result.junit = run_dir / f"{suite.name}.junit.xml"
            result.junit.write_bytes(data)
            parsed = formats.junit(data)
        if not parsed.cases and result.status == Status.PASSED:
            result.status = Status.FAILED
            parsed.problem = f"exit 0, but {parsed.problem}"
    elif suite.format:
        parsed = formats.parse_log(suite.format, result.log, suite.name) if result.log else \
            formats.parse(suite.format, "", suite.name)
    else:
        return
    result.cases, result.problem = parsed.cases, parsed.problem
    if parsed.problem:
        _add_note(result, parsed.problem)


def _settle(result: SuiteResult) -> SuiteResult:
    """The status its tests give it: exit 0 with a test failing (or its results ending early) is a
    failure; a failure with every test passing stays one, saying so."""
    failing = sum(c.failing for c in result.cases)
    if result.status == Status.PASSED and failing:
        result.status = Status.FAILED
        _add_note(result, f"exit 0, but {failing} of its {len(result.cases)} tests failed")
    elif result.status == Status.PASSED and result.cases and result.problem:
        result.status = Status.FAILED  # exit 0, but its own results say it did not finish (the note says why)
    elif result.status == Status.FAILED and result.cases and not failing and not result.problem:
        _add_note(result, f"exit code {result.exit_code}, though every test it reported passed")
    return result


def cut_off(suite: SuiteConfig, run_dir: Path, why: str) -> SuiteResult:
    """The suite under way when the run was cut off: an error, with the tests its output got to."""
    log = run_dir / f"{suite.name}.log"
    result = SuiteResult(suite.name, Status.ERROR, -1, 0.0, log if log.exists() else None, note=f"cut off: {why}")
    if result.log and suite.format and suite.format not in formats.FROM_FILE:
        result.cases = formats.parse_log(suite.format, result.log, suite.name).cases
    return result


def fetch_artifacts(conn: SharedConnection, suite: SuiteConfig, guest_dir: str, run_dir: Path,
                    result: SuiteResult) -> List[str]:
    """Copy what the suite's `artifacts:` patterns match in its workdir (folders whole) into
    run_dir/artifacts/<suite>/, keeping their paths; returns them, relative to run_dir.

    rsync expands each pattern in the guest and copies the files links point to, never a
    link (the results folder is uploaded by CI: a link there could name a file of the host).
    A pattern that matches nothing is a note, not a failure."""
    host.require(["rsync", "ssh"], "copying a suite's artifacts out of the guest")
    dest = run_dir / "artifacts" / suite.name
    dest.mkdir(parents=True, exist_ok=True)
    workdir = in_workdir(guest_dir, suite.workdir)
    sources = [f"{conn.destination}:{workdir}/./{pattern}" for pattern in suite.artifacts]  # /./: paths kept below
    proc = subprocess.run([host.which("rsync") or "rsync", "-rtL", "--relative", "-e", shlex.join(conn.ssh_command()),
                           *sources, f"{dest.resolve()}/"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", check=False)
    said = re.findall(r'link_stat "(.*)" failed', proc.stderr)  # rsync names each in full, without the '/./'
    missing = [p for p in suite.artifacts if any(f"/{path}".endswith(f"/{workdir}/{p}".replace("//", "/"))
                                                 for path in said)]
    if missing:
        _add_note(result, f"no artifact matched {', '.join(missing)} in {workdir}")
    other = [line for line in proc.stderr.splitlines() if line.strip() and "link_stat" not in line
             and not line.startswith("rsync error: some files")]  # exit 23's summary of the lines above
    if proc.returncode not in (0, 24) and other:
        _add_note(result, f"artifacts: rsync failed (exit {proc.returncode}): {other[0]}")
    copied = sorted(str(p.relative_to(run_dir)) for p in dest.rglob("*") if p.is_file())
    if not copied:
        _remove_empty(dest)
    return copied


def _remove_empty(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir()
    folder.rmdir()
    if not os.listdir(folder.parent):
        folder.parent.rmdir()


def _add_note(result: SuiteResult, note: str) -> None:
    result.note = f"{result.note}; {note}" if result.note else note
