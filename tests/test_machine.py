"""A real VM's lifecycle through the CLI: start, QMP, console, SSH, stop, and what goes wrong."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Set

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from conftest import INVOKE, Project, alive, prerequisite_missing, qemu_processes
from vmlab import host
from vmlab.errors import MachineError
from vmlab.qemu import machine as machine_mod
from vmlab.qemu.accel import AccelChoice
from vmlab.qemu.machine import START_ATTEMPTS, Machine, MachineSpec, State
from vmlab.qemu.qmp import Monitor

RUNTIME_FILES = ("qmp.sock", "console.sock", "qemu.pid", "state.json")
# A new VM starts from a golden image when one matches its shape (then it is restored, not
# booted); no golden image has this memory size, so these VMs really boot.
BOOTS = "defaults: {memory: 900}\n"


def status(project: Project, vm: str = "default") -> dict:
    result = project.invoke("vm.status", "--json", "--vm", vm)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start(project: Project, *args: str) -> subprocess.CompletedProcess:
    result = project.invoke("vm.start", *args)
    assert result.returncode == 0, result.stderr
    return result


def wait_for_text(path: Path, text: str, timeout: float) -> bool:
    """getty prints its prompt a moment after sshd answers: poll the log, do not race it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def listening_addresses(port: int) -> set:
    """Local addresses with a listening TCP socket on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_start_status_ssh_stop_start_again(project: Project, vm_ready) -> None:
    state_dir = project.root / "vm" / "default"
    project.write_config(BOOTS)
    start(project)
    first = status(project)
    pid = first["pid"]
    assert first["state"] == "running" and first["accel"] in ("kvm", "tcg")
    assert os.readlink(f"/proc/{pid}/exe").endswith("qemu-system-x86_64")
    qmp = QEMUMonitorProtocol(str(state_dir / "qmp.sock"))  # QEMU's own client, not vmlab's wrapper
    qmp.connect()
    assert qmp.cmd("query-status")["status"] == "running"
    qmp.close()
    assert wait_for_text(state_dir / "console.log", "default login:", 60)
    assert listening_addresses(first["ssh_port"]) == {"0100007F"}  # 127.0.0.1 only
    ran = project.invoke("vm.ssh", "-c", "echo hello from $(hostname); echo oops >&2; exit 7")
    assert ran.returncode == 7
    assert ran.stdout == "hello from default\n" and "oops" in ran.stderr

    stopped = project.invoke("vm.stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "powered off by the guest" in stopped.stdout
    assert not alive(pid)
    assert [f for f in RUNTIME_FILES if (state_dir / f).exists()] == []
    assert status(project)["state"] == "stopped"

    start(project)
    second = status(project)
    assert second["state"] == "running" and second["pid"] != pid
    assert project.invoke("vm.ssh", "-c", "true").returncode == 0
    assert project.invoke("vm.stop").returncode == 0


def test_two_vms_at_once_get_their_own_ports_and_do_not_disturb_each_other(project: Project, vm_ready) -> None:
    project.write_config("vms:\n  one: {}\n  two: {}\n")
    env = dict(os.environ)
    procs = [subprocess.Popen([INVOKE, "vm.start", "--vm", name], cwd=project.root, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("one", "two")]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    one, two = status(project, "one"), status(project, "two")
    assert one["ssh_port"] != two["ssh_port"] and one["pid"] != two["pid"]
    assert project.invoke("vm.ssh", "--vm", "one", "-c", "touch /root/only-in-one").returncode == 0
    two_sees = project.invoke("vm.ssh", "--vm", "two", "-c", "hostname; ls /root/only-in-one")
    assert two_sees.stdout.startswith("two\n") and two_sees.returncode != 0
    assert project.invoke("vm.stop", "--vm", "one").returncode == 0
    assert status(project, "two")["state"] == "running"
    assert project.invoke("vm.ssh", "--vm", "two", "-c", "true").returncode == 0
    table = project.invoke("vm.status").stdout
    assert [line.split()[:2] for line in table.splitlines()[1:]] == [["one", "stopped"], ["two", "running"]]
    assert project.invoke("vm.stop", "--vm", "two").returncode == 0


def test_qemu_killed_is_reported_and_start_recovers(project: Project, vm_ready) -> None:
    """The default shape: the first start restores a copy of the golden image (when one is made);
    the start after the kill boots that disk, left as a crash leaves it."""
    start(project)
    pid = status(project)["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    crashed = status(project)
    assert crashed["state"] == "crashed" and "gone without vmlab stopping it" in crashed["detail"]
    assert "crashed" in project.invoke("vm.status").stdout
    restarted = start(project)
    assert "cleaning up" in restarted.stderr
    again = status(project)
    assert again["state"] == "running" and again["pid"] != pid
    assert project.invoke("vm.ssh", "-c", "true").returncode == 0
    assert project.invoke("vm.stop").returncode == 0


def test_fixed_port_already_taken_is_refused_and_nothing_runs(project: Project, vm_ready) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        project.write_config(f"defaults: {{ssh_port: {port}}}\n")
        result = project.invoke("vm.start")
    assert result.returncode == 2
    assert f"port 127.0.0.1:{port} (ssh_port of VM default) is already in use" in result.stderr
    assert not (project.root / "vm" / "default" / "qemu.pid").exists()


def test_ctrl_c_while_starting_leaves_nothing_running(project: Project, vm_ready) -> None:
    project.write_config(BOOTS)
    proc = subprocess.Popen([INVOKE, "vm.start"], cwd=project.root, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = project.root / "vm" / "default" / "qemu.pid"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # QEMU creates its pidfile a moment before it writes the pid
        if pid_file.exists() and pid_file.read_text().strip().isdigit():
            break
        time.sleep(0.05)
    qemu_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert not alive(qemu_pid)
    assert status(project)["state"] == "stopped"


def test_stop_and_destroy_of_a_vm_that_is_not_running(project: Project) -> None:
    result = project.invoke("vm.stop")
    assert result.returncode == 0 and "was not running" in result.stdout
    refused = project.invoke("vm.destroy")
    assert refused.returncode == 1 and "Refusing without --yes" in refused.stderr
    (project.root / "vm" / "default").mkdir(parents=True)
    (project.root / "vm" / "default" / "disk.qcow2").write_bytes(b"")
    assert project.invoke("vm.destroy", "--yes").returncode == 0
    assert not (project.root / "vm" / "default").exists()


def test_qemu_refusing_a_command_is_a_one_line_vmlab_error(tmp_path: Path) -> None:
    """A real QEMU (no guest: -machine none) refuses a QMP command; before, reading the
    error's description raised AttributeError and the user got a traceback."""
    sock = tmp_path / "qmp.sock"
    qemu = subprocess.Popen([host.which("qemu-system-x86_64") or "qemu-system-x86_64", "-machine", "none",
                             "-nodefaults", "-display", "none", "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with Monitor(sock) as mon:
            with pytest.raises(MachineError) as refused:
                mon.command("blockdev-del", **{"node-name": "no-such-node"})
    finally:
        qemu.kill()
        qemu.wait()
    assert str(refused.value) == "QEMU refused blockdev-del: Failed to find node with node-name='no-such-node'"


def test_the_monitor_gives_up_within_its_timeout_while_another_client_holds_qemus_monitor(tmp_path: Path) -> None:
    """QEMU greets one QMP client at a time; qemu.qmp's legacy connect() waits for the greeting
    without a deadline, so `vm.status` hung for good while e.g. a user's socat held the monitor."""
    if not host.which("qemu-system-x86_64"):
        pytest.skip("no qemu-system-x86_64")
    sock, pidfile = tmp_path / "qmp.sock", tmp_path / "qemu.pid"
    subprocess.run(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S", "-daemonize",
                    "-qmp", f"unix:{sock},server=on,wait=off", "-pidfile", str(pidfile)], check=True)
    pid = int(pidfile.read_text())
    try:
        with socket.socket(socket.AF_UNIX) as holder:
            holder.connect(str(sock))
            assert holder.recv(4096).startswith(b'{"QMP"')  # the first client has the monitor
            started = time.monotonic()
            with pytest.raises(MachineError, match="did not answer within 1s"):
                with Monitor(sock, timeout=1):
                    pass
            assert time.monotonic() - started < 5
        with Monitor(sock, timeout=5) as mon:  # once it is free, the monitor answers again
            assert mon.status() == "prelaunch"
    finally:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:  # gone before the session's leak check looks
            time.sleep(0.05)


# --- a forwarded port taken between choosing it and QEMU binding it ---


class PortTaker:
    """Takes the SSH port of each of the first `times` QEMUs this process starts, in the moment
    between vmlab choosing the port (free then) and QEMU binding it: it finds the QEMU child as
    soon as it has exec'd (its command line in /proc), stops it (SIGSTOP) before it gets
    anywhere near its network setup, listens on the port named in its `hostfwd=`, and lets it
    go on (SIGCONT). Nothing is mocked: vmlab's own chooser picks the port, the real QEMU
    finds it taken."""

    HOSTFWD = re.compile(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22")

    def __init__(self, times: int):
        self.times = times
        self.taken: List[int] = []  # the ports it holds, in order
        self.late: List[int] = []  # ports QEMU had bound before it could take them
        self.seen: Set[int] = set()
        self.holders: List[socket.socket] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "PortTaker":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        for holder in self.holders:
            holder.close()

    def _children(self) -> List[int]:
        found = []
        for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in children.read_text().split()]
        return found

    def _watch(self) -> None:
        while not self.done.is_set() and len(self.taken) + len(self.late) < self.times:
            for pid in self._children():
                if pid in self.seen:
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                port = self.HOSTFWD.search(cmdline)
                if "qemu-system" not in cmdline or not port:
                    continue  # not exec'd yet (a fork of this process), or not a VM's QEMU
                self.seen.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                try:
                    holder = socket.socket()
                    holder.bind(("127.0.0.1", int(port.group(1))))
                    holder.listen()
                    self.holders.append(holder)
                    self.taken.append(int(port.group(1)))
                except OSError:
                    holder.close()
                    self.late.append(int(port.group(1)))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.001)


