"""The console's failure rules: a sign that a step cannot succeed fails it at once.

A kernel panic, the kernel debugger's `db>` prompt, a question nobody will answer and a
recipe's own rule seen `times: N` times each end the step within a moment, naming what
the rule means and showing the console, instead of waiting out the step's idle deadline
(20 s here) or its limit. The login rules are tested with the DragonFly simulator
(test_dragonfly_recipe.py).

The guest is played by a real shell (`sh`) on a real pty, relayed to a unix socket as
QEMU serves a serial console: the real Console and Recipe code connect to it. The words
the guest prints are the real systems' (FreeBSD/DragonFly's panic and ddb, Linux's panic,
apt's and pkg's questions); what is not real is that a shell prints them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from vmlab.errors import ConsoleError
from vmlab.install import recipe
from vmlab.install.console import Console

IDLE, LIMIT = 20.0, 30.0  # the step's deadlines: a failure rule must end it long before
AT_ONCE = 5.0


@contextlib.contextmanager
def guest(sock: Path, script: Optional[str] = None) -> Iterator[None]:
    """A console on unix socket `sock`: once a client connects, `sh -c script` (an interactive
    `sh` without a script) runs on a pty whose bytes are relayed to and from the client."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(1)
    procs = []
    stop = threading.Event()

    def relay() -> None:
        conn, _ = server.accept()
        master, slave = os.openpty()
        argv = ["sh", "-c", script] if script is not None else ["sh", "-i"]
        procs.append(subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                      env={"PATH": "/usr/bin:/bin", "PS1": "# ", "TERM": "dumb"}))
        os.close(slave)
        try:
            while not stop.is_set():
                ready, _, _ = select.select([conn, master], [], [], 0.1)
                if master in ready:
                    try:
                        data = os.read(master, 4096)
                    except OSError:  # EIO: the shell exited
                        break
                    conn.sendall(data)
                if conn in ready:
                    data = conn.recv(4096)
                    if not data:
                        break
                    os.write(master, data)
        finally:
            conn.close()
            os.close(master)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not procs:  # nobody connected: end the accept()
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as poke:
                poke.connect(str(sock))
        thread.join(timeout=5)
        server.close()


def fails_at_once(action, means: str) -> str:
    """Run `action`; it must raise ConsoleError naming `means` well before any deadline."""
    started = time.monotonic()
    with pytest.raises(ConsoleError) as failure:
        action()
    took = time.monotonic() - started
    message = str(failure.value)
    assert means in message, message
    assert took < AT_ONCE, f"it took {took:.1f}s: {message}"
    return message


PANIC_BSD = r"Fatal trap 12: page fault while in kernel mode\npanic: vm_fault: page not present\ncpuid = 0\n"
PANIC_LINUX = r"Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n"
DDB = r"Stopped at      Debugger+0x7c:  movb    \$0,0xbc5b4c(%%rip)\ndb> "


@pytest.mark.parametrize("printed, means", [
    (PANIC_BSD, "the guest kernel panicked"),
    (PANIC_LINUX, "the guest kernel panicked"),
    (DDB, "the guest dropped into its kernel debugger"),
    (r"After this operation, 12 MB of additional disk space will be used.\nDo you want to continue? [Y/n] ",
     "a command is asking a question nobody will answer"),
    (r"Proceed with this action? [y/N]: ", "a command is asking a question nobody will answer"),
    (r"Do you want to fetch and install it now? [y/N]: ", "a command is asking a question nobody will answer"),
    (r"Overwrite /etc/rc.conf? (y/n) ", "a command is asking a question nobody will answer"),
], ids=["bsd-panic", "linux-panic", "ddb", "apt", "pkg-install", "pkg-bootstrap", "overwrite"])
def test_a_failure_rule_ends_a_waiting_step_at_once(tmp_path: Path, printed: str, means: str) -> None:
    """The guest prints the sign, then waits (sleep) as a stuck guest does, never printing the
    text the step waits for."""
    sock = tmp_path / "console.sock"
    with guest(sock, f"sleep 0.3; printf '{printed}'; exec sleep 600"), Console(sock) as con:
        message = fails_at_once(lambda: con.expect(["login: "], "boot the installed disk", IDLE, LIMIT), means)
    assert "step 'boot the installed disk'" in message and "console lines:" in message


