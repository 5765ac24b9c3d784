#!/usr/bin/env python3
"""Soak: 50 restores and 50 loop turns on one VM; nothing may grow without bound.

On the offline test guest (started from its golden image), after a warm-up of a few
of each, it takes a baseline, then runs `invoke vm.restore` and `invoke vm.quick` (one
file edited each turn) N times each, alternating, and samples after every command:

  overlay    the VM's disk.qcow2 on the host (its snapshots live in it)
  rss        QEMU's resident memory
  fds        QEMU's open files
  procs      processes of the lab: QEMU, and ssh (the control master and any client left), counted
             in a runtime folder of the soak's own so another lab's on the machine do not count

Each must stay under a bound printed before the run (the baseline plus a margin; for
QEMU's memory, the guest's RAM plus 256 MiB: restores bring more of it in, once). At the end the golden image's
files must still match the sha256 its manifest records. Exit 1 if a bound or the check
failed.

    python bench/bench_soak.py [--turns 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmlab import config  # noqa: E402
from vmlab.images import golden  # noqa: E402
from vmlab.images.cache import MANIFEST, sha256_file  # noqa: E402
from vmlab.lab import Lab, images, lifecycle  # noqa: E402

INVOKE = str(ROOT / ".venv" / "bin" / "invoke")
MiB = 1 << 20


def sample(vm_dir: Path, pid: int) -> Dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    runtime = re.escape(os.environ["XDG_RUNTIME_DIR"])  # the soak's own: not another lab's masters
    mine = rf"{re.escape(str(vm_dir))}|^ssh: {runtime}/|^ssh .*ControlPath=.*{runtime}/"
    procs = subprocess.run(["pgrep", "-f", mine],
                           capture_output=True, text=True)
    return {"overlay": (vm_dir / "disk.qcow2").stat().st_size, "rss": rss,
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())), "procs": len(procs.stdout.split())}


def invoke(project: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([INVOKE, *args], cwd=project, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return time.monotonic() - started


def golden_intact(gold: golden.Golden) -> List[str]:
    """Files of the golden image whose sha256 is not the one its manifest records."""
    files = json.loads((gold.dir / MANIFEST).read_text())["files"]
    return [name for name in golden.FROZEN if sha256_file(gold.dir / name) != files[name]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-soak-") as tmp:
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vmlab-soak-rt-", dir=tmp)  # its control sockets
        project = Path(tmp)
        (project / "tasks.py").write_text("from vmlab.tasks import ns  # noqa: F401\n")
        (project / "vmlab.yaml").write_text("vms:\n  default: {}\nsync:\n  guest_dir: soak\n"
                                            "suites:\n  trivial: {command: 'cat edited.txt'}\nquick: trivial\n")
        edited = project / "edited.txt"
        edited.write_text("0\n")
        lab = Lab(config.load(cwd=project))
        vm = lab.vm()
        gold = images.golden_of(vm)
        if gold is None:
            print("no golden image of the test guest in the cache: make one first (invoke vm.golden)",
                  file=sys.stderr)
            return 2
        vm_dir = vm.vmdir.dir
        try:
            invoke(project, "vm.start")
            for i in range(3):  # warm-up: the guest's page cache, the shared connection
                invoke(project, "vm.restore")
                edited.write_text(f"warm {i}\n")
                invoke(project, "vm.quick")
            pid = vm.machine.pid()
            assert pid
            base = sample(vm_dir, pid)
            # QEMU's RSS grows as restores bring more of the guest's RAM in: bounded by that RAM and
            # QEMU's own overhead, not by the first sample; past it, something leaks.
            bound = {"overlay": base["overlay"] + 64 * MiB, "rss": vm.config.memory_mib * MiB + 256 * MiB,
                     "fds": base["fds"] + 8, "procs": base["procs"] + 1}
            print(f"baseline: overlay {base['overlay'] / MiB:.0f} MiB, QEMU RSS {base['rss'] / MiB:.0f} MiB, "
                  f"{base['fds']} open files, {base['procs']} processes")
            print(f"bounds:   overlay {bound['overlay'] / MiB:.0f} MiB, QEMU RSS {bound['rss'] / MiB:.0f} MiB, "
                  f"{bound['fds']} open files, {bound['procs']} processes", flush=True)
            worst = dict(base)
            restores, turns = [], []
            for i in range(args.turns):
                restores.append(invoke(project, "vm.restore"))
                edited.write_text(f"turn {i}\n")
                turns.append(invoke(project, "vm.quick"))
                now = sample(vm_dir, pid)
                worst = {k: max(worst[k], now[k]) for k in worst}
                if (i + 1) % 10 == 0:
                    print(f"{i + 1:3d}: overlay {now['overlay'] / MiB:.0f} MiB, RSS {now['rss'] / MiB:.0f} MiB, "
                          f"{now['fds']} fds, {now['procs']} procs; restore {restores[-1]:.2f}s, "
                          f"quick {turns[-1]:.2f}s", flush=True)
            assert vm.machine.pid() == pid, "QEMU was restarted during the soak"
        finally:
            lifecycle.destroy(vm)
    over = [k for k in bound if worst[k] > bound[k]]
    damaged = golden_intact(gold)
    restores.sort()
    turns.sort()
    print()
    print(f"{args.turns} restores: median {restores[len(restores) // 2]:.2f}s, max {restores[-1]:.2f}s; "
          f"{args.turns} loop turns: median {turns[len(turns) // 2]:.2f}s, max {turns[-1]:.2f}s")
    print(f"largest seen: overlay {worst['overlay'] / MiB:.0f} MiB, QEMU RSS {worst['rss'] / MiB:.0f} MiB, "
          f"{worst['fds']} open files, {worst['procs']} processes: "
          + ("every bound held" if not over else f"OVER the bound: {', '.join(over)}"))
    print(f"golden image {gold.key}: " + ("its files match the sha256 in its manifest" if not damaged
                                          else f"CHANGED: {', '.join(damaged)}"))
    return 1 if over or damaged else 0


if __name__ == "__main__":
    sys.exit(main())
