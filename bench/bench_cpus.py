#!/usr/bin/env python3
"""Benchmark: cold boots of the offline test guest, two at once and one alone, with 2 vCPUs
(vmlab's default) against 1 vCPU per guest (`cpus: 1`).

Why: vmlab's own tests run two pytest-xdist workers on a two-core machine, each with its own
VMs, and a TCG guest's vCPUs are host threads. This says whether the tests' guests should then
get one vCPU each or keep vmlab's default of 2 (they keep it: see the numbers in its output).

Each boot is `vmlab start` of a new VM as typed (process start-up included), from a project
folder of its own, with a memory size no golden image has, so the guest boots from its base
image to SSH; then `vmlab destroy --yes`. Rounds alternate the two settings.

    python bench/bench_cpus.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

VMLAB = Path(sys.executable).parent / "vmlab"
CONFIG = "vms:\n  default: {{memory: 1000, cpus: {cpus}}}\n"  # no golden image has 1000 MiB: a cold boot


def start(folder: Path, cpus: int) -> float:
    """Seconds for `vmlab start` of a new VM in `folder` to return with SSH answering."""
    (folder / "vmlab.yaml").write_text(CONFIG.format(cpus=cpus))
    began = time.monotonic()
    done = subprocess.run([str(VMLAB), "start"], cwd=folder, capture_output=True, text=True)
    took = time.monotonic() - began
    if done.returncode != 0:
        sys.exit(f"vmlab start failed in {folder}:\n{done.stderr}")
    return took


def destroy(folder: Path) -> None:
    subprocess.run([str(VMLAB), "destroy", "--yes"], cwd=folder, capture_output=True)


def boots(work: Path, cpus: int, at_once: int) -> List[float]:
    folders = []
    for i in range(at_once):
        folder = work / f"p{cpus}-{i}"
        folder.mkdir(exist_ok=True)
        folders.append(folder)
    try:
        with ThreadPoolExecutor(at_once) as pool:
            return list(pool.map(lambda f: start(f, cpus), folders))
    finally:
        for folder in folders:
            destroy(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cpus-"))
    times: Dict[tuple, List[float]] = {}
    try:
        for at_once in (2, 1):
            for _ in range(args.rounds):
                for cpus in (2, 1):
                    got = boots(work, cpus, at_once)
                    times.setdefault((at_once, cpus), []).extend(got)
                    print(f"  {at_once} at once, {cpus} vCPU: {', '.join(f'{t:.1f}' for t in got)} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian seconds from `vmlab start` to SSH, {os.cpu_count()} host cores, {args.rounds} rounds:")
    for at_once in (2, 1):
        two, one = (statistics.median(times[(at_once, c)]) for c in (2, 1))
        print(f"  {at_once} guest(s) booting at once: 2 vCPUs {two:.1f} s, 1 vCPU {one:.1f} s, "
              f"ratio 2/1 = {two / one:.2f}")


if __name__ == "__main__":
    main()
