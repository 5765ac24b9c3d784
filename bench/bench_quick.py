#!/usr/bin/env python3
"""Benchmark: one turn of the edit-test loop, with a 2,000-file project and no change since the last sync.

Runs, in one go on the offline test guest:
  before vmlab   rsync -avz --delete over a fresh ssh, then a second fresh ssh runs the command
  vmlab          make vm-quick (one session on a shared SSH connection checks that neither
                 copy changed, then runs the suite; rsync runs only when one did)
The suite is trivial (`true`), so what is measured is the loop's own cost; the
report's duration of the suite itself is subtracted to give vmlab's overhead.
Each round also times both after one file was edited (the turn that must sync).

    python bench/bench_quick.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmlab import config  # noqa: E402
from vmlab.lab import Lab  # noqa: E402

VENV = ROOT / ".venv"


def make_project(folder: Path, files: int = 2000) -> None:
    for i in range(files):
        path = folder / "src" / f"pkg{i // 50:02d}" / f"file{i:04d}.c"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"/* file {i} */\nint f{i}(void) {{ return {i}; }}\n" * 20)
    (folder / "tasks.py").write_text("from vmlab.tasks import ns  # noqa: F401\n")
    (folder / "vmlab.yaml").write_text(
        "vms:\n  default: {}\nsync:\n  guest_dir: bench-vmlab\nsuites:\n  trivial: {command: 'true'}\n"
        "quick: trivial\n")


def timed(argv: list, cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not (VENV / "bin" / "invoke").exists():
        print("run scripts/setup first (the benchmark uses .venv)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-quick-") as tmp:
        project = Path(tmp)
        make_project(project)
        lab = Lab(config.load(cwd=project))
        print("preparing: starting the VM and a first sync of 2,000 files ...", flush=True)
        status = lab.start()
        keys = lab.keys_for(lab.machine(lab.vm()))
        ssh = ["ssh", "-i", str(keys.client), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={keys.known_hosts}",
               "-o", "HostKeyAlias=vmlab-guest", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
               "-o", "ControlPath=none", "-p", str(status.ssh_port)]
        # the same files vmlab sends: vm/ is vmlab's own state (the VM's disk!), absent before vmlab
        old_way = ["sh", "-c", f"rsync -avz --delete --exclude=/vm/ -e {shlex.quote(shlex.join(ssh))} "
                               f"./ root@127.0.0.1:bench-old/ "
                               f"&& {shlex.join(ssh)} root@127.0.0.1 'cd bench-old && true'"]
        quick = ["make", "-s", "-f", str(ROOT / "Makefile"), f"VENV={VENV}", "vm-quick"]
        suite_seconds: list = []
        try:
            timed(old_way, project)  # first copies: both start from a synced guest
            timed(quick, project)
            old, new, old_edited, new_edited = [], [], [], []
            edited = project / "src" / "pkg00" / "file0000.c"
            for i in range(args.rounds):
                old.append(timed(old_way, project))
                new.append(timed(quick, project))
                reports = sorted((project / "vm" / "default" / "results").glob("*/report.json"))
                suite_seconds.append(json.loads(reports[-1].read_text())["suites"][0]["duration_seconds"])
                edited.write_text(edited.read_text() + f"/* round {i} */\n")
                old_edited.append(timed(old_way, project))
                new_edited.append(timed(quick, project))
                print(f"round {i + 1}: unchanged: before vmlab {old[-1]:.2f}s  make vm-quick {new[-1]:.2f}s; "
                      f"one file edited: {old_edited[-1]:.2f}s  {new_edited[-1]:.2f}s", flush=True)
        finally:
            lab.destroy()
    m_old, m_new = statistics.median(old), statistics.median(new)
    e_old, e_new = statistics.median(old_edited), statistics.median(new_edited)
    m_suite = statistics.median(suite_seconds)
    print()
    print(f"{args.rounds} rounds, 2,000 files, no change since the last sync, medians:")
    print(f"  before vmlab (rsync -avz over fresh ssh, then fresh ssh) : {m_old:6.2f} s")
    print(f"  make vm-quick                                           : {m_new:6.2f} s")
    print(f"  ratio before/vmlab                                      : {m_old / m_new:6.1f}x")
    print(f"  the suite's own run time (from report.json)             : {m_suite:6.2f} s")
    print(f"  vmlab's overhead above it                               : {m_new - m_suite:6.2f} s")
    print("with one file edited since the last sync, medians:")
    print(f"  before vmlab                                            : {e_old:6.2f} s")
    print(f"  make vm-quick                                           : {e_new:6.2f} s")
    print(f"  ratio before/vmlab                                      : {e_old / e_new:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
