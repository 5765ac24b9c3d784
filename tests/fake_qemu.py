"""A stand-in for qemu-system-x86_64 that runs the DragonFly simulator, for tests of the real CLI.

QEMU running DragonFly cannot exist here (no DragonFly ISO can be fetched), so a
test that drives `vm.install --vm dragonfly` through the CLI puts this first in
PATH under QEMU's name: vmlab finds QEMU with host.which, which honours PATH.
It reads the argv vmlab gives QEMU and does what vmlab relies on QEMU for:

- with -daemonize it returns once its sockets listen, and the daemon writes the
  -pidfile (vmlab trusts the pid only if /proc/PID/cmdline holds that path: a
  fork keeps the command line);
- the serial chardev's unix socket is played by tests/dragonfly_sim.py, every byte
  also appended to the chardev's logfile=; the installer is cd0, and vmlab's real
  seed ISO (its -blockdev node `seed`) is cd1 in the simulation;
- the QMP socket answers the greeting, qmp_capabilities, query-status,
  system_powerdown and quit; the daemon's stderr goes to the -D log;
- the process ends, removing its sockets and pid file, when the simulated guest
  powers off.

Where it differs from QEMU: the guest starts when the console is first connected
(QEMU's wait=off starts it at once); the qcow2 is not written, the installed files
go to a folder beside it (DISK.files); without -device VGA the simulated machine
has no video device. DFLY_SIM_TICK sets the simulation's pace (default 0.02 s).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import dragonfly_sim

VALUED = {"-name", "-machine", "-accel", "-cpu", "-m", "-smp", "-display", "-pidfile", "-D", "-qmp", "-chardev",
          "-serial", "-blockdev", "-device", "-netdev", "-kernel", "-append", "-initrd"}
FLAGS = {"-S", "-nodefaults", "-no-user-config", "-daemonize"}


def qemu_opts(text: str) -> Tuple[str, Dict[str, str]]:
    """QEMU's option syntax: `first,key=value,...` where ',,' is a literal comma."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == "," and text[i + 1:i + 2] == ",":
            current, i = current + ",", i + 2
        elif text[i] == ",":
            parts.append(current)
            current, i = "", i + 1
        else:
            current, i = current + text[i], i + 1
    parts.append(current)
    return parts[0], dict(p.split("=", 1) for p in parts if "=" in p)


def parse(argv: List[str]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    args = iter(argv)
    for arg in args:
        if arg in VALUED:
            found.setdefault(arg, []).append(next(args))
        elif arg in FLAGS:
            found[arg] = []
        else:
            sys.exit(f"qemu-system-x86_64: {arg}: invalid option")
    return found


def listen(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    return server


def serve_qmp(server: socket.socket, stop) -> None:  # noqa: ANN001
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_qmp_session, args=(conn, stop), daemon=True).start()


def _qmp_session(conn: socket.socket, stop) -> None:  # noqa: ANN001
    send = lambda obj: conn.sendall((json.dumps(obj) + "\r\n").encode())  # noqa: E731
    send({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": []}})
    for line in conn.makefile("r", encoding="utf-8"):
        if not line.strip():
            continue
        request = json.loads(line)
        command, tag = request.get("execute"), ({"id": request["id"]} if "id" in request else {})
        if command in ("qmp_capabilities", "system_powerdown", "quit"):
            send({"return": {}, **tag})
            if command != "qmp_capabilities":
                stop()
        elif command == "query-status":
            send({"return": {"status": "running", "singlestep": False, "running": True}, **tag})
        else:
            send({"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}, **tag})


def main(argv: List[str]) -> int:
    if argv == ["--version"]:
        print("QEMU emulator version 7.2.0 (tests/fake_qemu.py, playing DragonFly)")
        return 0
    opts = parse(argv)
    pidfile = Path(opts["-pidfile"][0])
    qmp_path = qemu_opts(opts["-qmp"][0])[0].removeprefix("unix:")
    _, console = qemu_opts(opts["-chardev"][0])
    drives = {o["node-name"]: o.get("filename") for _, o in map(qemu_opts, opts.get("-blockdev", []))}
    video = any(qemu_opts(d)[0] == "VGA" for d in opts.get("-device", []))
    qmp_server, console_server = listen(qmp_path), listen(console["path"])
    if "-daemonize" in opts:
        ready_r, ready_w = os.pipe()
        if os.fork():
            os.close(ready_w)
            return 0 if os.read(ready_r, 1) == b"1" else 1  # back once the daemon runs, as QEMU does
        os.close(ready_r)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(opts["-D"][0], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if "-D" in opts else null
        for fd, to in ((0, null), (1, null), (2, log)):  # a daemonized QEMU's stderr goes to its -D log
            os.dup2(to, fd)
    pidfile.write_text(f"{os.getpid()}\n")

    def stop() -> None:
        for path in (pidfile, Path(qmp_path), Path(console["path"])):
            path.unlink(missing_ok=True)
        os._exit(0)

    if "-daemonize" in opts:
        os.write(ready_w, b"1")
    threading.Thread(target=serve_qmp, args=(qmp_server, stop), daemon=True).start()
    disk = Path(drives["disk0-file"])
    sim = [f"--socket={console['path']}", f"--world={pidfile.parent / 'dragonfly-sim'}", f"--disk={disk}.files",
           f"--boot={'cd' if drives.get('installer') else 'disk'}", f"--tick={os.environ.get('DFLY_SIM_TICK', '0.02')}",
           *([f"--seed={drives['seed']}"] if drives.get("seed") else []), *([] if video else ["--no-video"]),
           *([f"--logfile={console['logfile']}"] if console.get("logfile") else [])]
    args = dragonfly_sim.parser().parse_args(sim)
    dragonfly_sim.serve(console_server, args, Path(console["path"] + ".transcript"))
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
