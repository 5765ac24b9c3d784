"""The sync inside a suite's own session (the loop's fast path), on a real sshd.

The guest is stood in for by a real sshd on 127.0.0.1 (sshd_fixtures: the same OpenSSH,
sh, find, tar and rsync a Debian guest runs), the "guest's copy" a folder of this machine.
No VM: what is tested is the session's protocol, which is the same whatever runs sshd.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import prerequisite_missing
from vmlab.config import SuiteConfig, SyncConfig
from vmlab.errors import SyncError
from vmlab.remote.openssh import SharedConnection
from vmlab.runs import suites
from vmlab.runs.results import SuiteResult
from vmlab.sync.gate import SyncGate


class Loop:
    """A project, its copy in the "guest" and the record of what was sent: one turn at a time."""

    def __init__(self, connect: Callable[..., SharedConnection], tmp_path: Path):
        self.project = tmp_path / "project"
        (self.project / "src").mkdir(parents=True)
        (self.project / "src" / "main.c").write_text("int main(void) { return 0; }\n")
        self.conn = connect(self.project)
        self.settings = SyncConfig(guest_dir=str(tmp_path / "guest"))
        self.record = tmp_path / "synced.json"
        self.runs = tmp_path / "results"
        self.runs.mkdir()

    def turn(self, command: str) -> tuple:
        """Run `command` as the suite after syncing in its session: (result, the gate, what it showed)."""
        gate = SyncGate(self.conn, self.project, self.settings, self.record)
        shown = io.BytesIO()
        result = suites.run(self.conn, SuiteConfig(name="unit", command=command, timeout=60),
                            self.settings.guest_dir, self.runs, echo=shown, gate=gate)
        return result, gate, shown.getvalue().decode()


def assert_failed_with(result: SuiteResult, code: int) -> None:
    assert not result.passed and result.exit_code == code, (result.status, result.exit_code, result.note)


@pytest.mark.parametrize("code", [96, 97])
def test_a_suite_exiting_with_any_code_is_reported_with_it_however_the_project_was_sent(
        connect, tmp_path: Path, code: int) -> None:
    """A suite's exit code is its own: 96 and 97 were also the codes the session's sync used to
    say it failed, and a suite exiting 96 after an edit was sent reported "did not run: the
    changed files could not be written" (exit 2) instead of failing with its code."""
    loop = Loop(connect, tmp_path)
    suite = f"cat src/main.c; exit {code}"
    first, gate, shown = loop.turn(suite)  # never synced: rsync
    assert gate.result is not None and "int main" in shown
    assert_failed_with(first, code)
    (loop.project / "src" / "main.c").write_text("int main(void) { return 1; }\n")
    edited, gate, shown = loop.turn(suite)  # an edit alone: written by the session's shell
    assert gate.sent is not None and "return 1" in shown
    assert_failed_with(edited, code)
    (loop.project / "src" / "new.c").write_text("int new;\n")
    added, gate, shown = loop.turn(f"cat src/new.c; exit {code}")  # a new file: a tar on the session's input
    assert gate.sent is not None and "int new" in shown
    assert_failed_with(added, code)
    same, gate, _ = loop.turn(suite)  # nothing changed
    assert gate.sent is None and gate.result is None
    assert_failed_with(same, code)


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`path` cannot be written, even by root (chattr +i): a guest's copy that cannot be made."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        prerequisite_missing(f"chattr +i on {path} (root, and a file system with the immutable flag)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def still_as_sent(loop: Loop) -> None:
    """The guest's stamp written again with the last sync's token: its copy passes the check as
    it is (a change of its own, such as chattr's, is older than the stamp)."""
    token = json.loads(loop.record.read_text())["token"]
    Path(loop.settings.guest_dir + ".vmlab-synced").write_text(token + "\n")


def test_changed_files_the_guest_cannot_write_end_the_turn_before_the_suite_and_the_next_turn_rsyncs(
        connect, tmp_path: Path) -> None:
    """The guest says on its status line that unpacking the tar failed: SyncError naming the
    suite and its log (exit 2: did not run), the suite not run; the next turn syncs with rsync."""
    loop = Loop(connect, tmp_path)
    ran = tmp_path / "suite-ran"
    suite = f"cat src/*.c; touch {ran}"
    loop.turn(suite)
    ran.unlink()
    guest_src = Path(loop.settings.guest_dir) / "src"
    (loop.project / "src" / "new.c").write_text("int new;\n")  # a new file: a tar
    with immutable(guest_src):
        still_as_sent(loop)
        with pytest.raises(SyncError) as failed:
            loop.turn(suite)
    said = str(failed.value)
    assert "the changed files could not be written in the guest's copy" in said and "before suite unit" in said
    assert "unit.log" in said and not ran.exists()
    assert "Cannot open" in (loop.runs / "unit.log").read_text()  # tar's own words, kept in the log
    again, gate, shown = loop.turn(suite)
    assert again.passed and gate.result is not None and "int new" in shown  # by rsync


def test_a_stamp_the_guest_cannot_write_leaves_every_turn_to_rsync_and_says_so(
        connect, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The stamp beside the guest's copy (`<guest_dir>.vmlab-synced`) cannot be written (a
    copy in a folder whose parent the SSH user cannot write): after an edit the session
    writes itself, the guest says its copy is not as sent, rsync makes it so, and the suite
    runs; vmlab says why every turn will be an rsync, and the next turn is one."""
    loop = Loop(connect, tmp_path)
    loop.turn("true")
    (loop.project / "src" / "main.c").write_text("int main(void) { return 2; }\n")
    with immutable(Path(loop.settings.guest_dir + ".vmlab-synced")):
        edited, gate, shown = loop.turn("cat src/main.c")
        assert edited.passed and gate.result is not None and "return 2" in shown  # by rsync, not printf
        assert "could not write vmlab's stamp" in caplog.text and "every turn will sync with rsync" in caplog.text
        assert "vmlab-sync" not in shown and "cannot create" not in shown  # the shell's complaint is not shown
        again, gate, _ = loop.turn("true")
        assert again.passed and gate.result is not None


def test_the_suite_can_print_the_sync_s_own_lines(connect, tmp_path: Path) -> None:
    """Only the session's first lines are vmlab's: the same words from the suite are its output."""
    loop = Loop(connect, tmp_path)
    said = "vmlab-sync: failed\nvmlab-sync: copy stale 1\n"
    result, _, shown = loop.turn(f"printf {shlex.quote(said)}")
    assert result.passed and shown == said and (loop.runs / "unit.log").read_text() == said
