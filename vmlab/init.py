"""`vmlab init`: set a project up to test in a VM, without touching what it already has.

It writes a commented vmlab.yaml (the guest, and the project's own test command as
the quick suite where it can tell), a vmlab.mk with every `vm-*` target and one
`include` line in the project's Makefile, and `vm/` in .gitignore. A file that is
there already is never overwritten without asking; run twice, it changes nothing.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

from vmlab.config import CONFIG_NAME

FRAGMENT = Path(__file__).with_name("vmlab.mk")
INCLUDE = "include vmlab.mk  # vmlab's vm-* targets (make vm-help)"
MAKEFILES = ("GNUmakefile", "makefile", "Makefile")  # GNU make's own search order

# The packages that bring a test command's tool, per guest OS. Debian's golang-go builds cgo
# (runtime/cgo: any test importing net or os/user) only with the C compiler it recommends,
# which the provisioning's --no-install-recommends leaves out.
TOOL_PACKAGES = {"go": {"linux": "golang-go, gcc, libc6-dev", "dragonfly": "go"},
                 "make": {"linux": "make", "dragonfly": "gmake"}}
MAKE_COMMAND = {"linux": "make", "dragonfly": "gmake"}  # DragonFly's make is BSD make
PLACEHOLDER = ("echo 'vmlab: no test command yet: set suites.quick.command in vmlab.yaml' >&2; exit 2")


# A Go module's warm-up: every package and its tests compiled and linked into Go's build cache,
# which the warm clean state keeps, and no test run: `-exec true` runs `true` instead of each
# test binary (no TestMain, nothing privileged), and neither it nor -count=1 leaves a test result
# a later `go test` would take as cached. `go vet ./...` and `go build ./...` leave the tests'
# own code to compile on the first turn after every restore; `go test -run '^$'` runs each test
# binary (its init and TestMain). Measured on moby/sys in the Debian guest under TCG (issue 25,
# load 4-5): the first `go test -json ./...` took 106 s with no warm-up, 10.1 s after this one
# (nothing compiled, 2 links), 35.8 s after `go vet ./...`, 66.3 s after `go build ./...`.
GO_WARM = "go test -count=1 -exec true ./..."
GO_WARM_COMMENT = """\
    # Run in the synced project, as the quick suite runs, before `make vm-golden` takes
    # 'clean': it compiles every package's tests without running them (-exec true), so a
    # restore keeps Go's build cache full. Give it the quick suite's build flags (-race,
    # -cover, -tags) and environment, or the suite builds its own way from cold.
"""


@dataclass(frozen=True)
class TestCommand:
    command: str
    found: str  # why this command: shown in the config's comment
    tool: Optional[str] = None  # a key of TOOL_PACKAGES the guest needs
    warm: Optional[str] = None  # the warm-up that fills the build cache the command uses


def detect(project: Path, os_name: str) -> TestCommand:
    """The project's own test command: go test for a Go module, make test for a Makefile with
    a test target, else a placeholder that fails saying what to set."""
    if (project / "go.mod").is_file():
        return TestCommand("go test ./...", "a Go module (go.mod)", "go", GO_WARM)
    makefile = _makefile(project)
    if makefile and re.search(r"^test\s*:(?!=)", makefile.read_text(errors="replace"), re.MULTILINE):
        return TestCommand(f"{MAKE_COMMAND.get(os_name, 'make')} test", f"a {makefile.name} with a 'test' target",
                           "make")
    return TestCommand(PLACEHOLDER, "no test command found: set yours here")


def init(project: Path, guest: str, os_name: str, confirm: Callable[[str], bool]) -> List[str]:
    """Set `project` up for VM `guest` (a guest profile of OS `os_name`); what was done, line by line.

    `confirm(question)` is asked before a file that exists would change (answer False: keep it).
    """
    project = project.resolve()
    done = [_write_config(project, guest, os_name, confirm), *_add_make_targets(project, confirm),
            _ignore_state(project)]
    return [line for line in done if line]


def config_text(project: Path, guest: str, os_name: str) -> str:
    test = detect(project, os_name)
    package = TOOL_PACKAGES.get(test.tool or "", {}).get(os_name)
    packages = f"[{package}]" if package else "[]"
    name = re.sub(r"[^A-Za-z0-9._-]", "-", project.name) or "project"
    git = (project / ".git").exists()
    ignoring = ("true  # leave out what git ignores" if git
                else "false  # true leaves out what git ignores (in a git checkout)")
    venvs = sorted(f"/{d.parent.name}/" for d in project.glob("*/pyvenv.cfg"))  # a host's Python: useless in a guest
    excludes = f"\n  excludes: [{', '.join(venvs)}]  # never sent: the host's virtualenv" if venvs else ""
    warm = f"{GO_WARM_COMMENT}    warm: {{command: {_yaml_string(test.warm)}, privileged: true}}\n" if test.warm else ""
    return f"""\
