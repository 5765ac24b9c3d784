#!/usr/bin/env python3
"""Benchmark: one turn of the edit-test loop, whole processes, side by side in one run.

On the offline test guest, a project of ~100 files, one file edited before every turn,
a trivial suite (`cat` of the edited file), three ways:

  old way      go-synth's vm-quick: rsync -az --delete over a fresh ssh, then a second
               fresh ssh that runs the command (no shared connection)
  vm.quick     `invoke vm.quick`: a new process each turn (Python, Invoke, the shared
               SSH connection, only the changed file sent)
  vm.watch     one `invoke vm.watch` process: timed from the file's write to its
               printed result line

It prints each median, the ratios, and the targets (watch >= 5x the old way and under
0.5 s; quick >= 3x), with the machine's load (another job may share the cores: the
numbers are indicative).

    python bench/bench_quick.py [--rounds 9] [--files 100]
"""

from __future__ import annotations

import argparse
import os
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmlab import config  # noqa: E402
from vmlab.lab import Lab, firstrun, lifecycle  # noqa: E402

VENV = ROOT / ".venv"
INVOKE = str(VENV / "bin" / "invoke")


def make_project(folder: Path, files: int) -> Path:
    for i in range(files):
        path = folder / "src" / f"pkg{i // 25:02d}" / f"file{i:04d}.c"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"/* file {i} */\nint f{i}(void) {{ return {i}; }}\n" * 20)
    edited = folder / "src" / "edited.c"
    edited.write_text("round 0\n")
    (folder / "tasks.py").write_text("from vmlab.tasks import ns  # noqa: F401\n")
    (folder / "vmlab.yaml").write_text(
        "vms:\n  default: {}\nsync:\n  guest_dir: bench-vmlab\nsuites:\n  trivial: {command: 'cat src/edited.c'}\n"
        "quick: trivial\n")
    return edited


def timed(argv: list, cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - started


class Watcher:
    """`invoke vm.watch` in the project; result lines queued as they are printed."""

    def __init__(self, project: Path):
        self.proc = subprocess.Popen([INVOKE, "vm.watch"], cwd=project, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.results: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "] run " in line:
                self.results.put(line.strip())

    def next_result(self, timeout: float = 60) -> str:
        line = self.results.get(timeout=timeout)
        if "PASSED" not in line:
            raise RuntimeError(f"vm.watch: {line}")
        return line

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def median_line(label: str, values: List[float]) -> str:
    return f"  {label:<58} {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    if not Path(INVOKE).exists():
        print("run scripts/setup first (the benchmark uses .venv)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-quick-") as tmp:
        project = Path(tmp)
        edited = make_project(project, args.files)
        lab = Lab(config.load(cwd=project))
        print(f"preparing: starting the VM, a first sync of {args.files} files ...", flush=True)
        vm = lab.vm()
        status = firstrun.start(vm)
        keys = vm.keys()
        ssh = ["ssh", *keys.openssh_options(), "-o", "ControlMaster=no", "-o", "ControlPath=none",
               "-p", str(status.ssh_port), "-l", "root"]
        # the same files vmlab sends: vm/ is vmlab's own state (the VM's disk!), absent before vmlab
        old_way = ["sh", "-c", f"rsync -az --delete --exclude=/vm/ -e {shlex.quote(shlex.join(ssh))} "
                               f"./ 127.0.0.1:bench-old/ && {shlex.join(ssh)} 127.0.0.1 'cd bench-old && "
                               f"cat src/edited.c'"]
        quick = [INVOKE, "vm.quick"]
        old, new, watched = [], [], []
        turn = 0

        def edit() -> None:
            nonlocal turn
            turn += 1
            edited.write_text(f"round {turn}\n")

        try:
            timed(old_way, project)  # first copies: every way starts from a synced guest
            timed(quick, project)
            for i in range(args.rounds):
                edit()
                old.append(timed(old_way, project))
                edit()
                new.append(timed(quick, project))
                print(f"round {i + 1}: old way {old[-1]:.2f}s  invoke vm.quick {new[-1]:.2f}s", flush=True)
            watcher = Watcher(project)
            try:
                watcher.next_result()  # its first run, at start
                for i in range(args.rounds):
                    time.sleep(0.3)  # a person does not save twice within a debounce step
                    edit()
                    started = time.monotonic()
                    line = watcher.next_result()
                    watched.append(time.monotonic() - started)
                    print(f"round {i + 1}: vm.watch, save to result line {watched[-1]:.2f}s  ({line[:60]}...)",
                          flush=True)
            finally:
                watcher.stop()
        finally:
            lifecycle.destroy(vm)
    load = open("/proc/loadavg").read().split()[:3]
    m_old, m_new, m_watch = (statistics.median(v) for v in (old, new, watched))
    print()
    print(f"{args.rounds} rounds, {args.files} files, one edited per turn, a trivial suite; "
          f"load average {' '.join(load)} on {os.cpu_count()} cores; medians:")
    print(median_line("old way (rsync -az over a fresh ssh, then a fresh ssh)", old))
    print(median_line("invoke vm.quick (a new process)", new))
    print(median_line("vm.watch (the file's write to the printed result line)", watched))
    verdict = "met" if m_old / m_new >= 3 else "NOT met"
    print(f"  ratio old way / vm.quick : {m_old / m_new:5.1f}x  (target >= 3x: {verdict})")
    print(f"  ratio old way / vm.watch : {m_old / m_watch:5.1f}x  (target >= 5x: "
          f"{'met' if m_old / m_watch >= 5 else 'NOT met'}; under 0.5 s: {'met' if m_watch < 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
