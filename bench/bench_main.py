#!/usr/bin/env python3
"""Benchmark: the README's main job, `make vm-main`, on a fresh machine and again.

A fresh clone of this repository (no .venv) and an empty image cache stand for a fresh
machine (the Debian packages are assumed installed: apt's own time is not vmlab's).
Offline, the main job falls back to the rehearsal guest: it builds the live CD with
debootstrap, installs it over the serial console, provisions it, checks it with the
mount suite and snapshots it. The second run, with the cache warm, is what a later
`make vm-main` costs. Each run is the whole command as typed, with its own process
start-up; the time of each step is read from vmlab's own progress lines.

There is no "before vmlab" to set beside it: without vmlab this is hand work
(go-synth's documented manual install and provisioning).

    python bench/bench_main.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = [  # (what the step is, the line that starts it), in order
    ("set up the venv", r"setup: creating the Python venv"),
    ("build the live CD (debootstrap)", r"building the rehearsal medium"),
    ("install over the serial console", r"installing from live.iso"),
    ("provision", r"provisioning|installing what the config asks for"),
    ("verify with the mount suite", r"suite mounts:"),
    ("freeze the golden image and snapshot it", r"powering off so its disk is consistent"),
]


QUIET_LIMIT = 10.0  # issue 14: a progress line during every step over 10 s


def run(clone: Path, cache: Path) -> tuple:
    """Runs `make vm-main`; returns (seconds, {step: seconds from the start}, output, the
    silences over QUIET_LIMIT: [(seconds without an output line, the line after it)])."""
    env = dict(os.environ, VMLAB_CACHE=str(cache))
    env.pop("VM", None)
    started = time.monotonic()
    seen: dict = {}
    lines = []
    last, silences = started, []
    proc = subprocess.Popen(["make", "vm-main"], cwd=clone, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        now = time.monotonic()
        if now - last > QUIET_LIMIT:
            silences.append((now - last, line.strip()[:100]))
        last = now
        for name, pattern in STEPS:
            if name not in seen and re.search(pattern, line):
                seen[name] = time.monotonic() - started
    status = proc.wait()
    total = time.monotonic() - started
    if status != 0:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"make vm-main failed (exit {status})")
    return total, seen, "".join(lines), silences


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory(prefix="vmlab-bench-main-") as tmp:
        clone, cache = Path(tmp) / "vmlab", Path(tmp) / "cache"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        print("first run: a fresh clone, an empty cache ...", flush=True)
        first, steps, _, quiet = run(clone, cache)
        print("second run: the same clone and cache ...", flush=True)
        second, _, _, _ = run(clone, cache)
        subprocess.run(["make", "-s", "vm-stop", "VM=rehearsal"], cwd=clone,
                       env=dict(os.environ, VMLAB_CACHE=str(cache)), capture_output=True)
    print()
    print(f"make vm-main, fresh machine (no venv, empty cache): {first / 60:5.1f} min ({first:.0f} s)")
    names = [n for n, _ in STEPS if n in steps]
    for i, name in enumerate(names):
        end = steps[names[i + 1]] if i + 1 < len(names) else first
        print(f"  {name:<42} {end - steps[name]:6.0f} s")
    print(f"  stretches over {QUIET_LIMIT:.0f} s without a progress line: {len(quiet)}")
    for seconds, after in quiet:
        print(f"    {seconds:5.0f} s, then: {after}")
    print(f"make vm-main again (everything cached):             {second:5.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
