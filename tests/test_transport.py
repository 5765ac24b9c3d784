"""One transport (vmlab/remote/transport.py): both SSH clients, OpenSSH's shared connection and
paramiko's session, run a command, copy a file in and read one back alike, against a real
sshd on 127.0.0.1 (tests/sshd_fixtures.py) with the lab's pinned host key; and the one rule
by which a command becomes root."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from sshd_fixtures import ME
from vmlab.errors import GuestUnreachable, HostKeyMismatch
from vmlab.remote import keys
from vmlab.remote.openssh import SharedConnection
from vmlab.remote.ssh import GuestSSH
from vmlab.remote.transport import Root, Transport


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request: pytest.FixtureRequest, connect: Callable[..., SharedConnection], tmp_path: Path):
    conn = connect(tmp_path)
    if request.param == "openssh":
        yield conn
        return
    with GuestSSH(conn.port, ME, conn.keys) as session:
        yield session


def test_both_clients_run_a_command_and_move_files_alike(transport: Transport, tmp_path: Path) -> None:
    said = transport.run("echo said; exit 3", timeout=60)
    assert (said.exit_status, said.ok, said.stdout) == (3, False, "said\n")
    (tmp_path / "in.bin").write_bytes(bytes(range(256)) * 16)
    transport.put(tmp_path / "in.bin", str(tmp_path / "copied.bin"))
    assert transport.get(str(tmp_path / "copied.bin")) == bytes(range(256)) * 16
    assert transport.get(str(tmp_path / "no-such-file")) is None
    late = transport.run("sleep 5", timeout=1)
    assert late.exit_status == -1 and late.timed_out and not late.ok


def test_a_root_user_runs_a_root_command_as_it_is(transport: Transport) -> None:
    """The sshd here lets in the user running the tests; when that is root (as in CI), as_root
    adds nothing: no sudo is needed, or asked for, to be root already."""
    if ME != "root":
        pytest.skip("the test user is not root: its as_root needs a profile's sudo, which this sshd's host may lack")
    result = transport.run("id -u", as_root=True, timeout=60)
    assert result.ok and result.stdout == "0\n" and result.command == "id -u"


def test_both_clients_refuse_a_guest_with_another_host_key(sshd, runtime: Path, tmp_path: Path) -> None:
    """The host key is pinned in one place (keys.LabKeys) for both clients: a guest that presents
    another lab's host key is refused by each, before any command runs."""
    ours, theirs = keys.ensure(tmp_path / "ours", "test"), keys.ensure(tmp_path / "theirs", "test")
    port = sshd(theirs)
    with GuestSSH(port, ME, ours) as session, pytest.raises(HostKeyMismatch):
        session.connect(timeout=10)
    shared = SharedConnection(tmp_path / "vm", port, ME, ours)
    try:
        with pytest.raises(GuestUnreachable) as refused:
            shared.run("touch " + str(tmp_path / "ran"), timeout=30)
    finally:
        shared.close()
    assert "Host key verification failed" in (refused.value.detail or "")
    assert not (tmp_path / "ran").exists()


def test_root_is_one_rule_for_every_command() -> None:
    """Root as a user (ssh_user: root) runs a command as it is; another user goes through the
    profile's prefix (sudo -n by default, doas -n on some BSDs), a shell line wrapped whole."""
    assert Root("root", "sudo -n").shell("cd /x && make") == "cd /x && make"
    assert Root("root", "sudo -n").program("timeout 5 make") == "timeout 5 make"
    assert Root("dev", "doas -n").shell("cd '/a b' && make") == "doas -n sh -c 'cd '\"'\"'/a b'\"'\"' && make'"
    assert Root("dev", "sudo -n").program("timeout 5 make") == "sudo -n timeout 5 make"
