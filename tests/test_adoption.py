"""vmlab in someone else's project, the way its users meet it: vmlab's wheel installed into a
fresh venv outside this checkout (which is then not importable), `vmlab init` in the project,
and the project's own `make vm-quick` on the offline Debian guest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Dict, Optional

from conftest import kill_vms

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

MOUNT_TEST = """\
#!/bin/sh
# The project's privileged test: mount a size-limited tmpfs, use the program in it, check, unmount.
set -eu
dir=$(mktemp -d)
mount -t tmpfs -o size=1m project-test "$dir"
printf 'one\\ntwo\\nthree\\n' > "$dir/input"
got=$(sh bin/count-lines "$dir/input")
umount "$dir" && rmdir "$dir"
[ "$got" = "$EXPECTED" ] || { echo "count-lines: expected $EXPECTED lines, got $got" >&2; exit 1; }
echo "count-lines counted $got lines on a tmpfs"
"""
MAKEFILE = """\
EXPECTED ?= 3
export EXPECTED

hello: ## the project's own first target
\t@echo "hello from the project's own Makefile"

test:
\tsh tests/mount-test.sh
"""


def run(argv: list, cwd: Path, bin_dir: Path, env: Optional[Dict[str, str]] = None,
        timeout: float = 1200) -> subprocess.CompletedProcess:
    """A command as a user types it in the project: the installed vmlab first on PATH, and
    nothing from this checkout importable."""
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VM", "VMLAB_CONFIG", "VIRTUAL_ENV")}
    full["PATH"] = f"{bin_dir}:{full.get('PATH', '')}"
    full.update(env or {})
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_the_installed_package_carries_what_it_needs_and_the_command(vmlab_bin: Path, tmp_path: Path) -> None:
    where = run([str(vmlab_bin / "python"), "-c", "import vmlab, pathlib; print(pathlib.Path(vmlab.__file__).parent)"],
                tmp_path, vmlab_bin)
    package = Path(where.stdout.strip())
    assert REPO not in package.parents, "the checkout was imported, not the installed package"
    for needed in ("scripts/mount-suite.sh", "vmlab.mk", "guests/dragonfly/profile.yaml",
                   "guests/debian/build-image.sh", "guests/rehearsal/install.yaml"):
        assert (package / needed).is_file(), needed
    listing = run(["vmlab", "--list"], tmp_path, vmlab_bin)
    assert listing.returncode == 0 and "quick" in listing.stdout and "init" in listing.stdout
    assert "Can't find any collection" not in listing.stderr
    helped = run(["vmlab", "--help", "quick"], tmp_path, vmlab_bin)
    assert helped.returncode == 0 and "Usage: vmlab" in helped.stdout and "--restore-on-failure" in helped.stdout
    version = run(["vmlab", "--version"], tmp_path, vmlab_bin)
    assert version.stdout.strip().endswith(run([str(vmlab_bin / "python"), "-c",
                                                "import vmlab; print(vmlab.__version__)"], tmp_path,
                                               vmlab_bin).stdout.strip())


def test_the_wheel_holds_vmlab_and_its_data_and_nothing_else(tmp_path: Path) -> None:
    """What `pip install` gives a user: the wheel, built from this checkout's files as git sees them
    (tracked and untracked, not what it ignores: no stale build/ of this machine's) and compiled as
    scripts/setup leaves them, holds every file of vmlab/ and nothing else: not the CI rehearsal
    (tools/ci_rehearsal, which only rehearses vmlab's own workflow), no tests, no compiled files."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = sorted({name for name in listed if name and (REPO / name).is_file()})
    for name in files:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / "src" / name)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp_path / "src" / "vmlab")], check=True)  # as setup
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(tmp_path / "src")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("vmlab-*.whl")
    shipped = [n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("vmlab-")]  # less the .dist-info
    assert not [n for n in shipped if n.startswith(("vmlab/ci/", "ci_rehearsal/", "tools/")) or n.endswith(".pyc")]
    assert sorted(shipped) == [n for n in files if n.startswith("vmlab/")]
    guests = {Path(n).parts[2] for n in shipped if n.startswith("vmlab/guests/") and n.count("/") == 3}
    assert {"debian", "dragonfly", "rehearsal"} <= guests
    for needed in ("vmlab/vmlab.mk", "vmlab/scripts/mount-suite.sh", *(f"vmlab/guests/{g}/profile.yaml"
                                                                       for g in guests)):
        assert needed in shipped, needed


def make_project(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "bin" / "count-lines").write_text("#!/bin/sh\n# The project's program.\nwc -l < \"$1\" | tr -d ' '\n")
    (root / "tests" / "mount-test.sh").write_text(MOUNT_TEST)
    (root / "Makefile").write_text(MAKEFILE)
    return root


def test_init_twice_changes_nothing_and_keeps_the_projects_targets(vmlab_bin: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "counter")
    first = run(["vmlab", "init", "--guest", "debian"], project, vmlab_bin)
    assert first.returncode == 0, first.stderr
    files = {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()}
    assert {"vmlab.yaml", "vmlab.mk", "Makefile", ".gitignore"} <= set(files)
    config = (project / "vmlab.yaml").read_text()
    assert "command: 'make test'" in config and "packages: [make]" in config and "profile: debian" in config
    assert "/vm/" in (project / ".gitignore").read_text().splitlines()
    again = run(["vmlab", "init", "--guest", "debian"], project, vmlab_bin)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert {p.name: p.read_bytes() for p in project.iterdir() if p.is_file()} == files
    own = run(["make", "-s"], project, vmlab_bin)
    assert own.returncode == 0 and own.stdout.strip() == "hello from the project's own Makefile"
    targets = run(["make", "-s", "vm-help"], project, vmlab_bin).stdout
    assert "make vm-quick" in targets and "make vm-restore" in targets