def test_a_failure_rule_ends_a_command_at_our_prompt_at_once(tmp_path: Path) -> None:
    """A panic while a command runs at vmlab's own prompt (a `run:` step). The command is typed
    with the words split ('pan''ic'), so that its echo is not the sign: only its output is."""
    sock = tmp_path / "console.sock"
    with guest(sock), Console(sock) as con:
        con.use_shell("/bin/sh", "shell", IDLE, LIMIT)
        assert con.run("echo ready", "warm up", IDLE, LIMIT) == 0
        message = fails_at_once(lambda: con.run("printf 'pan''ic: ffs_valloc: dup alloc\\n'; sleep 600",
                                                "install onto the disk", IDLE, LIMIT),
                                "the guest kernel panicked")
    assert "step 'install onto the disk'" in message and "panic: ffs_valloc: dup alloc" in message


def test_a_failure_rule_ends_a_power_off_at_once(tmp_path: Path) -> None:
    """A panic while the guest powers off (a `power_off:` step: vmlab waits for QEMU to exit).
    A BSD that panics while unmounting at shutdown sits at `db>` and QEMU never exits."""
    sock = tmp_path / "console.sock"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "off.yaml").write_text(
        "description: power off\nsteps:\n"
        "  - {name: shell, shell: /bin/sh, idle: 20, limit: 30}\n"
        "  - {name: power off, power_off: \"printf 'Syncing disks... done\\\\npan''ic: softdep_deallocate\\\\n'"
        "; sleep 600\", limit: 30}\n")
    rec = recipe.load(tmp_path / "r" / "off.yaml")
    with guest(sock), Console(sock, fails=rec.fails) as con:
        message = fails_at_once(lambda: rec.run(con, {}), "the guest kernel panicked")
    assert "step 'power off'" in message and "panic: softdep_deallocate" in message


BOOT_LOOP_RECIPE = """\
description: a boot that must not loop
fail:
  - {pattern: 'Booting in 10 seconds', means: 'a boot loop: the loader came back', times: 2}
steps:
  - {name: boot, expect: 'login: ', idle: 20, limit: 30}
"""


def boot_loop_recipe(tmp_path: Path) -> recipe.Recipe:
    (tmp_path / "r").mkdir(exist_ok=True)
    (tmp_path / "r" / "boot.yaml").write_text(BOOT_LOOP_RECIPE)
    return recipe.load(tmp_path / "r" / "boot.yaml")


def test_a_recipe_rule_seen_its_number_of_times_fails_at_once(tmp_path: Path) -> None:
    """The loader's countdown a second time, the guest still booting (never a login prompt)."""
    rec = boot_loop_recipe(tmp_path)
    sock = tmp_path / "console.sock"
    banner = r"Booting in 10 seconds...\n"
    with guest(sock, f"printf '{banner}'; sleep 0.5; printf 'kernel...\\n{banner}'; exec sleep 600"), \
            Console(sock, fails=rec.fails) as con:
        message = fails_at_once(lambda: rec.run(con, {}), "a boot loop: the loader came back")
    assert "step 'boot'" in message


def test_a_recipe_rule_seen_fewer_times_does_not_fail(tmp_path: Path) -> None:
    """Once is a normal boot: the step ends at the login prompt."""
    rec = boot_loop_recipe(tmp_path)
    sock = tmp_path / "console.sock"
    with guest(sock, r"printf 'Booting in 10 seconds...\nkernel...\nlogin: '; exec sleep 600"), \
            Console(sock, fails=rec.fails) as con:
        rec.run(con, {})
        assert con.tail().endswith("login:")
