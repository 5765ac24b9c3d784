"""A multiplexed OpenSSH connection to a guest, for the edit-test loop.

Every `make vm-quick` is a new process, so it cannot keep a paramiko connection
open, and a fresh SSH handshake costs about 1.4 s under TCG (the guest's side
is emulated) where a multiplexed one costs about 0.1 s. So rsync and suite
commands go through an OpenSSH control master that stays up for a while after
its last use (ControlPersist) and is closed when the VM stops or is restored
(a restore kills the guest's end of every connection).
"""

from __future__ import annotations

import hashlib
import io
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, List, Optional, Protocol, Tuple

from vmlab import host
from vmlab.command import CommandResult
from vmlab.errors import Cancelled, GuestUnreachable, PrerequisiteMissing
from vmlab.remote.keys import LabKeys, openssh_path
from vmlab.remote.transport import Root

PERSIST_SECONDS = 600
SSH_FAILED = 255  # what ssh exits with when it, not the remote command, failed
HOST = "127.0.0.1"  # the guest's sshd, forwarded; the user goes with -l, never as user@host


def runtime_dir() -> Path:
    """A private folder for control sockets: short paths (a unix socket path has 108 bytes at most).

    Whoever can write to it can plant a socket vmlab would send its commands through: a
    folder not ours, or open to others, is refused (host.private_folder)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"vmlab-{os.getuid()}"
    return host.private_folder(base, "vmlab's SSH control sockets", "set XDG_RUNTIME_DIR to a private folder")


class Sink(Protocol):
    """Where a command's output goes: a binary file, or a display of it (readout.Readout)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class Claim:
    """A line of a command's output its handshake took (not shown, not kept): see SharedConnection.run."""

    send: Optional[bytes] = None  # the command's whole input (the first claim that carries one)
    done: bool = True  # the handshake's last line: what follows is the command's own output


def _close_input(stdin: IO[bytes], data: bytes) -> None:
    try:
        stdin.write(data)
        stdin.close()
    except BrokenPipeError:
        pass