def test_init_without_a_test_command_writes_a_quick_suite_that_says_what_to_set(vmlab_bin: Path,
                                                                               tmp_path: Path) -> None:
    project = tmp_path / "bare"
    project.mkdir()
    assert run(["vmlab", "init", "--guest", "debian"], project, vmlab_bin).returncode == 0
    assert "set suites.quick.command in vmlab.yaml" in (project / "vmlab.yaml").read_text()
    refused = run(["vmlab", "init", "--guest", "nosuch"], project, vmlab_bin)
    assert refused.returncode == 2 and "debian" in refused.stderr and "dragonfly" in refused.stderr


def test_a_projects_venv_is_never_sent_and_hints_name_vmlabs_own_commands(vmlab_bin: Path, tmp_path: Path) -> None:
    """The README's way in: vmlab installed into the project's own .venv. That venv is the host's
    Python (useless in a guest, and the bulk of the folder), so init leaves it out of the sync;
    and a user who types `vmlab ...` is told the next command as `vmlab ...`, not Invoke's name."""
    project = make_project(tmp_path / "counter")
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(project / ".venv")], check=True)
    assert run(["vmlab", "init", "--guest", "debian"], project, vmlab_bin).returncode == 0
    assert 'excludes: ["/.venv/"]' in (project / "vmlab.yaml").read_text()
    listed = run(["vmlab", "suites", "--json"], project, vmlab_bin)
    assert listed.returncode == 0, listed.stderr
    not_up = run(["vmlab", "sync"], project, vmlab_bin)
    assert not_up.returncode == 2
    assert not_up.stderr.endswith("start it: vmlab start\n") and "invoke" not in not_up.stderr, not_up.stderr


def test_a_project_tests_in_the_guest_with_its_own_make_vm_quick(vmlab_bin: Path, tmp_path: Path, vm_ready) -> None:
    """The whole adoption: init, then `make vm-quick`, which starts the guest. The quick suite is the
    project's `make test`, a privileged tmpfs test; `make` is not in the Debian image, so the
    config's `packages: [make]` are installed in the guest before the first suite runs."""
    project = make_project(tmp_path / "counter")
    try:
        assert run(["vmlab", "init", "--guest", "debian"], project, vmlab_bin).returncode == 0
        passed = run(["make", "vm-quick"], project, vmlab_bin)  # no vm-start first: quick starts it
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert "VM debian is stopped: starting it first" in passed.stderr
        assert "installing what the config asks for (make)" in passed.stderr
        assert "count-lines counted 3 lines on a tmpfs" in passed.stdout
        report = newest_report(project)
        assert report["passed"] and [s["status"] for s in report["suites"]] == ["passed"]

        makefile = project / "Makefile"
        makefile.write_text(makefile.read_text().replace("EXPECTED ?= 3", "EXPECTED ?= 4"))  # a test that fails
        failed = run(["vmlab", "quick"], project, vmlab_bin)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "installing what the config asks for" not in failed.stderr  # once is enough
        report = newest_report(project)
        assert not report["passed"]
        failure = ET.parse(Path(report["results_dir"]) / "junit.xml").getroot().find(".//failure")
        assert failure is not None and "expected 4 lines, got 3" in (failure.text or "")
        through_make = run(["make", "vm-quick"], project, vmlab_bin)
        assert through_make.returncode == 2 and "Error 1" in through_make.stderr  # make's own code for any failure
    finally:
        kill_vms(project)


def newest_report(project: Path) -> dict:
    runs = sorted((project / "vm").glob("*/results/*/report.json"), key=os.path.getmtime)
    return json.loads(runs[-1].read_text())


def test_a_project_carries_its_own_guest_and_vmlab_uses_it(project, vm_ready) -> None:
    """The project copies vmlab's debian guest into its own guests/ folder and changes what runs
    after a restore; `guests: [guests]` makes vmlab use that copy instead of its own."""
    import shutil

    from vmlab.schema import GUESTS_DIR

    own = project.root / "guests" / "debian"
    shutil.copytree(GUESTS_DIR / "debian", own)
    profile = own / "profile.yaml"
    profile.write_text(profile.read_text().replace(
        "after_restore: date", "after_restore: touch /run/restored-by-the-projects-guest && date"))
    project.write_config("guests: [guests]\nvms:\n  default: {profile: debian}\n")
    doctor = project.invoke("vm.doctor")
    assert f"guest debian from {own} (the project's own; it replaces vmlab's of that name)" in doctor.stdout
    assert project.invoke("vm.start").returncode == 0  # the image is vmlab's cached one: the same build files
    assert project.invoke("vm.snapshot").returncode == 0
    assert project.invoke("vm.restore").returncode == 0
    marker = project.invoke("vm.ssh", "-c", "test -e /run/restored-by-the-projects-guest && echo used || echo not")
    assert marker.stdout.strip() == "used"
    missing = project.write_config("guests: [guests]\nvms:\n  default: {profile: freebsd}\n")
    refused = project.invoke("vm.status")
    assert refused.returncode == 2 and f"{missing}:3: vms.default.profile: 'freebsd' is not allowed" in refused.stderr
