"""What a `vmlab` command loads before it does anything: only what that command uses.

Every command pays its imports before its work (issue 25: a whole `vmlab restore` is timed as
typed), so `vmlab --version` and `--help` load no part of the lab, and a restore loads
neither the build, install and download machinery nor the SSH and console libraries it does
not use. Each command runs in a fresh process as the `vmlab` program runs it (vmlab.cli.main
with its argv), which lists its modules as it exits. No timing: what is loaded is the claim.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pytest

from conftest import Project

# What the `vmlab` console script does, with the modules loaded written out at exit.
RUN_AS_VMLAB = """
import atexit, json, pathlib, sys
listing = pathlib.Path(sys.argv.pop(1))
atexit.register(lambda: listing.write_text(json.dumps(sorted(sys.modules))))
sys.argv[0] = "vmlab"
from vmlab.cli import main
main()
"""

# Third-party libraries only some commands use: each is imported where it is needed.
ON_DEMAND_LIBRARIES = {"paramiko", "pexpect", "tqdm", "watchfiles"}


def loaded_by(argv: List[str], cwd: Path, expected: int = 0) -> Set[str]:
    listing = cwd / "modules.json"
    done = subprocess.run([sys.executable, "-c", RUN_AS_VMLAB, str(listing), *argv], cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == expected, done.stdout + done.stderr
    return set(json.loads(listing.read_text()))


@pytest.mark.parametrize("argv", [["--version"], ["--help", "restore"], ["--list"]], ids=" ".join)
def test_help_and_version_load_no_part_of_the_lab(argv: List[str], tmp_path: Path) -> None:
    loaded = loaded_by(argv, tmp_path)
    assert "vmlab.tasks.snapshot" in loaded  # the listing is the program's
    assert {m for m in loaded if m.startswith(("vmlab.lab", "vmlab.images", "vmlab.qemu", "vmlab.remote",
                                                 "vmlab.install", "vmlab.runs", "vmlab.sync"))} == set()
    assert loaded & ON_DEMAND_LIBRARIES == set()


def test_restore_loads_the_snapshots_and_not_the_build_or_download_machinery(project: Project) -> None:
    project.write_config("vms:\n  default: {}\n")
    loaded = loaded_by(["restore"], project.root, expected=2)  # no disk yet: "no snapshot to restore"
    assert "vmlab.lab.snapshotting" in loaded
    assert loaded & {"vmlab.lab.building", "vmlab.lab.loop", "vmlab.images.fetch", "vmlab.install.recipe",
                     "vmlab.install.console", "vmlab.runs.results", "http.client"} == set()
    assert loaded & ON_DEMAND_LIBRARIES == set()
