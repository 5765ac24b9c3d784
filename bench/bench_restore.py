#!/usr/bin/env python3
"""Benchmark: time from "give me a clean VM" to a command answering over SSH.

Runs, in one go on the offline test guest and under the accelerator vmlab picks:
  old way   a new overlay on the clean image + cold boot + wait for SSH
  vmlab     `Lab.restore()` of a running VM to its "clean" snapshot (live)
  vmlab     `Lab.restore()` of a stopped VM (QEMU started from the snapshot)
and then the time for 4 clones of one golden image to all answer SSH.
Both contenders are judged ready by the same check (an SSH banner and `true`
run through paramiko), so the difference is boot against restore.

    python bench/bench_restore.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
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


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-") as tmp:
        work = Path(tmp)
        (work / "vmlab.yaml").write_text("vms:\n  default: {}\n")
        lab = Lab(config.load(cwd=work))
        print("preparing: the golden image and a running VM from it ...", flush=True)
        gold = lab.golden_of(lab.vm()) or lab.make_golden()
        lab.start()
        old, live, cold = [], [], []
        try:
            for i in range(args.rounds):
                old.append(old_way(lab, gold, work))
                live.append(lab.restore()["total_seconds"])
                lab.stop(soft_timeout=0)
                cold.append(timed(lambda: lab.restore()))
                print(f"round {i + 1}: old way {old[-1]:.2f}s  restore (live) {live[-1]:.2f}s  "
                      f"restore (stopped) {cold[-1]:.2f}s", flush=True)
            lab.stop(soft_timeout=0)
            clones = [f"w{n}" for n in range(1, 5)]
            errors = []

            def start(name: str) -> None:
                try:
                    lab.start(name)
                except Exception as e:  # reported below
                    errors.append(f"{name}: {e}")

            threads = [threading.Thread(target=start, args=(n,)) for n in clones]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            four = time.monotonic() - started
            if errors:
                print("clone errors:", *errors, sep="\n  ")
                return 1
        finally:
            for name in ["default", "w1", "w2", "w3", "w4"]:
                try:
                    lab.destroy(name)
                except Exception:
                    pass
    m_old, m_live, m_cold = (statistics.median(x) for x in (old, live, cold))
    print()
    print(f"accelerator: {accel.choose('auto', lambda: gold.dir / 'vmlinuz', lab.cache.root).accel}, "
          f"{args.rounds} rounds, medians")
    print(f"  old way (overlay + cold boot + SSH) : {m_old:6.2f} s")
    print(f"  vmlab restore, VM running           : {m_live:6.2f} s   ratio old/vmlab {m_old / m_live:5.1f}x")
    print(f"  vmlab restore, VM stopped           : {m_cold:6.2f} s   ratio old/vmlab {m_old / m_cold:5.1f}x")
    print(f"  4 clones of one golden image ready  : {four:6.2f} s (all four answering SSH)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