@dataclass(frozen=True)
class SharedConnection:
    """The OpenSSH command line for one VM's guest, sharing one connection between commands."""

    state_dir: Path  # the VM's vm/<name>/: names the control socket
    port: int
    user: str
    keys: LabKeys
    privileged: str = ""  # the guest profile's prefix that makes a command of `user` root (transport.Root)

    @property
    def root(self) -> Root:
        return Root(self.user, self.privileged)

    @property
    def control_path(self) -> Path:
        tag = hashlib.sha256(f"{self.state_dir.resolve()}:{self.port}".encode()).hexdigest()[:16]
        return runtime_dir() / f"{tag}.ctl"

    def ssh_options(self) -> List[str]:
        # The key exchange is the classic curve25519 one, not OpenSSH 9's default hybrid with
        # sntrup761: the guest's side of that costs ~0.1 s more under TCG, paid by the first
        # command after every restore, and a loopback link to a VM of this lab gains nothing from it.
        return [*self.keys.openssh_options(), "-o", "KexAlgorithms=curve25519-sha256", "-o", "ControlMaster=auto",
                "-o", f"ControlPath={openssh_path(self.control_path)}", "-o", f"ControlPersist={PERSIST_SECONDS}",
                "-o", "ConnectTimeout=30", "-p", str(self.port), "-l", self.user]

    @property
    def destination(self) -> str:
        return HOST

    def ssh_command(self) -> List[str]:
        """ssh with this connection's options and user, without a destination (what rsync -e wants).

        If the connection is being opened in the background (open_in_background), this waits for
        it: a second ssh would open one of its own, and say so on the command's output."""
        self._await_opening()
        return [host.which("ssh") or "ssh", *self.ssh_options()]

    @property
    def _opening(self) -> Path:
        """Holds the pid of the ssh opening this connection in the background, while it does."""
        return self.control_path.with_suffix(".opening")

    def _cancel_opening(self) -> None:
        """Stop an ssh opening this connection in the background (a restore or a stop is about to
        kill the guest's end of it); a master it already made is then found by close."""
        pid = self._opening_pid()
        if pid is None:
            return
        self._opening.unlink(missing_ok=True)
        if pid in self._processes():  # still an ssh of this connection, not a pid used since
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 2
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    def _opening_pid(self) -> Optional[int]:
        try:
            return int(self._opening.read_text())
        except (OSError, ValueError):
            return None

    def _await_opening(self) -> None:
        pid = self._opening_pid()
        if pid is None:
            return
        deadline = time.monotonic() + 35  # ConnectTimeout, and the login after it
        while not self.control_path.exists() and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._opening.unlink(missing_ok=True)

    def run(self, command: str, *, as_root: bool = False, timeout: Optional[float] = None) -> CommandResult:
        """Run `command` in the guest (as root with `as_root`): a Transport's run (transport.py).
        OpenSSH gives its output and error merged: both are the result's stdout."""
        line = self.root.shell(command) if as_root else command
        output = io.BytesIO()
        started = time.monotonic()
        status = self.stream(line, output=output, timeout=timeout)
        return CommandResult(line, status, output.getvalue().decode(errors="replace"), "",
                             time.monotonic() - started, timed_out=status == -1)

    def stream(self, command: str, output: Optional[Sink] = None, echo: Optional[Sink] = None,
               timeout: Optional[float] = None, handshake: Optional[Callable[[str], Optional[Claim]]] = None,
               cancel: Optional[threading.Event] = None) -> int:
        """Run `command` in the guest; stdout and stderr go, merged, to `output` and `echo`.

        Returns the command's exit status. An SSH failure (exit 255) is GuestUnreachable;
        past `timeout` the local ssh is killed and -1 returned (wrap the command in the
        guest's own `timeout` to kill it there: see runs/suites.py).

        With `handshake`, each line of output goes to it until it claims one that is its last
        (Claim.done); the lines it does not claim go to the sinks. The first input a claim
        carries is the command's whole input. `timeout` counts from the handshake's end.
        (vmlab.sync.gate.SyncGate uses this to sync, if needed, while the session waits.)

        When `cancel` is set, the local ssh is killed and Cancelled raised (vm.watch). Such a
        run's ssh has a process group of its own: Ctrl-C reaches vmlab, which stops it, not ssh.
        """
        proc = subprocess.Popen([*self.ssh_command(), self.destination, command],
                                stdin=subprocess.PIPE if handshake else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                process_group=0 if cancel is not None else None)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        tail = b""
        try:
            if handshake:
                tail = self._handshake(proc, handshake, (output, echo))
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    proc.kill()
                    proc.wait()
                    return -1
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                tick = 0.05 if cancel is not None else 1.0
                if not select.select([fd], [], [], tick if left is None else min(tick, left))[0]:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                tail = (tail + chunk)[-2000:]
                for sink in (output, echo):
                    if sink is not None:
                        sink.write(chunk)
                        sink.flush()
            status = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if status == SSH_FAILED:
            raise GuestUnreachable(f"ssh to {HOST}:{self.port} failed:",
                                   detail=tail.decode(errors="replace").strip()[-500:])
        return status

    @staticmethod
    def _handshake(proc: "subprocess.Popen[bytes]", handshake: Callable[[str], Optional[Claim]],
                   sinks: Tuple[Optional[Sink], ...]) -> bytes:
        """Give `handshake` each line of output until it claims its last; the first input a
        claim carries is written and the command's input closed (closed with nothing if none
        came). Lines it does not claim, and what follows its last, go to `sinks`. Returns them."""
        assert proc.stdout is not None and proc.stdin is not None
        fd, pending, shown = proc.stdout.fileno(), b"", b""
        answered, done = False, False
        while not done:
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # it ended (or ssh failed) before the last line: its status says how
            pending += chunk
            while not done and b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                claim = handshake(line.decode(errors="replace"))
                if claim is None:
                    shown += line + b"\n"
                    continue
                if claim.send is not None and not answered:
                    answered = True
                    _close_input(proc.stdin, claim.send)
                done = claim.done
        if not answered:
            _close_input(proc.stdin, b"")
        shown += pending
        for sink in sinks:
            if sink is not None and shown:
                sink.write(shown)
                sink.flush()
        return shown[-2000:]

    def get(self, remote_path: str) -> Optional[bytes]:
        """The bytes of a file in the guest, or None if it does not exist."""
        proc = subprocess.run([*self.ssh_command(), self.destination,
                               f"test -f {shlex.quote(remote_path)} && cat {shlex.quote(remote_path)}"],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if proc.returncode == SSH_FAILED:
            raise GuestUnreachable(f"ssh to {HOST}:{self.port} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout if proc.returncode == 0 else None

    def put(self, local: Path, remote: str) -> None:
        """Copy a file into the guest over the shared connection (no SFTP session needed)."""
        with open(local, "rb") as data:
            proc = subprocess.run([*self.ssh_command(), self.destination, f"cat > {shlex.quote(remote)}"],
                                  stdin=data, capture_output=True, check=False)
        if proc.returncode == SSH_FAILED:
            raise GuestUnreachable(f"ssh to 127.0.0.1:{self.port} failed: {proc.stderr.decode(errors='replace')}")
        if proc.returncode != 0:
            raise GuestUnreachable(f"could not write {remote} in the guest: {proc.stderr.decode(errors='replace')}")

    def open_in_background(self) -> None:
        """Start opening the shared connection and return at once: the next command finds it
        open, or waits for it (ssh_command). Nothing to do if it is open already."""
        if self.control_path.exists():
            return
        # In the caller's process group: a Ctrl-C that cuts the command off ends it too.
        proc = subprocess.Popen([*self.ssh_command(), self.destination, "true"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._opening.write_text(str(proc.pid))

    def close(self, cut_off: bool = False) -> None:
        """Stop the control master, if one runs (after a restore its connection is dead).

        `cut_off`: this command opened it and was interrupted, maybe while ssh was still
        setting the master up (its socket not there yet): wait for the socket while an ssh of
        this connection runs, and kill any that is left."""
        try:
            control_path = self.control_path
        except PrerequisiteMissing:
            return  # an unsafe folder holds no master of ours: stopping a VM must not fail on it
        self._cancel_opening()  # one being opened in the background would outlive this close
        deadline = time.monotonic() + 3
        while cut_off and not control_path.exists() and self._processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        if control_path.exists():
            subprocess.run([*self.ssh_command(), "-O", "exit", self.destination], stdin=subprocess.DEVNULL,
                           capture_output=True, check=False, timeout=10)
            control_path.unlink(missing_ok=True)
        for pid in self._processes() if cut_off else []:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _processes(self) -> List[int]:
        """Pids of ssh processes of this connection: clients name its control socket in their
        command line, the master in its title ("ssh: PATH [mux]")."""
        option = f"ControlPath={openssh_path(self.control_path)}".encode()
        title = f"ssh: {self.control_path} [mux]".encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit():
                    continue
                cmdline = (proc / "cmdline").read_bytes()
                if option in cmdline.split(b"\0") or cmdline.rstrip(b"\0").startswith(title):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found
