#!/usr/bin/env python3
"""Benchmark: time from "give me a clean VM" to a command answering over SSH.

Runs, in one go on the offline test guest and under the accelerator vmlab picks:
  old way   a new overlay on the clean image + cold boot + wait for SSH
  vmlab     `vmlab restore` of a running VM to its "clean" snapshot (live)
  vmlab     `vmlab restore` of a stopped VM (QEMU started from the snapshot)
  vmlab     `vmlab start` of a new VM: a clone of the golden image, restored from its snapshot
and then the time for 4 clones of one golden image started at once to all answer SSH.
vmlab's side is timed as whole commands, as typed (process start-up included); each
returns only once the guest answered a command over SSH.
The old way is judged ready by an SSH banner and `true` run through paramiko; vmlab's
commands return after the same kind of check (its after-restore commands run over SSH),
so the difference is boot against restore.

    python bench/bench_restore.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmlab import accel, config, disk, seed  # noqa: E402
from vmlab.lab import Lab  # noqa: E402
from vmlab.machine import Machine, MachineSpec  # noqa: E402
from vmlab.ssh import GuestSSH  # noqa: E402


def old_way(lab: Lab, gold, work: Path) -> float:
    """New overlay on the clean image, cold boot, wait for SSH: how labs did it before vmlab."""
    vm = lab.vm()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-") as tmp:
        work = Path(tmp)
        (work / "vmlab.yaml").write_text("vms:\n  default: {}\n  w1: {}\n  w2: {}\n  w3: {}\n  w4: {}\n")
        lab = Lab(config.load(cwd=work))
        print("preparing: the golden image and a running VM from it ...", flush=True)
        gold = lab.golden_of(lab.vm()) or lab.make_golden()
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
                    lab.destroy(name)
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
