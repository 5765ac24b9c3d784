"""Fixtures: a real sshd on 127.0.0.1 standing in for a guest's (the same programs a VM runs).

Loaded by conftest.py (pytest_plugins), so any test can ask for `sshd`, `connect` or `runtime`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from conftest import prerequisite_missing
from vmlab import host
from vmlab.remote import keys
from vmlab.remote.keys import LabKeys
from vmlab.remote.openssh import SharedConnection

ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR (short: a socket path has 108 bytes at most)."""
    folder = Path(tempfile.mkdtemp(prefix="vr-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Callable[[LabKeys], int]]:
    """serve(keys) starts an sshd on 127.0.0.1 that presents the lab's host key and accepts its
    client key for the current user; returns its port. Stopped at the end of the test."""
    binary = host.which("sshd")
    if binary is None:
        prerequisite_missing("sshd (Debian package openssh-server; its service need not run)")
    started: List[subprocess.Popen] = []

    def serve(lab_keys: LabKeys) -> int:
        folder = Path(tempfile.mkdtemp(prefix="sshd-", dir=tmp_path))
        shutil.copy(lab_keys.host, folder / "host_key")
        (folder / "host_key").chmod(0o600)
        (folder / "authorized_keys").write_text(lab_keys.client_public() + "\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (folder / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\n"
            f"AuthorizedKeysFile {folder}/authorized_keys\nPidFile none\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\n")  # as a guest's sshd has (paramiko's put and get use it)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation folder
        with open(folder / "sshd.log", "wb") as log:
            proc = subprocess.Popen([binary, "-D", "-e", "-f", str(folder / "sshd_config")],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        started.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return port
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "sshd.log").read_text()
            time.sleep(0.05)

    yield serve
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def connect(sshd: Callable[[LabKeys], int], runtime: Path) -> Iterator[Callable[..., SharedConnection]]:
    """connect(project_dir) -> the lab's shared OpenSSH connection to the sshd, as the current
    user; every control master is closed at the end."""
    made: List[SharedConnection] = []

    def connect_(project_dir: Path, user: str = ME) -> SharedConnection:
        lab_keys = keys.ensure(project_dir / "vm" / "keys", "hostile-inputs test")
        conn = SharedConnection(project_dir / "vm" / "default", sshd(lab_keys), user, lab_keys)
        made.append(conn)
        return conn

    yield connect_
    for conn in made:
        conn.close()
