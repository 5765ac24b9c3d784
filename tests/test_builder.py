"""Building an image from packages (vmlab/images/builder.py) when the builder script fails.

The guest is a project's own (`guests: [guests]`) whose image builder is a short shell
script, run by the real CLI (`vm.image`) with the real cache and the real BUILD_TOOLS
checks (this machine has the tools; building needs root, which the tests run as). Not
real: debootstrap's work; the script stands in for it, failing as a builder can, after
printing more lines than the error shows and mounting something in its work folder
(as debootstrap mounts /proc in its target).
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import Project
from vmlab import host
from vmlab.images import builder

BUILDER = """\
#!/bin/sh
# A builder that fails: it records each run outside the cache, fills $OUT and $WORK a little,
# mounts a tmpfs in $WORK as debootstrap mounts /proc in its target, then exits 3.
set -e
echo "run" >> "$HERE/runs"
echo "work folder: $WORK"
echo "out folder: $OUT"
echo "half an image" > "$OUT/disk.qcow2"
mkdir "$WORK/proc"
mount -t tmpfs vmlab-builder-test "$WORK/proc"
i=1
while [ $i -le 40 ]; do echo "build line $i"; i=$((i + 1)); done
echo "E: Couldn't download packages: toy-package" >&2
exit 3
"""


def mounts_under(folder: Path) -> list:
    prefix = str(folder.resolve()) + "/"
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]


@pytest.fixture
def toy(project: Project):
    """A project whose VM's guest, `toy`, is built by BUILDER into the project's own cache;
    anything the builder mounted is unmounted at the end, whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("building an image needs root")
    missing = [t for t in builder.BUILD_TOOLS if host.which(t) is None]
    if missing:
        pytest.skip(f"image build tools missing: {', '.join(missing)}")
    guest = project.root / "guests" / "toy"
    guest.mkdir(parents=True)
    (guest / "profile.yaml").write_text(textwrap.dedent("""\
        description: a guest whose image builder fails
        os: linux
        image: {builder: build.sh, packages: [toy-package]}
        """))
    (guest / "build.sh").write_text(BUILDER)
    project.write_config("""
        guests: [guests]
        vms: {default: {profile: toy}}
        profiles: {toy: {mirror: "http://deb.example.invalid/debian", suite: bookworm}}
        cache_dir: cache
        """)
    try:
        yield project
    finally:
        for point in reversed(mounts_under(project.root)):
            subprocess.run(["umount", "-l", point], check=False)


def test_a_failing_builder_names_its_log_and_leaves_nothing_built(toy: Project) -> None:
    project = toy
    cache = project.root / "cache"
    result = project.invoke("vm.image", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    found = re.search(r"building the toy image failed \(exit 3\); log: (\S+\.log)\n", result.stderr)
    assert found, result.stderr
    log = Path(found.group(1))
    assert log.parent == cache / "logs" and log.is_file()
    # the log has everything the builder printed; the error, its last lines
    assert "build line 1\n" in log.read_text() and "E: Couldn't download packages: toy-package" in log.read_text()
    assert "build line 40" in result.stderr and "E: Couldn't download packages: toy-package" in result.stderr
    assert "build line 10\n" not in result.stderr  # a tail, not the whole log
    work = Path(re.search(r"^work folder: (\S+)$", log.read_text(), re.M).group(1))
    assert work.parent == cache and work.name.startswith("build-")

    assert not work.exists() and not list(cache.glob("build-*"))  # the work folder is gone
    assert not mounts_under(cache)  # what the builder mounted there is unmounted
    kind = cache / "toy-image"
    assert not [p for p in kind.iterdir() if not p.name.endswith(".lock")]  # no image, no .partial
    assert "toy-image" not in project.invoke("vm.cache").stdout

    again = project.invoke("vm.image", timeout=120)  # nothing was cached as built: it builds again
    assert again.returncode == 1 and "building the toy image failed (exit 3)" in again.stderr, again.stderr
    assert (project.root / "guests" / "toy" / "runs").read_text() == "run\nrun\n"
    assert not list(cache.glob("build-*")) and not mounts_under(cache)
