"""SSH to a guest with paramiko: connect when ready, run commands, stream their output.

Readiness is an SSH banner plus a command that ran: with QEMU's user network a
TCP connect to the forwarded port succeeds long before the guest's sshd exists.
The guest's host key is pinned from the lab's keys; a different key is refused.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import select
import shlex
import socket
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Dict, List, Optional

from vmlab.command import CommandResult
from vmlab.errors import GuestUnreachable, HostKeyMismatch
from vmlab.remote.keys import LabKeys
from vmlab.remote.transport import Root

if TYPE_CHECKING:  # paramiko (~25 ms) is imported by the first connection: `vm.quick` uses OpenSSH
    import paramiko

# While a guest boots, connection attempts fail by design; paramiko's transport thread
# logs each with a traceback, which without a handler Python prints to stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

BANNER_WAIT = 2.0  # seconds a readiness attempt waits for sshd's banner at first (x1.5 each time, to 10)
OUTPUT_GRACE = 2.0  # seconds to wait for output after the exit status, if EOF does not come


class GuestSSH:
    """One SSH connection to a guest's forwarded port on 127.0.0.1."""

    def __init__(self, port: int, user: str, keys: LabKeys, host: str = "127.0.0.1", *, privileged: str = ""):
        self.port, self.user, self.keys, self.host = port, user, keys, host
        self.root = Root(user, privileged)  # how `run(as_root=True)` becomes root (transport.py)
        self._client: Optional[paramiko.SSHClient] = None
        self.last_error = "no attempt yet"  # why the last wait_ready attempt failed

    def __enter__(self) -> "GuestSSH":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def connect(self, timeout: float = 10.0, sock: Optional[socket.socket] = None) -> None:
        """One attempt (over `sock` if given, connected to the guest's port); raises what
        paramiko raises, except a wrong host key, which is ours."""
        import paramiko

        self.close()
        client = paramiko.SSHClient()
        self.keys.pin(client, self.host, self.port)
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=str(self.keys.client),
                           allow_agent=False, look_for_keys=False, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, sock=sock)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyMismatch(
                f"the guest on 127.0.0.1:{self.port} presented host key {e.key.fingerprint}, not the key "
                f"pinned for this lab ({e.expected_key.fingerprint}, in {self.keys.known_hosts}). Its disk "
                "was not made by this lab or was changed; destroy the VM (`invoke vm.destroy`) and start it again"
            ) from None
        except BaseException:
            client.close()
            raise
        self._client = client

    def wait_ready(self, timeout: float, check: Callable[[], None] = lambda: None) -> float:
        """Retry until a command runs, under one deadline with backoff; returns the seconds it took.

        `check` is called after each failed attempt and may raise (QEMU died). `last_error` says why
        the latest attempt failed, for a caller's progress line (progress.Heartbeat).
        """
        import paramiko

        started = time.monotonic()
        delay, wait, self.last_error = 0.5, BANNER_WAIT, "no attempt yet"
        while True:
            try:
                sock = self._with_banner(wait)
                if sock is None:  # not up yet: ask again soon, a little more patiently
                    self.last_error = "no SSH banner yet (the guest's sshd is not up)"
                    wait = min(wait * 1.5, 10.0)
                else:
                    self.connect(timeout=min(10.0, max(1.0, timeout - (time.monotonic() - started))), sock=sock)
                    if self.run("true", timeout=30).exit_status == 0:
                        return time.monotonic() - started
                    self.last_error = "`true` did not succeed"
            except HostKeyMismatch:
                raise
            except paramiko.AuthenticationException as e:
                self.last_error = f"authentication failed ({e}): the guest does not accept this lab's key"
            except (OSError, EOFError, paramiko.SSHException) as e:  # not up yet, while it boots
                self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.close()
            check()
            now = time.monotonic()
            if now - started >= timeout:
                raise GuestUnreachable(f"SSH on 127.0.0.1:{self.port} did not answer within {timeout:.0f}s "
                                       f"(last error: {self.last_error})")
            time.sleep(min(delay, max(0.0, timeout - (now - started))))
            delay = min(delay * 1.5, 1.0)  # a guest up is seen within a second

    def _with_banner(self, wait: float) -> Optional[socket.socket]:
        """A connection to the guest's port once its sshd has sent its banner (left unread for
        paramiko), else None within `wait` seconds. QEMU's user network accepts a connection
        before the guest can answer it, and while the guest's network is not up yet that
        connection hangs: paramiko alone waited out its whole timeout (10 s) before trying
        again, and a guest up at 15 s was seen at 22."""
        sock = socket.create_connection((self.host, self.port), timeout=min(wait, 2.0))
        try:
            if select.select([sock], [], [], wait)[0] and sock.recv(4, socket.MSG_PEEK) == b"SSH-":
                sock.settimeout(None)
                return sock
        except OSError:
            pass
        sock.close()
        return None

    def run(self, command: str, *, as_root: bool = False, env: Optional[Dict[str, str]] = None,
            cwd: Optional[str] = None, timeout: Optional[float] = None, stdout: Optional[IO[Any]] = None,
            stderr: Optional[IO[Any]] = None, stdin: Optional[BinaryIO] = None) -> CommandResult:
        """Run `command` through the login shell (as root with `as_root`: transport.Root); stream
        output to `stdout`/`stderr` if given: a Transport's run (transport.py), and more.

        A text stream gets the output decoded as UTF-8; a binary one (sys.stdout.buffer) gets
        its bytes untouched, so `vm.ssh -c 'cat image' > copy` copies it exactly.

        The command's input is `stdin`, sent as it can be read, then closed; with no
        `stdin` it is closed at once, so a command that reads its input never waits.
        """
        if self._client is None:
            self.connect()
        assert self._client is not None
        full = command
        if env:
            full = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " sh -c " + shlex.quote(full)
        if cwd:
            full = f"cd {shlex.quote(cwd)} && {full}"
        if as_root:
            full = self.root.shell(full)
        chan = self._session()
        chan.exec_command(full)
        started = time.monotonic()
        out, err = _Sink(stdout), _Sink(stderr)
        timed_out = False
        feeding = stdin is not None
        exited = 0.0  # when the exit status came
        if not feeding:
            chan.shutdown_write()
        try:
            while True:
                if timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                    break
                watched: List[Any] = [chan, stdin] if feeding and stdin is not None else [chan]
                readable = select.select(watched, [], [], 0.2)[0]
                if stdin is not None and stdin in readable:
                    chunk = os.read(stdin.fileno(), 65536)
                    if chunk:
                        chan.sendall(chunk)
                    else:
                        chan.shutdown_write()
                        feeding = False
                while chan.recv_ready():
                    out.feed(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(65536))
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    # sshd may send the exit status before the last output (it reads the
                    # command's pipes apart): wait for its EOF, but not for a daemon the
                    # command left holding them open
                    exited = exited or time.monotonic()
                    if chan.eof_received or time.monotonic() - exited > OUTPUT_GRACE:
                        break
            status = -1 if timed_out else chan.recv_exit_status()
        except socket.error as e:
            raise GuestUnreachable(f"the SSH connection to 127.0.0.1:{self.port} broke during {command!r}: "
                                   f"{e}") from None
        finally:
            chan.close()
        return CommandResult(command, status, out.text(), err.text(), time.monotonic() - started, timed_out)


    def _session(self) -> paramiko.Channel:
        """A new channel; if the connection died (a restore kills it), reconnect once first."""
        import paramiko

        assert self._client is not None
        transport = self._client.get_transport()
        try:
            if transport is None or not transport.is_active():
                raise EOFError("the connection is closed")
            return transport.open_session(timeout=10)
        except (EOFError, OSError, paramiko.SSHException):
            try:
                self.connect()
                assert self._client is not None
                return self._client.get_transport().open_session(timeout=10)  # type: ignore[union-attr]
            except (EOFError, OSError, paramiko.SSHException) as e:
                raise GuestUnreachable(f"SSH to 127.0.0.1:{self.port} is gone and reconnecting failed: {e}") from None

    def put(self, local: Path, remote: str) -> None:
        """Copy a file into the guest over SFTP."""
        if self._client is None:
            self.connect()
        assert self._client is not None
        with self._client.open_sftp() as sftp:
            sftp.put(str(local), remote)

    def get(self, remote: str) -> Optional[bytes]:
        """The bytes of a file in the guest (over SFTP), or None if there is no such file."""
        if self._client is None:
            self.connect()
        assert self._client is not None
        with self._client.open_sftp() as sftp:
            try:
                with sftp.open(remote, "rb") as f:
                    return bytes(f.read())
            except FileNotFoundError:
                return None

    def fetch(self, remote: str, local: Path) -> Path:
        """Copy a file from the guest over SFTP; written under a temporary name, then renamed."""
        if self._client is None:
            self.connect()
        assert self._client is not None
        partial = local.with_name(local.name + ".partial")
        try:
            with self._client.open_sftp() as sftp:
                sftp.get(remote, str(partial))
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            raise FileNotFoundError(f"no file {remote} in the guest") from None
        partial.replace(local)
        return local


class _Sink:
    """Collects a stream's bytes as text and, if asked, echoes it as it arrives: decoded to a
    text stream, as they came to a binary one."""

    def __init__(self, echo: Optional[IO[Any]]):
        self.echo = echo
        self.binary = echo is not None and not isinstance(echo, io.TextIOBase)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []

    def feed(self, data: bytes) -> None:
        chunk = self.decoder.decode(data)
        self.parts.append(chunk)
        shown = data if self.binary else chunk
        if self.echo is not None and shown:
            self.echo.write(shown)
            self.echo.flush()

    def text(self) -> str:
        return "".join(self.parts) + self.decoder.decode(b"", final=True)

