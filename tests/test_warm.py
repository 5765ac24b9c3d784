"""The warm clean state (issue 25, item 1): `warm:` runs in the synced project before "clean" is taken.

On the real Debian guest with the guest's own Go (golang-go from Debian's mirror, installed
by the golden image's provisioning): a golden image made with a `warm:` command restores to a
state whose Go build cache is full, counted from `go test -x` (the compiler is run for nothing),
and shown to be a count that can fail (after `go clean -cache` it is not 0). The warm state is
the project's, beside its VMs, and the shared golden image is left as it was made. Nothing is mocked.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import GO_PACKAGES, Project, qemu_processes
from vmlab import config
from vmlab.errors import ConfigError
from vmlab.images import golden, warm
from vmlab.images.cache import sha256_file
from vmlab.lab import images

MODULE = Path(__file__).parent / "go-module"
WARM = "go test -count=1 -exec true ./..."
GO_CONFIG = """\
vms:
  default: {{}}
profiles:
  debian:
    packages: GO_PACKAGES
    warm: {{command: '{warm}', privileged: true}}
sync: {{guest_dir: gomodule}}
suites:
  quick: {{command: 'go test ./...', privileged: true}}
quick: quick
""".replace("GO_PACKAGES", GO_PACKAGES)  # the golden image the Go tests share (conftest)
# What the Go compiler compiled, from `go test -x` (each compile is one line running .../compile).
COMPILES = "go test -x -count=1 ./... 2>&1 | grep -c '/compile ' || true"


def load_text(tmp_path: Path, text: str) -> config.LabConfig:
    (tmp_path / "vmlab.yaml").write_text(text)
    return config.load(cwd=tmp_path)


def test_warm_is_a_command_or_a_suites_settings_per_vm_or_profile(tmp_path: Path) -> None:
    lab = load_text(tmp_path, "vms:\n  a: {warm: make warm}\n  b: {}\n  c: {warm: {command: make, privileged: true, "
                              "env: {CC: clang}, timeout: 60}}\nprofiles:\n  debian: {warm: make all}\n")
    a, b, c = (lab.vm(n).warm for n in "abc")
    assert a is not None and (a.name, a.command, a.privileged, a.workdir) == ("warm", "make warm", False, ".")
    assert b is None and lab.profile_options("debian")["warm"]["command"] == "make all"
    assert c is not None and (c.command, c.privileged, c.env, c.timeout) == ("make", True, (("CC", "clang"),), 60.0)


@pytest.mark.parametrize("text, where", [
    ("vms:\n  a:\n    warm: ''\n", "vmlab.yaml:3: vms.a.warm"),
    ("vms:\n  a:\n    warm: {privileged: true}\n", "vmlab.yaml:3: vms.a.warm"),
    ("defaults:\n  warm: {command: make, when: always}\n", "vmlab.yaml:2: defaults.warm"),
    ("profiles:\n  debian:\n    warm: {command: make, timeout: -1}\n", "vmlab.yaml:3: profiles.debian.warm"),
])
def test_a_wrong_warm_is_refused_naming_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert f"/{where}:" in str(e.value), str(e.value)
    assert "command" in str(e.value)


@pytest.fixture(scope="module")
def warm_go(shared_project: Project, vm_ready) -> Project:
    """A Go project whose golden image was made with a warm-up; its VM started from it."""
    shutil.copytree(MODULE, shared_project.root, dirs_exist_ok=True)
    shared_project.write_config(GO_CONFIG.format(warm=WARM))
    made = shared_project.invoke("vm.golden", timeout=3600)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "warming up: syncing the project and running `go test -count=1 -exec true ./...` as root" in made.stderr
    assert re.search(r"^warm state [0-9a-f]{16}: .*/vm/\.warm/[0-9a-f]{16}$", made.stdout, re.MULTILINE), made.stdout
    started = shared_project.invoke("vm.start")
    assert started.returncode == 0 and "restored to 'clean', not booted" in started.stderr, started.stderr
    return shared_project


def compiles(project: Project) -> int:
    assert project.invoke("vm.start").returncode == 0  # another test of the module may have stopped it
    counted = project.invoke("vm.ssh", "-c", f"cd gomodule && {COMPILES}", timeout=900)
    assert counted.returncode == 0 and counted.stdout.strip().isdigit(), counted.stdout + counted.stderr
    return int(counted.stdout)


def test_a_restore_goes_back_to_a_full_build_cache(warm_go: Project) -> None:
    project = warm_go
    assert compiles(project) == 0  # the first `go test` after the start built nothing: all in the cache
    assert project.invoke("vm.ssh", "-c", "go clean -cache").returncode == 0
    assert compiles(project) > 0  # an empty cache is seen: the count can fail
    restored = project.invoke("vm.restore")
    assert restored.returncode == 0, restored.stderr
    assert compiles(project) == 0  # the restore brought the warm cache back


def test_the_warm_state_is_the_projects_and_the_golden_image_is_unwritten(warm_go: Project) -> None:
    project = warm_go
    lab = project.lab()
    vm = lab.vm()
    gold = images.golden_of(vm)
    assert gold is not None
    gold.verify()  # every frozen file still has the sha256 recorded when it was made
    assert all(oct((gold.dir / name).stat().st_mode & 0o777) == "0o444" for name in golden.FROZEN)
    state = images.warm_state(vm)
    assert state is not None and state.dir.parent == project.root / "vm" / ".warm"
    assert oct(state.disk.stat().st_mode & 0o777) == "0o444"
    assert state.record["command"] == WARM and state.record["golden"] == gold.key
    assert json.loads((project.root / "vm" / "default" / "disk.json").read_text())["warm"] == state.key
    # the key of the shared golden image does not hold the warm-up: another project, without one, shares it
    other = project.root / "other-project"
    other.mkdir()
    (other / "vmlab.yaml").write_text(GO_CONFIG.format(warm=WARM).replace(f"    warm: {{command: '{WARM}', "
                                                                           "privileged: true}\n", ""))
    assert Project(other).invoke("vm.golden-key").stdout.strip() == gold.key
    assert warm.states(other / "vm") == []
    doctor = project.invoke("vm.doctor")
    assert f"warm state made just now by `{WARM}`" in doctor.stdout or \
        re.search(rf"warm state made \d+ minutes? ago by `{re.escape(WARM)}`", doctor.stdout), doctor.stdout


def test_the_first_turn_after_a_restore_sends_only_what_changed_since_the_warm_up(warm_go: Project) -> None:
    project = warm_go
    assert project.invoke("vm.restore").returncode == 0
    (project.root / "calc" / "calc.go").write_text((project.root / "calc" / "calc.go").read_text() + "\n// edited\n")
    turn = project.invoke("vm.quick", timeout=900)
    assert turn.returncode == 1, turn.stdout + turn.stderr  # it ran: the module has a failing test on purpose
    assert re.search(r"synced .*: \d+ changed files? sent .*only what changed", turn.stderr), turn.stderr
    assert "in the future" not in turn.stdout  # tar's word for a guest clock behind the host's


def test_a_changed_warm_makes_golden_warm_up_again_and_keeps_the_golden_image(warm_go: Project) -> None:
    project = warm_go
    before = images.warm_state(project.lab().vm())
    assert before is not None
    again = project.invoke("vm.golden")
    assert again.returncode == 0 and "is kept" in again.stderr and "warming up" not in again.stderr, again.stderr
    project.write_config(GO_CONFIG.format(warm="go vet ./..."))
    changed = project.invoke("vm.golden", timeout=3600)
    assert changed.returncode == 0, changed.stderr
    assert "(same inputs) is cached" in changed.stderr and "warming up" in changed.stderr
    after = images.warm_state(project.lab().vm())
    assert after is not None and after.key != before.key and after.record["command"] == "go vet ./..."
    assert not before.dir.exists()  # the one it replaced is gone: one warm state per VM
    try:
        assert project.invoke("vm.start").returncode == 0
        assert json.loads((project.root / "vm" / "default" / "disk.json").read_text())["warm"] == after.key
    finally:  # the module's other tests (in any order) count on the warm-up of GO_CONFIG: put it back
        project.write_config(GO_CONFIG.format(warm=WARM))
        back = project.invoke("vm.golden", timeout=3600)
        assert back.returncode == 0, back.stdout + back.stderr
        project.invoke("vm.start")


def test_a_failed_warm_up_fails_golden_naming_its_output(project: Project, vm_ready) -> None:
    project.write_config("vms:\n  default: {}\n  other: {}\n"
                         "profiles:\n  debian: {warm: 'echo warm-up-said-this; exit 3'}\n")
    (project.root / "marker.txt").write_text("synced\n")
    failed = project.invoke("vm.golden", timeout=3600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "the warm-up `echo warm-up-said-this; exit 3` failed, exit 3" in failed.stderr
    assert "warm-up-said-this" in failed.stderr.split("Its output: ", 1)[1]  # the end of its output, shown
    log = Path(re.search(r"Its output: (\S+)", failed.stderr).group(1))  # type: ignore[union-attr]
    assert log.is_file() and "warm-up-said-this" in log.read_text()
    assert warm.states(project.root / "vm") == []  # nothing half-warm kept
    assert qemu_processes(project.root) == []  # the VM it started is stopped
    lab = project.lab()
    gold = images.golden_of(lab.vm())
    assert gold is not None
    gold.verify()
    assert sha256_file(gold.dir / "clean.qcow2") == gold.manifest["files"]["clean.qcow2"]


def test_init_gives_a_go_module_a_warm_up_that_compiles_its_tests_as_the_quick_suite_runs(tmp_path: Path) -> None:
    from vmlab import init

    (tmp_path / "go.mod").write_text("module example.com/x\n\ngo 1.19\n")
    init.init(tmp_path, "debian", "linux", confirm=lambda question: False)
    lab = config.load(cwd=tmp_path)
    spec = config.warm_suite(lab.profile_options("debian")["warm"])
    quick = lab.suite("quick")
    assert spec is not None and spec.command == WARM and spec.privileged == quick.privileged
    assert "without running them" in (tmp_path / "vmlab.yaml").read_text()
    assert lab.profile_options("debian")["packages"] == ["golang-go", "gcc", "libc6-dev"]
    (tmp_path / "go.mod").unlink()
    (tmp_path / "vmlab.yaml").unlink()
    init.init(tmp_path, "debian", "linux", confirm=lambda question: False)
    assert "warm" not in config.load(cwd=tmp_path).profile_options("debian")  # not a project it knows how to warm
