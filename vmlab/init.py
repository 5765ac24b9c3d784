"""`vmlab init`: set a project up to test in a VM, without touching what it already has.

It writes a commented vmlab.yaml (the guest, and the project's own test command as
the quick suite where it can tell), a vmlab.mk with every `vm-*` target and one
`include` line in the project's Makefile, and `vm/` in .gitignore. A file that is
there already is never overwritten without asking; run twice, it changes nothing.

It writes only regular files in the project, as `tar` and `rsync` refuse to write
through a link they did not make: every file it would touch is looked at (never
followed) before anything is written; a folder or a device there stops it, a link is
replaced by a file only when the user says so (vmlab.yaml, vmlab.mk) or left alone with
the line to add (Makefile, .gitignore). Names it writes into vmlab.yaml are quoted.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

from vmlab import atomic
from vmlab.config import CONFIG_NAME
from vmlab.errors import ConfigError
from vmlab.sync.rules import anchored

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


Step = Tuple[str, Optional[Callable[[], None]]]  # what is said, and the write that does it (None: nothing)


def init(project: Path, guest: str, os_name: str, confirm: Callable[[str], bool]) -> List[str]:
    """Set `project` up for VM `guest` (a guest profile of OS `os_name`); what was done, line by line.

    `confirm(question)` is asked before a file that exists would change, or a link would be
    replaced (answer False: keep it). Every file is checked, and every question asked, before
    anything is written: ConfigError (nothing written) if one of them is not a file or a link.
    """
    project = project.resolve()
    for path in (project / CONFIG_NAME, project / "vmlab.mk", _makefile_to_change(project), project / ".gitignore"):
        kind = _kind(path)
        if kind not in ("missing", "file", "link"):
            raise ConfigError(f"{path} is {kind}, not a file: vmlab init writes only regular files, so nothing "
                              "was written; move it out of the way and run it again")
    steps = [_write_config(project, guest, os_name, confirm), *_add_make_targets(project, confirm),
             _ignore_state(project)]
    for _, write in steps:
        if write:
            write()
    return [line for line, _ in steps if line]


def config_text(project: Path, guest: str, os_name: str) -> str:
    test = detect(project, os_name)
    package = TOOL_PACKAGES.get(test.tool or "", {}).get(os_name)
    packages = f"[{package}]" if package else "[]"
    # the guest folder: a plain name (never an option, never `..`), quoted (`yes`, `null`, `1.5` are YAML's)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", project.name).lstrip("-.") or "project"
    git = (project / ".git").exists()
    ignoring = ("true  # leave out what git ignores" if git
                else "false  # true leaves out what git ignores (in a git checkout)")
    venvs = sorted(anchored(d.parent.name) + "/" for d in project.glob("*/pyvenv.cfg"))  # the host's: useless there
    excludes = (f"\n  excludes: [{', '.join(map(_yaml_name, venvs))}]  # never sent: the host's virtualenv"
                if venvs else "")
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
  guest_dir: {_yaml_name(name)}  # where this folder goes in the guest (under the SSH user's home)
  gitignore: {ignoring}; vm/ never goes{excludes}
suites:
  quick:
    # {test.found}
    command: {_yaml_string(test.command)}
    privileged: true  # as root: mounts, jails and the like need it
    timeout: 1800  # seconds; the suite is killed in the guest after it
quick: quick
"""


def _write_config(project: Path, guest: str, os_name: str, confirm: Callable[[str], bool]) -> Step:
    path = project / CONFIG_NAME
    text = config_text(project, guest, os_name)
    kind = _kind(path)
    if kind == "link":
        if not confirm(f"{path} is a symbolic link (to {os.readlink(path)}); replace the link with a new vmlab.yaml "
                       f"for guest {guest!r}? (what it names is not touched)"):
            return f"kept {path} (a symbolic link) as it is", None
    elif kind == "file":
        if path.read_text(errors="replace") == text:
            return "", None
        if not confirm(f"{path} exists; replace it with a new one for guest {guest!r}?"):
            return f"kept {path} as it is", None
    return f"wrote {path}", lambda: atomic.write_text(path, text)  # a new file renamed over it: a link is replaced


