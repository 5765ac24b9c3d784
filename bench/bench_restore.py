#!/usr/bin/env python3
"""Benchmark: time from "give me a clean VM" to a command answering over SSH.

Runs, in one go on the offline test guest and under the accelerator vmlab picks:
  old way   a new overlay on the clean image + cold boot + wait for SSH
  vmlab     `vmlab restore` of a running VM to its "clean" snapshot (live)
  vmlab     `vmlab restore` of a stopped VM (QEMU started from the snapshot)
  vmlab     `vmlab start` of a new VM: a clone of the golden image, restored from its snapshot
and then the time for 4 clones of one golden image started at once to all answer SSH.
vmlab's side is timed as whole commands, as typed (process start-up included); each
returns only once the guest has run its after-restore command (clock, randomness, name).
The old way is judged ready by an SSH banner and `true` run through paramiko. vmlab's
commands run theirs through the guest agent where the profile has one (the Debian guest
does; SSH is then opened in the background, and --parts times a command sent at once
after the restore), else over SSH, the same kind of check as the old way's.

With --parts it times instead where a live restore's time goes, part by part, in one
process (Python's start-up and imports measured as whole processes beside it), and with
--mapped it tries the other way to load RAM: QEMU's file-backed memory mapped privately
(copy on write) with the migration capability x-ignore-shared, so only the devices' state
is loaded and the guest's RAM is faulted in from the file as it is touched (a new QEMU
process per restore: RAM cannot be remapped under a running one). --memory sets the VM's
RAM (its golden image is made first if missing).

    python bench/bench_restore.py [--rounds 5] [--parts] [--mapped] [--memory MIB]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmlab import config  # noqa: E402
from vmlab.images import golden  # noqa: E402
from vmlab.install import seed  # noqa: E402
from vmlab.lab import Lab, building, images, lifecycle  # noqa: E402
from vmlab.qemu import accel, disk, snapshots  # noqa: E402
from vmlab.qemu.machine import Machine, MachineSpec  # noqa: E402
from vmlab.qemu.qmp import Monitor  # noqa: E402
from vmlab.remote.ssh import GuestSSH  # noqa: E402

VMLAB = Path(sys.executable).parent / "vmlab"
# The modules `vmlab restore` loads (the command, the lab, the snapshots' room, the QMP client),
# its SSH being OpenSSH: a restore's start-up, which `vmlab --version` no longer includes.
RESTORE_IMPORTS = "import vmlab.cli, vmlab.config, vmlab.lab.snapshotting, qemu.qmp.legacy"


def old_way(lab: Lab, gold, work: Path) -> float:
    """New overlay on the clean image, cold boot, wait for SSH: how labs did it before vmlab."""
    vm = lab.vm().config
    state = work / "old"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    started = time.monotonic()
    disk.create_overlay(state / "disk.qcow2", gold.dir / "base.qcow2", vm.disk_bytes)
    machine = Machine("old-way", state)
    spec = MachineSpec(name="old-way", accel=accel.choose(vm.accel, lambda: gold.dir / "vmlinuz", lab.cache.root),
                       memory_mib=vm.memory_mib, cpus=vm.cpus, disk=state / "disk.qcow2",
                       seed_iso=seed.for_vm(state / "seed.iso", gold.keys, "old-way"),
                       kernel=gold.dir / "vmlinuz", initrd=gold.dir / "initrd.img",
                       cmdline="root=/dev/vda rw console=ttyS0,115200 quiet")
    try:
        status = machine.launch(spec)
        with GuestSSH(status.ssh_port, vm.ssh_user, gold.keys) as ssh:
            ssh.wait_ready(300, check=machine.assert_alive)
        return time.monotonic() - started
    finally:
        machine.stop(soft_timeout=0)


def command(work: Path, *args: str) -> float:
    """One vmlab command as a user types it (`vmlab restore`, the venv's console script), timed
    whole: process start-up, imports, the work. It exits only once the guest answered."""
    vmlab = Path(sys.executable).parent / "vmlab"
    started = time.monotonic()
    done = subprocess.run([str(vmlab), *args], cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"vmlab {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return took


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def whole(argv: List[str], cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.monotonic() - started


def parts(lab: Lab, work: Path, rounds: int) -> Dict[str, List[float]]:
    """Each part of a live `vmlab restore`, timed on its own, `rounds` times."""
    vm = lab.vm()
    vmdir = vm.vmdir
    times: Dict[str, List[float]] = {}

    def timed(name: str, step: Callable[[], object]) -> None:
        started = time.monotonic()
        step()
        times.setdefault(name, []).append(time.monotonic() - started)

    for _ in range(rounds):
        timed("python start-up (python -c pass)", lambda: whole([sys.executable, "-c", "pass"], work))
        timed("python + Invoke and vmlab's tasks (vmlab --version)", lambda: whole([str(VMLAB), "--version"], work))
        timed("python + what vmlab restore imports", lambda: whole([sys.executable, "-c", RESTORE_IMPORTS], work))
        timed("vmlab restore, the whole command", lambda: whole([str(VMLAB), "restore"], work))
        timed("  read the config", lambda: config.load(cwd=work))
        timed("  find the snapshot (qemu-img info)", lambda: snapshots.find(vmdir.disk, golden.SNAPSHOT))
        vm.close_connection()
        mon = Monitor(vmdir.machine.qmp_socket, timeout=60)
        timed("  QMP: connect", mon.__enter__)
        timed("  QMP: snapshot-load, the state load", lambda: snapshots.load(mon, vmdir.disk, golden.SNAPSHOT))
        mon.__exit__()
        how = "through the guest agent" if vm.profile.agent else "over SSH (a new shared connection)"
        timed(f"  after-restore command, {how}", lambda: lifecycle.after_restore(vm, 60))
        conn = vm.connection()
        timed("  (then a command at once, as a loop turn's" + (": SSH was opening meanwhile)" if vm.profile.agent
                                                               else ", over that connection)"),
              lambda: conn.stream("true", output=io.BytesIO()))
        with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
            snapshots.load(mon, vmdir.disk, golden.SNAPSHOT)
        vm.close_connection()
        if vm.profile.agent:
            timed("  (over SSH instead: a new shared connection + the after-restore command)",
                  lambda: lifecycle._set_right_over_ssh(vm, 60))
            with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
                snapshots.load(mon, vmdir.disk, golden.SNAPSHOT)
            vm.close_connection()

        def banner() -> None:  # what sshd does before any cryptography: accept, fork, exec, say hello
            with socket.create_connection(("127.0.0.1", vmdir.machine.state()["ssh_port"]), timeout=30) as sock:
                while not sock.recv(256).startswith(b"SSH-"):
                    pass
        timed("  (of the SSH part: sshd's banner, before any key exchange)", banner)
        lifecycle.after_restore(vm, 60)
        with Monitor(vmdir.machine.qmp_socket, timeout=60) as mon:
            snapshots.load(mon, vmdir.disk, golden.SNAPSHOT)
        vm.close_connection()

        def paramiko_way() -> None:
            with GuestSSH(vmdir.machine.state()["ssh_port"], vm.config.ssh_user, vm.keys()) as ssh:
                ssh.wait_ready(60)
                ssh.run("date >/dev/null && hostname default")
        timed("  (before: paramiko connect, `true`, after-restore command)", paramiko_way)
        lifecycle.after_restore(vm, 60)
    return times


def mapped(lab: Lab, work: Path, rounds: int) -> Dict[str, List[float]]:
    """A restore by a new QEMU whose RAM is the snapshot's RAM file mapped privately, the devices'
    state loaded with x-ignore-shared: the floor of loading RAM by mapping it instead of copying."""
    guest = lab.vm()
    vm = guest.config
    gold = images.golden_of(guest)
    assert gold is not None
    shm = Path(tempfile.mkdtemp(prefix="vmlab-bench-ram-", dir="/dev/shm"))
    folder = work / "mapped"
    folder.mkdir()
    disk_file = folder / "disk.qcow2"
    gold.new_disk(disk_file)
    machine = Machine("mapped", folder)
    port = 0
    times: Dict[str, List[float]] = {}
    choice = guest.accelerator(gold.dir)

    def argv(ram: Path, share: str, incoming: bool) -> List[str]:
        spec = MachineSpec(name="mapped", accel=choice, memory_mib=vm.memory_mib, cpus=vm.cpus, disk=disk_file,
                           paused=True, seed_iso=seed.for_vm(folder / "seed.iso", gold.keys, "mapped"),
                           **images.boot_files(guest, gold.dir))
        args = machine.argv(spec, port)
        at = args.index("-m")
        args[at:at + 2] = ["-m", str(vm.memory_mib), "-object", f"memory-backend-file,id=pc.ram,size={vm.memory_mib}M,"
                           f"mem-path={ram},share={share}", "-machine", "memory-backend=pc.ram"]
        return args + (["-incoming", "defer"] if incoming else [])

    ignore_shared = [{"capability": "x-ignore-shared", "state": True}]
    try:
        from vmlab.qemu.machine import free_port
        port = free_port()
        subprocess.run(argv(shm / "live.ram", "on", False), check=True)  # RAM in a shared file, as it runs
        with Monitor(machine.qmp_socket) as mon:
            snapshots.load(mon, disk_file, golden.SNAPSHOT)
            mon.command("cont")
        with GuestSSH(port, vm.ssh_user, gold.keys) as ssh:
            ssh.wait_ready(120)
        with Monitor(machine.qmp_socket) as mon:  # the snapshot: the devices' state, and a frozen copy of RAM
            mon.command("stop")
            mon.command("migrate-set-capabilities", capabilities=ignore_shared)
            mon.command("migrate", uri=f"exec:cat > {folder / 'devices.state'}")
            while mon.command("query-migrate").get("status") not in ("completed", "failed"):
                time.sleep(0.01)
        subprocess.run(["cp", "--sparse=always", str(shm / "live.ram"), str(shm / "frozen.ram")], check=True)
        machine.stop(soft_timeout=0)
        for _ in range(rounds):
            started = time.monotonic()
            subprocess.run(argv(shm / "frozen.ram", "off", True), check=True)  # mapped privately: copy on write
            up = time.monotonic()
            with Monitor(machine.qmp_socket) as mon:
                mon.command("migrate-set-capabilities", capabilities=ignore_shared)
                mon.command("migrate-incoming", uri=f"exec:cat {folder / 'devices.state'}")
                while mon.command("query-migrate").get("status") != "completed":
                    time.sleep(0.005)
                mon.command("cont")
            loaded = time.monotonic()
            with GuestSSH(port, vm.ssh_user, gold.keys) as ssh:
                ssh.wait_ready(60)
            answered = time.monotonic()
            for name, value in (("  QEMU start-up (a new process per restore)", up - started),
                                ("  the devices' state (x-ignore-shared), RAM mapped", loaded - up),
                                ("  the state part: start-up + devices", loaded - started),
                                ("  (then paramiko connect + `true`, RAM faulted in)", answered - loaded)):
                times.setdefault(name, []).append(value)
            machine.stop(soft_timeout=0)
    finally:
        machine.stop(soft_timeout=0)
        shutil.rmtree(shm, ignore_errors=True)
    return times


def print_parts(title: str, times: Dict[str, List[float]]) -> None:
    print(f"\n{title}; load average {load_average()} on {os.cpu_count()} cores; medians (min-max):")
    for name, values in times.items():
        print(f"  {name:<62} {statistics.median(values) * 1000:6.0f} ms  ({min(values) * 1000:.0f}-"
              f"{max(values) * 1000:.0f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", action="store_true", help="time each part of a live restore")
    parser.add_argument("--mapped", action="store_true", help="try RAM mapped from a file (x-ignore-shared)")
    parser.add_argument("--memory", type=int, default=0, help="the VM's RAM in MiB (default: vmlab's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-") as tmp:
        work = Path(tmp)
        memory = f"defaults: {{memory: {args.memory}}}\n" if args.memory else ""
        (work / "vmlab.yaml").write_text(memory + "vms:\n  default: {}\n  w1: {}\n  w2: {}\n  w3: {}\n  w4: {}\n")
        if args.parts or args.mapped:
            lab = Lab(config.load(cwd=work))
            if not images.golden_of(lab.vm()):
                building.make_golden(lab.vm())
            print(f"VM of {lab.vm().config.memory_mib} MiB; load average {load_average()} at the start", flush=True)
            try:
                if args.parts:
                    command(work, "start")
                    print_parts("a live restore, part by part", parts(lab, work, args.rounds))
                    command(work, "stop")
                if args.mapped:
                    print_parts("a restore with RAM mapped from a file", mapped(lab, work, args.rounds))
            finally:
                lifecycle.destroy(lab.vm())
            return 0
        lab = Lab(config.load(cwd=work))
        print("preparing: the golden image and a running VM from it ...", flush=True)
        gold = images.golden_of(lab.vm()) or building.make_golden(lab.vm())
        command(work, "start")
        old, live, cold, clone = [], [], [], []
        try:
            for i in range(args.rounds):
                old.append(old_way(lab, gold, work))
                live.append(command(work, "restore"))
                command(work, "stop")
                cold.append(command(work, "restore"))
                clone.append(command(work, "start", "--vm", "w1"))
                command(work, "destroy", "--yes", "--vm", "w1")
                print(f"round {i + 1}: old way {old[-1]:.2f}s  vmlab restore (running) {live[-1]:.2f}s  "
                      f"(stopped) {cold[-1]:.2f}s  vmlab start of a new clone {clone[-1]:.2f}s", flush=True)
            command(work, "stop")
            clones = ["w1", "w2", "w3", "w4"]
            procs = []
            started = time.monotonic()
            for name in clones:
                procs.append(subprocess.Popen([str(Path(sys.executable).parent / "vmlab"), "start", "--vm", name],
                                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            failed = [(n, p.communicate()[1]) for n, p in zip(clones, procs) if p.wait() != 0]
            four = time.monotonic() - started
            if failed:
                print("clone errors:", *(f"{n}: {err}" for n, err in failed), sep="\n  ")
                return 1
        finally:
            for name in ["default", "w1", "w2", "w3", "w4"]:
                try:
                    lifecycle.destroy(lab.vm(name))
                except Exception:
                    pass
    m_old, m_live, m_cold, m_clone = (statistics.median(x) for x in (old, live, cold, clone))
    print()
    print(f"accelerator: {accel.choose('auto', lambda: gold.dir / 'vmlinuz', lab.cache.root).accel}, "
          f"{args.rounds} rounds, medians, whole commands")
    print(f"  old way (overlay + cold boot + SSH)   : {m_old:6.2f} s")
    print(f"  vmlab restore, VM running             : {m_live:6.2f} s   ratio old/vmlab {m_old / m_live:5.1f}x")
    print(f"  vmlab restore, VM stopped             : {m_cold:6.2f} s   ratio old/vmlab {m_old / m_cold:5.1f}x")
    print(f"  vmlab start, a new clone of the golden: {m_clone:6.2f} s   ratio old/vmlab {m_old / m_clone:5.1f}x")
    print(f"  4 clones started at once, all ready   : {four:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