@pytest.fixture
def tiny_spec(tmp_path: Path) -> MachineSpec:
    """The smallest real QEMU vmlab starts: TCG, 64 MiB, a 16 MiB empty disk, CPUs stopped (-S):
    no guest ever runs, so it costs next to no CPU."""
    qemu = host.which("qemu-system-x86_64")
    if qemu is None or host.which("qemu-img") is None:
        prerequisite_missing("qemu-system-x86_64 and qemu-img are needed")
    disk_path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk_path), "16M"], check=True)
    return MachineSpec(name="porttest", accel=AccelChoice("tcg", "test"), memory_mib=64, cpus=1, disk=disk_path,
                       paused=True)


def test_a_port_whose_last_connections_linger_in_time_wait_is_free_and_a_listened_one_is_not() -> None:
    """A QEMU that quit leaves its forwarded port's connections in TIME_WAIT (it closed them
    first); QEMU's user network listens with SO_REUSEADDR, so the port is free to it, and a
    resume right after a suspend must not refuse its own port. Real sockets on 127.0.0.1."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not machine_mod.port_is_free(port)  # something listens: taken
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the listening side closes first: its end waits in TIME_WAIT on `port`
        client.recv(1)
        client.close()
    assert any(line.split()[3] == "06" and int(line.split()[1].split(":")[1], 16) == port
               for line in Path("/proc/net/tcp").read_text().splitlines()[1:])  # TIME_WAIT is there
    assert machine_mod.port_is_free(port)


def test_a_port_taken_before_qemu_binds_it_is_retried_with_another(tiny_spec: MachineSpec, tmp_path: Path) -> None:
    machine = Machine("porttest", tmp_path / "m")
    try:
        with PortTaker(times=1) as taker:
            status = machine.launch(tiny_spec)
            assert taker.late == [], "QEMU bound the port before the test could take it: the race was not made"
            assert len(taker.taken) == 1
            assert status.state == State.RUNNING
            port = machine.state()["ssh_port"]
            assert port != taker.taken[0]  # the second attempt, on another port
            assert f"hostfwd=tcp:127.0.0.1:{port}-:22" in " ".join(machine.state()["argv"])
            assert listening_addresses(port) == {"0100007F"}  # QEMU forwards it, on 127.0.0.1 only
            assert len(qemu_processes(machine.dir)) == 1  # the first attempt's QEMU is gone
        with Monitor(machine.qmp_socket) as mon:
            assert mon.status() == "prelaunch"
    finally:
        machine.stop(soft_timeout=0)
    assert not qemu_processes(machine.dir)


def test_a_port_taken_at_every_attempt_fails_naming_qemus_words_and_leaves_nothing(
        tiny_spec: MachineSpec, tmp_path: Path) -> None:
    machine = Machine("porttest", tmp_path / "m")
    try:
        with PortTaker(times=START_ATTEMPTS) as taker:
            with pytest.raises(MachineError) as failed:
                machine.launch(tiny_spec)
            assert taker.late == [] and len(taker.taken) == START_ATTEMPTS  # each attempt had its own port
            assert len(set(taker.taken)) == START_ATTEMPTS
    finally:
        machine.stop(soft_timeout=0)
    message = str(failed.value)
    assert "QEMU failed to start VM porttest" in message
    assert f"Could not set up host forwarding rule 'tcp:127.0.0.1:{taker.taken[-1]}-:22'" in message
    assert not qemu_processes(machine.dir)
    assert [f for f in RUNTIME_FILES if (machine.dir / f).exists()] == []


def test_ctrl_c_while_qemu_daemonizes_leaves_no_qemu_even_before_its_pidfile(
        tiny_spec: MachineSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C during `qemu -daemonize` kills the parent; its daemon may still be setting up, its
    pidfile unwritten (a 3-worker test run left a QEMU so). Real QEMU, started late by a stand-in
    parent: what cannot be made on demand is a QEMU that is that slow to daemonize."""
    real = host.which("qemu-system-x86_64")
    slow = tmp_path / "bin" / "qemu-system-x86_64"
    slow.parent.mkdir()
    slow.write_text(f'#!/bin/sh\n(sleep 1.5; exec {real} "$@") &\nsleep 60\n')  # the daemon comes after its parent
    slow.chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow.parent}:{os.environ['PATH']}")
    machine = Machine("porttest", tmp_path / "m")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            machine.launch(tiny_spec)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(3)  # past the moment the daemon would have started QEMU
    assert qemu_processes(tmp_path / "m") == [] and machine.pid() is None