def _add_make_targets(project: Path, confirm: Callable[[str], bool]) -> Tuple[Step, Step]:
    fragment = project / "vmlab.mk"
    wrote: Step = ("", None)
    kind = _kind(fragment)
    if kind == "missing" or (kind == "file" and fragment.read_bytes() != FRAGMENT.read_bytes()) or kind == "link":
        question = (f"{fragment} is a symbolic link (to {os.readlink(fragment)}); replace the link with vmlab's?"
                    if kind == "link" else f"{fragment} differs from this vmlab's; replace it?")
        if kind == "missing" or confirm(question):
            wrote = (f"wrote {fragment} (every vm-* target)", lambda: atomic.write_text(fragment, FRAGMENT.read_text()))
        else:
            wrote = (f"kept {fragment}{' (a symbolic link)' if kind == 'link' else ''} as it is", None)
    makefile = _makefile_to_change(project)
    kind = _kind(makefile)
    text = makefile.read_text(errors="replace") if makefile.is_file() else ""  # a link's file is read, never written
    if re.search(r"^\s*-?include\s+vmlab\.mk\b", text, re.MULTILINE):
        return wrote, ("", None)
    if kind == "link":
        return wrote, (f"did not include vmlab.mk in {makefile}: it is a symbolic link (to {os.readlink(makefile)}), "
                       f"which vmlab init does not write through; add the line `{INCLUDE}` to the file it names", None)
    clashing = sorted(set(re.findall(r"^(vm-[a-z0-9-]+)\s*:(?!=)", text, re.MULTILINE)) & fragment_targets())
    if clashing:  # make would warn and keep one recipe of two: the user decides which go
        return wrote, (f"did not include vmlab.mk in {makefile}: it has targets of its own with vmlab's names "
                       f"({', '.join(clashing)}); remove them, then add the line `{INCLUDE}`", None)
    addition = ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + INCLUDE + "\n"
    own = sorted(own_test_targets(text))
    kept = (f"; kept {makefile.name}'s own {', '.join(own)}: make runs your recipes for those names, not vmlab's "
            "(vmlab's run of any suite: `make vm-test VM_SUITE=NAME`)") if own else ""
    return wrote, (f"{'added' if text else 'wrote'} `include vmlab.mk` to {makefile}{kept}",
                   lambda: _append(makefile, addition, new=kind == "missing"))


def fragment_targets() -> Set[str]:
    """The targets vmlab.mk defines by name (not vm-test-%, its pattern rule)."""
    return set(re.findall(r"^(vm-[a-z0-9-]+):", FRAGMENT.read_text(), re.MULTILINE))


def own_test_targets(makefile_text: str) -> Set[str]:
    """The vm-test-* targets (or pattern) a Makefile has of its own: make runs those, not vmlab.mk's
    vm-test-% (a pattern rule yields to a target of the name, and to a pattern defined before it)."""
    rules = re.findall(r"^([^\s:#=][^:#=]*)::?(?!=)", makefile_text, re.MULTILINE)
    return {t for rule in rules for t in rule.split() if t.startswith("vm-test-")} - fragment_targets()


def suite_target(suite: str, project: Path) -> str:
    """What `make` runs `suite` with in `project`: vm-test-NAME, unless that name is taken (vm-test-all,
    or the project's own target): then vm-test VM_SUITE=NAME."""
    makefile = _makefile(project)
    taken = fragment_targets() | (own_test_targets(makefile.read_text(errors="replace")) if makefile else set())
    target = f"vm-test-{suite}"
    return f"vm-test VM_SUITE={suite}" if target in taken or "vm-test-%" in taken else target


def _ignore_state(project: Path) -> Step:
    gitignore = project / ".gitignore"
    kind = _kind(gitignore)
    text = gitignore.read_text(errors="replace") if gitignore.is_file() else ""  # a link's file is read, never written
    if re.search(r"^/?vm/?\s*$", text, re.MULTILINE):
        return "", None
    if kind == "link":
        return (f"did not add /vm/ to {gitignore}: it is a symbolic link (to {os.readlink(gitignore)}), which vmlab "
                "init does not write through; add the line `/vm/` to the file it names", None)
    addition = ("\n" if text and not text.endswith("\n") else "") + "# vmlab's VM state: disks, logs, keys\n/vm/\n"
    return f"added /vm/ to {gitignore}", lambda: _append(gitignore, addition, new=kind == "missing")


def _makefile(project: Path) -> Optional[Path]:
    return next((project / n for n in MAKEFILES if (project / n).is_file()), None)


def _makefile_to_change(project: Path) -> Path:
    """The makefile make reads (the first of MAKEFILES there, following links, as make does);
    if none, the first name taken by something else (a dangling link, a folder), else Makefile."""
    return next((project / n for n in MAKEFILES if (project / n).exists()), None) or \
        next((project / n for n in MAKEFILES if os.path.lexists(project / n)), project / "Makefile")


def _kind(path: Path) -> str:
    """What is at `path`, never following a link: missing, file, link, or what else it is."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISREG(mode):
        return "file"
    return "a folder" if stat.S_ISDIR(mode) else "a special file (a fifo, socket or device)"


def _append(path: Path, text: str, new: bool) -> None:
    """Add `text` at the end of the regular file `path` (made if `new`), never through a link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if new else 0)
    fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "w") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path} is not a regular file: vmlab init did not write to it")
        f.write(text)


def _yaml_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _yaml_name(text: str) -> str:
    """A folder's name as a YAML string whatever it holds (`yes`, `1.5`, `a,b`, `x]y`, `x #y`, a
    control character): JSON's double quotes, which YAML reads as they are."""
    return json.dumps(text)
