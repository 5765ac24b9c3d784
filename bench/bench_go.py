#!/usr/bin/env python3
"""Benchmark: the edit-test loop on real Go work, the old way and vmlab's side by side in one run.

The project is Debian's source of moby/sys (package golang-github-moby-sys-dev): its `mount`
and `mountinfo` packages, whose tests mount things and so run as root, as one module with
its dependency golang.org/x/sys (golang-golang-x-sys-dev) beside it (`replace`), nothing
downloaded. It is adopted as a user would: `vmlab init --guest debian` (which writes the
warm-up, `warm:`, for a Go module), the quick suite made `go test -json ./...` with
`format: go-test`, then `vmlab golden` (made once, then cached) and `vmlab start`.

Each round times, after one file of mountinfo (which mount imports) is edited (so both
packages are built, linked and tested again):

  old way   rsync -az --delete over a fresh ssh, then `go test -json ./...` over a second
            fresh ssh, as root (go-synth's vm-quick); its copy is in its own folder
  vmlab     `vmlab quick`, the whole command as typed

each for the first turn after `vmlab restore` and for the next, steady turn. The old way
starts from a clean state without a warm-up: its guest's Go build cache is emptied after
the restore (`go clean -cache`, not timed), as a golden image without `warm:` has it. So is
vmlab's once more ("vmlab, no warm state"): what the warm state saves. It prints the
medians, the ratios old/vmlab, vmlab's first turn against its steady one (issue 25's
target: within 1.5x), and the load average when it started and ended (other jobs may
share the cores: then the figures are indicative).

    python bench/bench_go.py [--rounds 3] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmlab import config  # noqa: E402
from vmlab.lab import Lab  # noqa: E402

GOCODE = Path("/usr/share/gocode/src")
SOURCES = {"mount": GOCODE / "github.com/moby/sys/mount", "mountinfo": GOCODE / "github.com/moby/sys/mountinfo",
           "third_party/xsys": GOCODE / "golang.org/x/sys"}
PACKAGES = "golang-github-moby-sys-dev golang-golang-x-sys-dev"
GO_MOD = """\
module github.com/moby/sys

go 1.17

require golang.org/x/sys v0.3.0

replace golang.org/x/sys => ./third_party/xsys
"""
# Edited before every turn: a change that reaches both test binaries (mount links mountinfo), so
# both are linked and run again. A comment, or a variable nothing uses (the linker drops it),
# leaves the binaries as they were, and `go test` then reports cached results without running.
EDITED = Path("mountinfo/bench_turn.go")
EDIT = """package mountinfo

// Written by vmlab's bench/bench_go.py before every turn.
var benchTurn = {turn}

func init() {{
	if benchTurn < 0 {{
		panic("bench_go.py")
	}}
}}
"""
SUITE = "go test -json ./..."


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def make_project(folder: Path, vmlab: Path) -> None:
    """moby/sys as one module, adopted with `vmlab init` and the suite a Go user would write."""
    for name, source in SOURCES.items():
        shutil.copytree(source, folder / name, symlinks=False)
    for leftover in ("mount/go.mod", "mountinfo/go.mod"):
        (folder / leftover).unlink(missing_ok=True)
    for path in folder.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    (folder / "go.mod").write_text(GO_MOD)
    (folder / EDITED).write_text(EDIT.format(turn=0))
    subprocess.run([str(vmlab), "init", "--guest", "debian"], cwd=folder, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    yaml = folder / "vmlab.yaml"
    text = yaml.read_text().replace("command: 'go test ./...'", f"command: '{SUITE}'\n    format: go-test")
    assert "format: go-test" in text and "warm:" in text, text
    yaml.write_text(text)


def run(argv: List[str], cwd: Path) -> float:
    """Seconds a whole command took; it must finish (exit 0, or 1: a test failed)."""
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    took = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{shlex.join(argv)} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-2000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the project and its VM (stopped) in /tmp")
    args = parser.parse_args()
    missing = [str(p) for p in SOURCES.values() if not p.is_dir()]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install {PACKAGES}", file=sys.stderr)
        return 2
    vmlab = Path(sys.executable).parent / "vmlab"
    folder = Path(tempfile.mkdtemp(prefix="vmlab-bench-go-"))
    started_load = load()
    try:
        make_project(folder, vmlab)
        print(f"preparing {folder}: the golden image with its warm state (minutes the first time) ...", flush=True)
        subprocess.run([str(vmlab), "golden"], cwd=folder, check=True, stdin=subprocess.DEVNULL)
        subprocess.run([str(vmlab), "start"], cwd=folder, check=True, stdin=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        lab = Lab(config.load(cwd=folder))
        vm = lab.vm()
        port = vm.machine.state()["ssh_port"]
        ssh = ["ssh", *vm.keys().openssh_options(), "-o", "ControlMaster=no",
               "-o", "ControlPath=none", "-p", str(port), "-l", vm.config.ssh_user]
        old_way = ["sh", "-c", f"rsync -az --delete --exclude=/vm/ --exclude=/.venv/ -e {shlex.quote(shlex.join(ssh))} "
                               f"./ 127.0.0.1:bench-old/ && {shlex.join(ssh)} 127.0.0.1 "
                               f"{shlex.quote(f'cd bench-old && {SUITE}')}"]
        quick = [str(vmlab), "quick"]
        turn = 0

        def edit() -> None:
            nonlocal turn
            turn += 1
            (folder / EDITED).write_text(EDIT.format(turn=turn))

        cold_cache = [*ssh, "127.0.0.1", "go clean -cache"]
        cells: Dict[str, List[float]] = {key: [] for key in ("old first", "old steady", "vmlab first", "vmlab steady",
                                                              "cold first")}
        for i in range(args.rounds):
            for way, argv in (("old", old_way), ("vmlab", quick), ("cold", quick)):
                run([str(vmlab), "restore"], folder)
                if way != "vmlab":
                    run(cold_cache, folder)
                edit()
                cells[f"{way} first"].append(run(argv, folder))
                if way != "cold":
                    edit()
                    cells[f"{way} steady"].append(run(argv, folder))
            print(f"round {i + 1}: " + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in cells.items()), flush=True)
    finally:
        if args.keep:
            subprocess.run([str(vmlab), "stop"], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True)
            print(f"kept {folder}")
        else:
            subprocess.run([str(vmlab), "destroy", "--yes"], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True)
            shutil.rmtree(folder, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in cells.items()}
    print()
    print(f"moby/sys mount+mountinfo ({SUITE}, as root), one file edited before each turn, {args.rounds} rounds, "
          f"medians; load average {started_load} at the start, {load()} at the end, {os.cpu_count()} cores:")
    print(f"  {'':34} {'old way':>9} {'vmlab quick':>12} {'old/vmlab':>10}")
    for when in ("first", "steady"):
        label = "first turn after a restore" if when == "first" else "steady turn"
        old, new = m[f"old {when}"], m[f"vmlab {when}"]
        print(f"  {label:34} {old:8.1f}s {new:11.1f}s {old / new:9.1f}x")
    print(f"  {'first turn, vmlab, no warm state':34} {'':9} {m['cold first']:11.1f}s  "
          f"(the warm state saves {m['cold first'] / m['vmlab first']:.1f}x)")
    ratio = m["vmlab first"] / m["vmlab steady"]
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(f"  vmlab's first turn / its steady turn: {ratio:.2f}x (target <= 1.5x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
