"""One VM's QEMU process and its state folder `vm/<name>/`.

QEMU runs detached (its own `-daemonize`: the launching call returns only once
QEMU has opened its sockets, or fails with QEMU's message), never writes to the
caller's terminal (its output goes to `qemu.log`), and is found again through
`qemu.pid`, trusted only if that pid is still this VM's QEMU. The serial console
is a unix socket whose every byte QEMU also appends to `console.log`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from vmlab import host, records
from vmlab.errors import MachineError, PrerequisiteMissing
from vmlab.logtail import last_lines
from vmlab.qemu.accel import AccelChoice
from vmlab.qemu.qmp import Monitor

log = logging.getLogger(__name__)

UNIX_PATH_MAX = 107
ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>])")  # terminal control (boot menus)
START_ATTEMPTS = 5  # a free port can be taken between choosing it and QEMU binding it


@dataclass(frozen=True)
class MachineSpec:
    """Everything QEMU needs to run one VM, resolved by the lab from config and profile."""

    name: str
    accel: AccelChoice
    memory_mib: int
    cpus: int
    disk: Path
    seed_iso: Optional[Path] = None
    kernel: Optional[Path] = None
    initrd: Optional[Path] = None
    cmdline: str = ""
    ssh_port: int = 0  # 0: choose a free port at start
    paused: bool = False  # start with the CPUs stopped (to load a snapshot before anything runs)
    install_iso: Optional[Path] = None  # an installer, as the first CD, booted before the disk
    guest_agent: bool = False  # a virtio port for QEMU's guest agent (qemu-ga), at agent.sock


class State(StrEnum):
    """What a VM is doing, as `vm.status` shows it."""

    RUNNING = "running"
    STOPPED = "stopped"
    CRASHED = "crashed"  # QEMU died without vmlab stopping it
    SUSPENDED = "suspended"  # no QEMU; its whole state is saved on the disk (the lab knows this, not QEMU)


@dataclass
class MachineStatus:
    name: str
    state: State
    pid: Optional[int] = None
    ssh_port: Optional[int] = None
    accel: Optional[str] = None
    qemu_status: Optional[str] = None  # QMP's run state while running: running, paused, ...
    started_at: Optional[float] = None
    detail: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def _qopt(value: object) -> str:
    """Escape a value inside a QEMU option string (commas are doubled)."""
    return str(value).replace(",", ",,")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether QEMU can listen on 127.0.0.1:`port`. As QEMU's user network does, with
    SO_REUSEADDR: connections of a QEMU that quit linger in TIME_WAIT on the port for a minute,
    and a bind without it took them for a listener (a resume right after a suspend refused
    its own port as "already in use")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class Machine:
    """The QEMU process of the VM whose state lives in `dir` (vm/<name>/)."""

    def __init__(self, name: str, dir: Path):
        self.name = name
        self.dir = dir.resolve()
        self.qmp_socket = self.dir / "qmp.sock"
        self.console_socket = self.dir / "console.sock"
        self.console_log = self.dir / "console.log"
        self.agent_socket = self.dir / "agent.sock"  # QEMU's guest agent, when the spec has one (qemu/agent.py)
        self.qemu_log = self.dir / "qemu.log"
        self.pid_file = self.dir / "qemu.pid"
        self.state_file = self.dir / "state.json"
        self.disk = self.dir / "disk.qcow2"

    # --- what is running ---

    def pid(self) -> Optional[int]:
        """The pid of this VM's QEMU if it is alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """Alive, not a zombie, and started with our pidfile: a recycled pid is not trusted."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X") and str(self.pid_file).encode() in cmdline

    def state(self) -> Dict[str, Any]:
        return records.read(self.state_file)

    def status(self, query_qemu: bool = True) -> MachineStatus:
        recorded = self.state()
        pid = self.pid()
        if pid is None:
            if recorded or self.pid_file.exists():
                return MachineStatus(self.name, State.CRASHED, pid=recorded.get("pid"), accel=recorded.get("accel"),
                                     detail=f"QEMU (pid {recorded.get('pid', '?')}) is gone without vmlab "
                                            f"stopping it; see {self.qemu_log}. `vm.start` cleans up and starts again")
            return MachineStatus(self.name, State.STOPPED)
        st = MachineStatus(self.name, State.RUNNING, pid=pid, ssh_port=recorded.get("ssh_port"),
                           accel=recorded.get("accel"), started_at=recorded.get("started_at"),
                           detail=recorded.get("accel_reason", ""))
        if query_qemu:
            try:
                with Monitor(self.qmp_socket, timeout=5) as mon:
                    st.qemu_status = mon.status()
            except MachineError:
                st.qemu_status = "unreachable"
        return st

    # --- start ---

    def launch(self, spec: MachineSpec) -> MachineStatus:
        """Start QEMU for `spec`; returns once QEMU runs (the guest is still booting)."""
        if self.pid() is not None:
            raise MachineError(f"VM {self.name} is already running (pid {self.pid()})")
        self.clean()
        for sock in (self.qmp_socket, self.console_socket, self.agent_socket):
            if len(str(sock).encode()) > UNIX_PATH_MAX:
                raise MachineError(f"{sock} is too long for a unix socket ({UNIX_PATH_MAX} bytes at most); "
                                   "move the project to a shorter path")
        if spec.ssh_port and not port_is_free(spec.ssh_port):
            raise PrerequisiteMissing(
                f"port 127.0.0.1:{spec.ssh_port} (ssh_port of VM {self.name}) is already in use; "
                f"free it (see `ss -ltnp 'sport = :{spec.ssh_port}'`) or set ssh_port: 0 to pick a free one")
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in (self.console_log, self.qemu_log):  # one transcript per boot, and the one before
            if old.exists():
                os.replace(old, old.with_name(old.name + ".1"))
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                port = spec.ssh_port or free_port()
                argv = self.argv(spec, port)
                if attempt > 1:
                    self.qemu_log.unlink(missing_ok=True)  # this attempt's words only
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, timeout=120, check=False)
                if proc.returncode == 0:
                    break
                # Once it has forked (-daemonize), QEMU writes its errors to the -D log, not to
                # stderr: a port taken at the hostfwd is said only in qemu.log. Reading stderr
                # alone, a taken port was never retried, and every such error was empty.
                words = "\n".join(text for text in (proc.stderr.strip(), self._logged()) if text)
                if "host forwarding rule" in words and not spec.ssh_port and attempt < START_ATTEMPTS:
                    log.debug("port %d was taken before QEMU bound it; trying another", port)
                    continue
                raise MachineError(f"QEMU failed to start VM {self.name} (exit {proc.returncode}):",
                                   detail=f"{words}\ncommand: {' '.join(argv)}")
            pid = self.pid()
            if pid is None:
                raise MachineError(f"QEMU reported success but VM {self.name} is not running", log=self.qemu_log)
            self._write_state({"pid": pid, "ssh_port": port, "accel": spec.accel.accel,
                               "accel_reason": spec.accel.reason, "started_at": time.time(), "argv": argv,
                               "qemu_warnings": proc.stderr.strip()})
            return self.status(query_qemu=False)
        except BaseException:  # a failure, or Ctrl-C while QEMU starts: leave no QEMU behind
            self._kill_started()
            self.clean()
            raise

    def _kill_started(self) -> None:
        """Kill every QEMU started with this VM's pidfile, whether or not it has written it yet: a
        Ctrl-C during `qemu -daemonize` kills the parent, and its daemon child may still be setting up
        (seen under load: QEMU running after the interrupted start had said it stopped)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)):
                self._kill(int(entry.name))

    @contextmanager
    def launched(self, spec: MachineSpec) -> Iterator[MachineStatus]:
        """QEMU for `spec`, for a block that makes it useful (waits for SSH, loads a snapshot):
        if the block fails or is interrupted, QEMU is stopped and cleaned up. A VM is up or not at all."""
        status = self.launch(spec)
        try:
            yield status
        except BaseException:
            self.stop(soft_timeout=0)
            raise

    def argv(self, spec: MachineSpec, ssh_port: int) -> List[str]:
        args = [
            host.which("qemu-system-x86_64") or "qemu-system-x86_64",
            "-name", f"vmlab-{spec.name},process=vmlab-{spec.name}",
            "-machine", "pc", *spec.accel.qemu_args(),
            "-m", str(spec.memory_mib), "-smp", str(spec.cpus), *(["-S"] if spec.paused else []),
            "-nodefaults", "-no-user-config", "-display", "none",
            "-daemonize", "-pidfile", str(self.pid_file), "-D", str(self.qemu_log),
            "-qmp", f"unix:{_qopt(self.qmp_socket)},server=on,wait=off",
            "-chardev", f"socket,id=console,path={_qopt(self.console_socket)},server=on,wait=off,"
                        f"logfile={_qopt(self.console_log)},logappend=on",
            "-serial", "chardev:console",
            # node names let QMP address the disk (snapshot jobs take node names)
            "-blockdev", f"driver=file,filename={_qopt(spec.disk)},node-name=disk0-file",
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
            "-device", "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            # A video card, shown nowhere (-display none), as every public DragonFly automation
            # has: without one the live CD's init reports its missing ttyv* between console
            # lines. It comes last so the devices above keep their PCI slots (a snapshot taken
            # without it still loads; `-vga std` would take slot 2 and break them).
            "-device", "VGA",
        ]
        if spec.guest_agent:  # after the VGA card, for the same reason; the port's name is the one qemu-ga opens
            args += ["-chardev", f"socket,id=agent,path={_qopt(self.agent_socket)},server=on,wait=off",
                     "-device", "virtio-serial-pci,id=agent-bus",
                     "-device", "virtserialport,bus=agent-bus.0,chardev=agent,name=org.qemu.guest_agent.0"]
        # The installer is the first CD (acd0/cd0, sr0) and the seed the second (acd1/cd1, sr1):
        # DragonFly's pfi looks for its seed on acd0 cd0 acd1 cd1, the shell recipe mounts cd1.
        if spec.install_iso:
            args += ["-blockdev", f"driver=file,filename={_qopt(spec.install_iso)},node-name=installer,"
                                  "read-only=on",
                     "-device", "ide-cd,drive=installer,id=installer-dev,bus=ide.0,unit=0,bootindex=0"]
        if spec.seed_iso:
            args += ["-blockdev", f"driver=file,filename={_qopt(spec.seed_iso)},node-name=seed,read-only=on",
                     "-device", "ide-cd,drive=seed,id=seed-dev,bus=ide.1,unit=0"]
        if spec.kernel:
            args += ["-kernel", str(spec.kernel), "-append", spec.cmdline]
            if spec.initrd:
                args += ["-initrd", str(spec.initrd)]
        return args

    def _logged(self, lines: int = 20) -> str:
        """The end of qemu.log, or nothing if QEMU wrote none."""
        try:
            return last_lines(self.qemu_log, lines).strip()
        except OSError:
            return ""

    def _write_state(self, data: Dict[str, Any]) -> None:
        records.write(self.state_file, data, indent=2)

    def assert_alive(self) -> None:
        """MachineError with the end of QEMU's log and the console if QEMU has died, or if it holds
        the guest stopped (a failed disk write, a panic): the guest will not answer then, and
        waiting out a boot timeout would only hide why. Meant for between failed attempts: it asks
        QEMU's monitor, which costs a connection."""
        if self.pid() is None:
            raise MachineError(f"QEMU of VM {self.name} exited while the guest was booting.",
                               detail=f"qemu.log:\n{tail(self.qemu_log, 10)}\n"
                                      f"console.log:\n{tail(self.console_log, 20)}")
        try:
            with Monitor(self.qmp_socket, timeout=2) as mon:
                run_state = mon.status()
        except MachineError:
            return  # another client holds the monitor: no reason to stop waiting
        why = self.why_stopped(run_state)
        if why:
            raise MachineError(f"VM {self.name}: QEMU holds the guest stopped ({run_state}): {why}",
                               hint="free what is at fault, then `vmlab restore` (or `vmlab stop` and `vmlab start`)",
                               detail=f"qemu.log:\n{tail(self.qemu_log, 10)}\n"
                                      f"console.log:\n{tail(self.console_log, 20)}")

    def why_stopped(self, run_state: str) -> str:
        """What a QEMU run state in which the guest will not go on by itself means; '' for the
        others (running, and the passing states of a start or a snapshot)."""
        if run_state == "io-error":  # -drive's default werror=enospc: paused on a write that found no room
            free = host_free_bytes(self.dir)
            return (f"a write to its disk failed, most likely for want of room where {self.disk} lives "
                    f"({free >> 20} MiB free now)")
        return {"guest-panicked": "the guest's kernel panicked (see console.log)",
                "internal-error": "QEMU met an internal error (see qemu.log)",
                "shutdown": "the guest shut itself down",
                "paused": "it was paused from QEMU's monitor (QMP `stop`)"}.get(run_state, "")

    def wait_console(self, pattern: str, timeout: float) -> str:
        """The first console.log line matching `pattern` (a regex), waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                for line in self.console_log.read_text(errors="replace").splitlines():
                    if re.search(pattern, line):
                        return line.strip()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise MachineError(f"VM {self.name}: nothing matching {pattern!r} on the console within "
                                   f"{timeout:.0f}s", detail=f"Last lines of {self.console_log}:\n"
                                                             f"{tail(self.console_log, 15)}")
            time.sleep(0.2)

    # --- stop ---

    def stop(self, soft_timeout: float = 60.0) -> str:
        """Power off softly (ACPI), then `quit`, then SIGKILL; always clean up. Returns what it took."""
        pid = self.pid()
        if pid is None:
            was = "crashed" if self.state() or self.pid_file.exists() else "stopped"
            self.clean()
            return f"was not running ({was}); cleaned up" if was == "crashed" else "was not running"
        how = ""
        try:
            if soft_timeout > 0 and self._ask(pid, "system_powerdown", soft_timeout):
                how = "powered off by the guest"
            elif self._ask(pid, "quit", 10):
                how = "quit QEMU (the guest did not power off)" if soft_timeout > 0 else "quit QEMU"
        finally:  # also on Ctrl-C: never leave QEMU running half-stopped
            if not how:
                self._kill(pid)
                how = "killed QEMU"
            self.clean()
        return how

    def _ask(self, pid: int, command: str, wait: float) -> bool:
        """Send a QMP command and wait for QEMU to exit; False if it did not."""
        try:
            with Monitor(self.qmp_socket, timeout=5) as mon:
                if command == "system_powerdown" and mon.status() != "running":
                    return False  # a paused guest cannot react to ACPI
                mon.command(command)
        except MachineError:
            if not self._is_ours(pid):
                return True
            return False
        return self._wait_gone(pid, wait)

    def wait_stopped(self, timeout: float) -> bool:
        """True once QEMU has exited (the guest powered off), False if it still runs after `timeout` s."""
        pid = self.pid()
        return True if pid is None else self._wait_gone(pid, timeout)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._is_ours(pid):
                return True
            time.sleep(0.1)
        return not self._is_ours(pid)

    def _kill(self, pid: int) -> None:
        if self._is_ours(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(pid, 10)

    def clean(self) -> None:
        """Remove what only a running QEMU needs: sockets, pid and state files. Logs stay, and the
        state (QEMU's command line, pid, port) as last-state.json, for the diagnostics of a failed start."""
        if self.state_file.exists():
            os.replace(self.state_file, self.dir / "last-state.json")
        for path in (self.qmp_socket, self.console_socket, self.agent_socket, self.pid_file, self.state_file):
            path.unlink(missing_ok=True)


def host_free_bytes(folder: Path) -> int:
    """Room left on the host filesystem that holds `folder`."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def tail(path: Path, lines: int) -> str:
    try:
        return last_lines(path, lines)
    except OSError:
        return f"({path} is missing)"


def last_line(path: Path) -> str:
    """The last line of `path` that is not blank: what a booting guest printed last."""
    lines = [line for line in ESCAPES.sub("", tail(path, 5)).splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else ""  # boot menus pad with runs of spaces


def console_now(path: Path, width: int = 80) -> str:
    """The console's last line for one line of progress: its end, cut at a word."""
    line = last_line(path)
    if not line:
        return "(nothing yet)"
    return line if len(line) <= width else "..." + line[-width:].split(" ", 1)[-1]