# vmlab: the VM this project's privileged tests run in (docs: vmlab's docs/VM-TESTING.md).
# `make vm-quick` syncs this folder into the guest and runs the quick suite there, as root.
vms:
  {guest}: {{profile: {guest}}}  # the guest OS; `vmlab --help init` lists the guests
profiles:
  {guest}:
    # Installed in the guest before the first suite runs; `make vm-golden` makes an
    # image that has them, so new VMs start with them.
    packages: {packages}
{warm}sync:
  guest_dir: {name}  # where this folder goes in the guest (under the SSH user's home)
  gitignore: {ignoring}; vm/ never goes{excludes}
suites:
  quick:
    # {test.found}
    command: {_yaml_string(test.command)}
    privileged: true  # as root: mounts, jails and the like need it
    timeout: 1800  # seconds; the suite is killed in the guest after it
quick: quick
"""


def _write_config(project: Path, guest: str, os_name: str, confirm: Callable[[str], bool]) -> str:
    path = project / CONFIG_NAME
    text = config_text(project, guest, os_name)
    if path.exists():
        if path.read_text(errors="replace") == text:
            return ""
        if not confirm(f"{path} exists; replace it with a new one for guest {guest!r}?"):
            return f"kept {path} as it is"
    path.write_text(text)
    return f"wrote {path}"


def _add_make_targets(project: Path, confirm: Callable[[str], bool]) -> Tuple[str, str]:
    fragment = project / "vmlab.mk"
    wrote = ""
    if not fragment.exists() or fragment.read_bytes() != FRAGMENT.read_bytes():
        if not fragment.exists() or confirm(f"{fragment} differs from this vmlab's; replace it?"):
            shutil.copyfile(FRAGMENT, fragment)
            wrote = f"wrote {fragment} (every vm-* target)"
        else:
            wrote = f"kept {fragment} as it is"
    makefile = _makefile(project) or project / "Makefile"
    text = makefile.read_text(errors="replace") if makefile.exists() else ""
    if re.search(r"^\s*-?include\s+vmlab\.mk\b", text, re.MULTILINE):
        return wrote, ""
    clashing = sorted(set(re.findall(r"^(vm-[a-z0-9-]+)\s*:(?!=)", text, re.MULTILINE)) & fragment_targets())
    if clashing:  # make would warn and keep one recipe of two: the user decides which go
        return wrote, (f"did not include vmlab.mk in {makefile}: it has targets of its own with vmlab's names "
                       f"({', '.join(clashing)}); remove them, then add the line `{INCLUDE}`")
    with open(makefile, "a") as f:
        f.write(("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + INCLUDE + "\n")
    return wrote, f"{'added' if text else 'wrote'} `include vmlab.mk` to {makefile}"


def fragment_targets() -> Set[str]:
    """The targets vmlab.mk defines."""
    return set(re.findall(r"^(vm-[a-z0-9-]+):", FRAGMENT.read_text(), re.MULTILINE))


def _ignore_state(project: Path) -> str:
    gitignore = project / ".gitignore"
    text = gitignore.read_text(errors="replace") if gitignore.exists() else ""
    if re.search(r"^/?vm/?\s*$", text, re.MULTILINE):
        return ""
    with open(gitignore, "a") as f:
        f.write(("\n" if text and not text.endswith("\n") else "") + "# vmlab's VM state: disks, logs, keys\n/vm/\n")
    return f"added /vm/ to {gitignore}"


def _makefile(project: Path) -> Optional[Path]:
    return next((project / n for n in MAKEFILES if (project / n).is_file()), None)


def _yaml_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
