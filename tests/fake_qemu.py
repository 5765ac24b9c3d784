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
  seed ISO (its -blockdev node `seed`) the second; the devices the simulation has, and their
  names (vbd0, vtnet0, acd0/cd0, acd1/cd1), come from the -device options (dragonfly_hw);
- booted from its disk (no installer CD), the installed system of
  tests/dragonfly_guest.py runs: its files come out of the qcow2, and a real sshd
  listens on the port of `-netdev user,hostfwd=tcp:127.0.0.1:PORT-:22`;
- the QMP socket answers the greeting, qmp_capabilities, query-status, stop, cont,
  system_powerdown, quit, and the jobs snapshot-save, -load and -delete (with
  query-jobs and job-dismiss): an internal snapshot is written into the real
  qcow2 with `qemu-img snapshot`, after the guest's files; the daemon's stderr
  goes to the -D log;
- the process ends, removing its sockets and pid file, when the simulated guest
  powers off (or on system_powerdown or quit), the guest's files written into
  its disk first.

Where it differs from QEMU: the installer's guest starts when the console is first
connected (QEMU's wait=off starts it at once), and writes the installed files to
a folder beside the disk (DISK.files), packed into the qcow2 at power-off; the
booted guest's writes reach the qcow2 only at a snapshot-save or at power-off
(system_powerdown powers off at once: the guest's shutdown is not played); a
snapshot holds no RAM (vm-state-size 0: a stopped guest's disk), so
snapshot-load reverts the disk (`qemu-img snapshot -a`) and the guest boots from
it when it runs; `stop` pauses nothing but what QMP reports; without
-device VGA the simulated machine has no video device. DFLY_SIM_TICK sets the
simulation's pace (default 0.02 s).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import dragonfly_hw
import dragonfly_sim
from dragonfly_guest import Guest, pack

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


class Machine:
    """What QMP sees of the machine: its run state, its disk and its guest, and the jobs it ran."""

    def __init__(self, disk: Path, paused: bool, guest: Optional[Guest], files: Optional[Path]):
        self.disk, self.guest, self.files = disk, guest, files
        self.status = "prelaunch" if paused else "running"
        self.jobs: Dict[str, Dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.reboot = threading.Event()

    def write_disk(self) -> None:
        """What the guest wrote reaches its qcow2 (a running guest's writes would be there already)."""
        if self.guest is not None and self.guest.files.is_dir():
            pack(self.guest.files, self.disk)
        elif self.files is not None and self.files.is_dir() and self.disk.exists():
            pack(self.files, self.disk)

    def job(self, command: str, args: Dict[str, Any]) -> None:
        """snapshot-save / -load / -delete of QEMU >= 6 on the node `disk0`, concluded at once."""
        nodes = [args.get("vmstate", "disk0")] if command in ("snapshot-save", "snapshot-load") else []
        error = next((f"Cannot find device='' nor node-name='{n}'" for n in [*nodes, *args.get("devices", [])]
                      if n != "disk0"), None)
        tag = args["tag"]
        if error is None:
            listed = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(self.disk)], capture_output=True,
                                    text=True).stdout
            exists = any(line.split()[1:2] == [tag] for line in listed.splitlines()[2:])
            if command == "snapshot-save":
                self.write_disk()
                steps = ([["-d", tag]] if exists else []) + [["-c", tag]]  # QEMU deletes the old one first
            elif command == "snapshot-load" and exists:
                steps = [["-a", tag]]
                if self.guest is not None and self.guest.sshd is not None:
                    self.guest.halt()  # what it ran since is gone: its sessions die, its files are not kept
            elif exists:
                steps = [["-d", tag]]
            else:
                steps, error = [], f"Snapshot '{tag}' not found"
            for step in steps:
                done = subprocess.run(["qemu-img", "snapshot", *step, str(self.disk)], capture_output=True, text=True)
                if done.returncode != 0:
                    error = done.stderr.strip() or f"qemu-img snapshot {step[0]} failed"
                    break
        if command == "snapshot-load" and error is None and self.guest is not None:
            self.reboot.set()  # a live restore: the guest runs from the snapshot's disk (booted by the main thread)
        self.jobs[args["job-id"]] = {"id": args["job-id"], "type": command, "status": "concluded",
                                     "current-progress": 1, "total-progress": 1, **({"error": error} if error else {})}


def _requests(conn: socket.socket) -> Iterator[Dict[str, Any]]:
    """QMP's input is a stream of JSON objects, not lines: qemu.qmp sends no newline after one."""
    decoder, buffer = json.JSONDecoder(), ""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buffer += data.decode()
        while buffer.strip():
            try:
                request, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break  # the rest of it is still coming
            buffer = buffer.lstrip()[end:]
            yield request


def serve_qmp(server: socket.socket, machine: Machine, stop: Callable[[], None]) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_qmp_session, args=(conn, machine, stop), daemon=True).start()


def _qmp_session(conn: socket.socket, machine: Machine, stop: Callable[[], None]) -> None:
    send = lambda obj: conn.sendall((json.dumps(obj) + "\r\n").encode())  # noqa: E731
    send({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": []}})
    for request in _requests(conn):
        command, tag = request.get("execute"), ({"id": request["id"]} if "id" in request else {})
        args = request.get("arguments", {})
        with machine.lock:
            if command in ("qmp_capabilities", "system_powerdown", "quit"):
                send({"return": {}, **tag})
                if command != "qmp_capabilities":
                    stop()
            elif command == "query-status":
                send({"return": {"status": machine.status, "singlestep": False,
                                 "running": machine.status == "running"}, **tag})
            elif command in ("stop", "cont"):
                machine.status = "paused" if command == "stop" else "running"
                send({"return": {}, **tag})
            elif command in ("snapshot-save", "snapshot-delete", "snapshot-load"):
                if args.get("job-id") in machine.jobs:
                    send({"error": {"class": "GenericError", "desc": f"Job ID '{args['job-id']}' already in use"},
                          **tag})
                    continue
                machine.job(command, args)
                send({"return": {}, **tag})
            elif command == "query-jobs":
                send({"return": list(machine.jobs.values()), **tag})
            elif command == "job-dismiss":
                if machine.jobs.pop(args.get("id"), None) is None:
                    send({"error": {"class": "GenericError", "desc": f"Job not found: {args.get('id')}"}, **tag})
                else:
                    send({"return": {}, **tag})
            else:
                send({"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"},
                      **tag})


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
    netdev = qemu_opts(opts["-netdev"][0])[1] if opts.get("-netdev") else {}
    ssh_port = int(netdev["hostfwd"].split(":")[2].split("-")[0]) if "hostfwd" in netdev else 0
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

    disk = Path(drives["disk0-file"])
    from_cd = bool(drives.get("installer"))
    hardware = dragonfly_hw.from_argv(argv)  # the devices DragonFly names, from the argv vmlab gave
    guest = None if from_cd else Guest(disk, pidfile.parent / "dragonfly-guest", ssh_port, hardware)
    machine = Machine(disk, "-S" in opts, guest, Path(f"{disk}.files") if from_cd else None)
    stopping = threading.Lock()

    def stop() -> None:
        if not stopping.acquire(blocking=False):
            return
        try:
            if guest is not None:
                guest.power_off()
            else:
                machine.write_disk()
        except Exception as e:  # noqa: BLE001 (QEMU goes all the same; say why the disk missed it)
            print(f"fake_qemu: writing the guest's files to {disk} failed: {e}", file=sys.stderr)
        for path in (pidfile, Path(qmp_path), Path(console["path"])):
            path.unlink(missing_ok=True)
        os._exit(0)

    if "-daemonize" in opts:
        os.write(ready_w, b"1")
    threading.Thread(target=serve_qmp, args=(qmp_server, machine, stop), daemon=True).start()
    guest_disk = guest.files if guest is not None else Path(f"{disk}.files")
    sim = [f"--socket={console['path']}", f"--world={pidfile.parent / 'dragonfly-sim'}", f"--disk={guest_disk}",
           f"--boot={'cd' if from_cd else 'disk'}", f"--tick={os.environ.get('DFLY_SIM_TICK', '0.02')}",
           f"--hardware={hardware.to_json()}",
           *([f"--seed={drives['seed']}"] if drives.get("seed") else []), *([] if video else ["--no-video"]),
           *([f"--logfile={console['logfile']}"] if console.get("logfile") else [])]
    args = dragonfly_sim.parser().parse_args(sim)
    transcript = Path(console["path"] + ".transcript")
    if from_cd:
        dragonfly_sim.serve(console_server, args, transcript)
        stop()
        return 0
    console_thread = threading.Thread(target=dragonfly_sim.serve, args=(console_server, args, transcript), daemon=True)
    while True:  # until QMP stops the machine. Boots run here: sshd dies with the thread that started it
        while machine.status != "running":  # -S: the guest starts at `cont`
            threading.Event().wait(0.05)
        machine.reboot.clear()
        if guest is not None and guest.boot():
            guest.wait_listening()
        if console_thread.ident is None:
            console_thread.start()  # the console shows the installed files once there are some
        machine.reboot.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
