"""vmlab.yaml: the schema, its defaults, and validation that names file, line and key.

Everything a user can set is declared once, in the field tables below, with its
default and what it accepts. A wrong key, type or value is refused before
anything starts, and the message says where it is and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from vmlab.errors import ConfigError
from vmlab.formats import FORMATS

CONFIG_NAME = "vmlab.yaml"
VM_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
GUESTS_DIR = Path(__file__).parent / "guests"


def known_profiles(guest_dirs: Sequence[Path] = ()) -> list[str]:
    """Guest profiles are the folders holding a profile.yaml: the project's own (its
    `guests:` folders) and vmlab's built-in ones under vmlab/guests/."""
    return sorted({p.parent.name for d in (*guest_dirs, GUESTS_DIR) for p in Path(d).glob("*/profile.yaml")})


# --- value parsers: each returns the value or raises ValueError(what is allowed) ---

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def memory_mib(value: Any) -> int:
    """Memory: a number of MiB (as QEMU's -m), or a string with a unit ('2G')."""
    allowed = "a number of MiB (1024) or a size with a unit ('2G', '512M'), at least 128M"
    if isinstance(value, bool):
        raise ValueError(allowed)
    if isinstance(value, int):
        mib = value
    elif isinstance(value, str):
        try:
            mib = _parse_size(value) // 2**20 if re.search(r"[A-Za-z]", value) else int(value)
        except ValueError:
            raise ValueError(allowed) from None
    else:
        raise ValueError(allowed)
    if mib < 128:
        raise ValueError(allowed)
    return mib


def disk_bytes(value: Any) -> int:
    """Disk size: always with a unit, so that '8' is never read as eight bytes."""
    allowed = "a size with a unit such as '8G' or '20480M', at least 1G"
    if not isinstance(value, str):
        raise ValueError(allowed)
    try:
        size = _parse_size(value)
    except ValueError:
        raise ValueError(allowed) from None
    if size < 2**30 or not re.search(r"[KMGT]", value, re.IGNORECASE):
        raise ValueError(allowed)
    return size


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return value

    return parse


def seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError("a number of seconds greater than 0 (not .inf or .nan)")
    return float(value)


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return value

    return parse


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value


def user_name(value: Any) -> str:
    """A login name, as it reaches ssh and the guest's shell: never an option, never more than a name."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", value):
        raise ValueError("a user name: letters, digits, '_', '.' and '-', not starting with '-' or '.'")
    return value


def profile_name(value: Any) -> str:
    """A guest profile's name; whether it exists is checked once the config's `guests:` are known."""
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
        raise ValueError("the name of a guest profile: " + ", ".join(known_profiles()) + ", or one of the "
                         "project's own (see 'guests:')")
    return value


def ssh_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or 1024 <= value <= 65535):
        raise ValueError("0 (pick a free port at start) or a port from 1024 to 65535")
    return value


def url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^(https?|file)://\S+$", value):
        raise ValueError("an http://, https:// or file:// URL")
    return value.rstrip("/")


def mirror_list(value: Any) -> list:
    """Mirrors in the order to try: URLs, or local folders laid out like a mirror."""
    allowed = "a list of http://, https:// or file:// URLs or local folder paths"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(allowed)
    return [v.rstrip("/") for v in value]


def release(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d+\.\d+\.\d+", value):
        raise ValueError("a release number such as '6.4.2' (quote it in YAML)")
    return value


def recipe_file(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\w.-]+\.yaml", value):
        raise ValueError("the file name of a recipe in the guest's folder, such as install-shell.yaml")
    return value


def checksum_pin(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})", value):
        raise ValueError("'md5:<32 hex digits>' or 'sha256:<64 hex digits>'")
    return value


@dataclass(frozen=True)
class Field:
    parse: Callable[[Any], Any]
    default: Any
    doc: str


# Settings of one VM, under `defaults:` (all VMs) or `vms: {NAME: ...}` (one VM).
VM_FIELDS: Dict[str, Field] = {
    "profile": Field(profile_name, "debian", "guest profile: a folder under vmlab/guests/"),
    "memory": Field(memory_mib, 1024, "guest RAM, MiB or with a unit ('2G')"),
    "cpus": Field(integer(1, 64), 2, "virtual CPUs"),
    "disk_size": Field(disk_bytes, 8 * 2**30, "size of the VM's disk, with a unit ('8G')"),
    "accel": Field(choice("auto", "kvm", "tcg"), "auto", "auto proves KVM works before using it"),
    "ssh_user": Field(user_name, "root", "user vmlab logs in as"),
    "ssh_port": Field(ssh_port, 0, "host port forwarded to the guest's sshd on 127.0.0.1; 0 picks one"),
    "boot_timeout": Field(seconds, 300.0, "seconds from start until SSH must answer"),
    "fallback": Field(text, None, "another VM whose golden image vm.golden --from-scratch makes instead "
                                  "when this VM's ISO cannot be had (offline)"),
}

# Options of a guest profile, under `profiles: {NAME: ...}`.
def package_list(value: Any) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][\w.+-]*", v)
                                              for v in value):
        raise ValueError("a list of package names")
    return value


_PACKAGES = Field(package_list, [], "packages the provision step installs (apt or pkg)")
_DEBIAN = {
    "mirror": Field(url, None, "Debian mirror; default: the one in this host's apt configuration"),
    "suite": Field(text, None, "Debian suite; default: this host's release codename"),
    "packages": _PACKAGES,
}
PROFILE_FIELDS: Dict[str, Dict[str, Field]] = {  # by name; a project's own guest: by its OS (below)
    "debian": _DEBIAN,
    "rehearsal": _DEBIAN,
    "dragonfly": {
        "release": Field(release, None, "DragonFly release to install; default: the profile's pinned one"),
        "mirrors": Field(mirror_list, None, "mirrors to try in order; default: the profile's list"),
        "checksum": Field(checksum_pin, None, "pin the ISO's checksum instead of trusting md5.txt"),
        "recipe": Field(recipe_file, None, "the install recipe, a file in the profile's folder; default: the "
                                           "profile's (install.yaml, by PFI; install-shell.yaml types at the live shell)"),
        "packages": _PACKAGES,
    },
}
PROFILE_FIELDS_BY_OS: Dict[str, Dict[str, Field]] = {"linux": _DEBIAN, "dragonfly": PROFILE_FIELDS["dragonfly"]}


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def string_list(value: Any) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a list of strings")
    return value


def environment(value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
                                              and isinstance(v, (str, int, float)) for k, v in value.items()):
        raise ValueError("a mapping of variable names to strings")
    return {k: str(v) for k, v in value.items()}


def guest_path(value: Any) -> str:
    """A folder or file in the guest; never outside where it is relative to ('..'), never an option ('-')."""
    if (not isinstance(value, str) or not value.strip() or any(c in value for c in "\n'\"$`")
            or value.startswith("-") or ".." in value.split("/")):
        raise ValueError("a path in the guest (absolute, or relative to the SSH user's home), "
                         "without '..' and not starting with '-'")
    return value.rstrip("/") or "/"


def file_patterns(value: Any) -> list:
    """Shell glob patterns under a suite's workdir: only characters a guest's shell cannot take
    for more than a name or a wildcard, and never above the workdir."""
    if not isinstance(value, list) or not all(
            isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.,+@%=*?\[\]][A-Za-z0-9_.,+@%=*?\[\]/-]*", v)
            and ".." not in v.split("/") for v in value):
        raise ValueError("a list of file patterns relative to the suite's workdir: letters, digits, '._-+/' and the "
                         "wildcards * ? [ ], without '..' and not starting with '/' or '-'")
    return value


# How the project reaches the guest, under `sync:`.
SYNC_FIELDS: Dict[str, Field] = {
    "guest_dir": Field(guest_path, "src", "where the project goes in the guest (relative: to the SSH user's home)"),
    "excludes": Field(string_list, [], "rsync patterns never sent (.git/ and vm/ never are)"),
    "gitignore": Field(boolean, False, "also leave out what the project's .gitignore files name"),
}

# One test suite, under `suites: {NAME: ...}`.
SUITE_FIELDS: Dict[str, Field] = {
    "command": Field(text, None, "shell command run in the guest (required)"),
    "workdir": Field(guest_path, ".", "folder to run it in, relative to sync.guest_dir"),
    "privileged": Field(boolean, False, "run as root (through the profile's sudo/doas when ssh_user is not root)"),
    "env": Field(environment, {}, "environment variables for the command"),
    "timeout": Field(seconds, 1800.0, "seconds before the command is killed and reported as timed out"),
    "junit": Field(guest_path, None, "JUnit XML file the command writes (relative to workdir); vmlab fetches it"),
    "format": Field(choice(*FORMATS), None, "what its output is, read as a test case per test (vmlab/formats.py)"),
    "artifacts": Field(file_patterns, [], "files (globs, relative to workdir) copied back into the run's results"),
}

TOP_KEYS = ("defaults", "vms", "profiles", "guests", "cache_dir", "state_dir", "sync", "suites", "build", "quick",
            "restore_on_failure")


@dataclass(frozen=True)
class SyncConfig:
    guest_dir: str = "src"
    excludes: Tuple[str, ...] = ()
    gitignore: bool = False


@dataclass(frozen=True)
class SuiteConfig:
    name: str
    command: str
    workdir: str = "."
    privileged: bool = False
    env: Tuple[Tuple[str, str], ...] = ()
    timeout: float = 1800.0
    junit: Optional[str] = None
    format: Optional[str] = None  # "junit" whenever `junit` is set
    artifacts: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.junit and not self.format:
            object.__setattr__(self, "format", "junit")  # `junit:` alone is today's way to say it


@dataclass(frozen=True)
class VMConfig:
    """One VM's settings, defaults applied."""

    name: str
    profile: str
    memory_mib: int
    cpus: int
    disk_bytes: int
    accel: str
    ssh_user: str
    ssh_port: int
    boot_timeout: float
    fallback: Optional[str] = None


@dataclass(frozen=True)
class LabConfig:
    """A lab: the project it belongs to, where state and cache live, and its VMs."""

    source: str  # the file read, or "built-in defaults"
    project_dir: Path
    cache_dir: Path
    vms: Dict[str, VMConfig]
    state_dir: Path  # the VMs' folders (vm/ beside the config unless it says otherwise)
    guest_dirs: Tuple[Path, ...] = ()  # the project's own guest profiles, searched before vmlab's
    profiles: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    sync: SyncConfig = SyncConfig()
    suites: Dict[str, SuiteConfig] = field(default_factory=dict)
    build: Optional[str] = None  # the command vm.build runs in sync.guest_dir
    quick: Optional[str] = None  # the suite vm.quick runs after syncing
    restore_on_failure: bool = False  # restore "clean" after a failed privileged suite

    def vm(self, name: Optional[str] = None) -> VMConfig:
        """The VM called `name`, or the first one configured."""
        if not name:
            return next(iter(self.vms.values()))
        if name not in self.vms:
            raise ConfigError(
                f"{self.source}: there is no VM named {name!r}; "
                f"configured VMs: {', '.join(self.vms)} (add it under 'vms:')"
            )
        return self.vms[name]

    def profile_options(self, profile: str) -> Dict[str, Any]:
        return self.profiles.get(profile, {})

    def suite(self, name: str) -> SuiteConfig:
        if name not in self.suites:
            known = ", ".join(self.suites) or "none"
            raise ConfigError(f"{self.source}: there is no suite named {name!r}; configured suites: {known} "
                              "(add it under 'suites:')")
        return self.suites[name]


def suite_matrix(cfg: LabConfig) -> List[Dict[str, Any]]:
    """Each suite as one CI job needs it (name, privileged, timeout), in the config's order: a
    workflow's matrix made from this can only name suites that exist, and gains a job per new one."""
    return [{"suite": s.name, "privileged": s.privileged, "timeout": int(s.timeout) if s.timeout.is_integer()
             else s.timeout} for s in cfg.suites.values()]


# --- loading ---


def find_config(explicit: Optional[str] = None, cwd: Optional[Path] = None) -> Optional[Path]:
    """--config, else $VMLAB_CONFIG, else ./vmlab.yaml if present, else None (defaults)."""
    for origin, value in (("--config", explicit), ("VMLAB_CONFIG", os.environ.get("VMLAB_CONFIG"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: no such config file (from {origin})")
            return path.resolve()
    candidate = (cwd or Path.cwd()) / CONFIG_NAME
    return candidate.resolve() if candidate.is_file() else None


def default_cache_dir() -> Path:
    if os.environ.get("VMLAB_CACHE"):
        return Path(os.environ["VMLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmlab"


def load(explicit: Optional[str] = None, cwd: Optional[Path] = None) -> LabConfig:
    """Read and validate the lab's config; with no file, the built-in defaults."""
    path = find_config(explicit, cwd)
    if path is None:
        return _build({}, {}, "built-in defaults", (cwd or Path.cwd()).resolve())
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data, lines = _read_yaml(raw.decode("utf-8"), str(path))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        try:  # the key on (or above) that line, to say which value to fix
            _, lines = _read_yaml(raw.decode("utf-8", errors="replace"), str(path))
        except ConfigError:
            lines = {}
        at = max((k for k, n in lines.items() if n <= line), key=lambda k: (lines[k], len(k)), default=())
        raise _Where(str(path), lines).error(at, f"byte 0x{raw[e.start]:02x} is not UTF-8 text; "
                                                 "save the file as UTF-8", line=line) from None
    return _build(data, lines, str(path), path.parent)


def _read_yaml(text_: str, source: str) -> Tuple[Any, Dict[Tuple[str, ...], int]]:
    """The document, and the line of every mapping key (by its path) for messages."""
    try:
        loader = yaml.SafeLoader(text_)  # refuses control characters already
    except yaml.YAMLError as e:
        line = text_.count("\n", 0, getattr(e, "position", 0)) + 1
        raise ConfigError(f"{source}:{line}: not valid YAML: {e}".splitlines()[0]) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    lines: Dict[Tuple[str, ...], int] = {}
    seen: set = set()  # an alias can make the node graph a cycle

    def walk(n: yaml.Node, at: Tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode) and id(n) not in seen:
            seen.add(id(n))
            for k, v in n.value:
                key = at + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    if node is not None:
        walk(node, ())
    return data, lines


class _Where:
    """Formats 'file:line: key' for the key path being validated."""

    def __init__(self, source: str, lines: Mapping[Tuple[str, ...], int]):
        self.source, self.lines = source, lines

    def error(self, at: Tuple[str, ...], problem: str, line: Optional[int] = None) -> ConfigError:
        line = line or next((self.lines[at[:i]] for i in range(len(at), 0, -1) if at[:i] in self.lines), None)
        loc = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{loc}: {'.'.join(at) or 'top level'}: {problem}")


def _mapping(value: Any, at: Tuple[str, ...], where: _Where) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(at, f"expected a mapping (key: value), got {type(value).__name__}")
    return value


def _fields(values: Dict[str, Any], fields: Mapping[str, Field], at: Tuple[str, ...], where: _Where) -> Dict[str, Any]:
    """Validate `values` against `fields`; returns only the keys given."""
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise where.error(at + (str(key),), "unknown key; allowed here: " + ", ".join(fields))
        try:
            out[key] = fields[key].parse(value)
        except ValueError as e:
            raise where.error(at + (key,), f"{value!r} is not allowed; expected {e}") from None
    return out


def _build(data: Any, lines: Mapping[Tuple[str, ...], int], source: str, project_dir: Path) -> LabConfig:
    where = _Where(source, lines)
    top = _mapping(data, (), where)
    for key in top:
        if key not in TOP_KEYS:
            raise where.error((str(key),), "unknown key; allowed at the top level: " + ", ".join(TOP_KEYS))

    base = {k: f.default for k, f in VM_FIELDS.items()}
    base.update(_fields(_mapping(top.get("defaults"), ("defaults",), where), VM_FIELDS, ("defaults",), where))

    vms_raw = _mapping(top.get("vms"), ("vms",), where) or {"default": {}}
    vms: Dict[str, VMConfig] = {}
    for name, settings in vms_raw.items():
        at = ("vms", str(name))
        if not isinstance(name, str) or not VM_NAME.match(name):
            raise where.error(at, "a VM name is lowercase letters, digits and '-', at most 31 characters")
        merged = dict(base, **_fields(_mapping(settings, at, where), VM_FIELDS, at, where))
        vms[name] = VMConfig(
            name=name,
            profile=merged["profile"],
            memory_mib=merged["memory"],
            cpus=merged["cpus"],
            disk_bytes=merged["disk_size"],
            accel=merged["accel"],
            ssh_user=merged["ssh_user"],
            ssh_port=merged["ssh_port"],
            boot_timeout=merged["boot_timeout"],
            fallback=merged["fallback"],
        )

    for vm in vms.values():
        if vm.fallback is not None and (vm.fallback not in vms or vm.fallback == vm.name):
            raise where.error(("vms", vm.name, "fallback"), f"{vm.fallback!r} is not another configured VM; "
                                                           f"configured: {', '.join(vms)}")
    guest_dirs = tuple(_folder(project_dir, item, ("guests",), where) for item in _list(top.get("guests"), ("guests",),
                                                                                          where))
    known = known_profiles(guest_dirs)
    for vm in vms.values():
        if vm.profile not in known:
            at = ("vms", vm.name, "profile") if ("vms", vm.name, "profile") in lines else ("defaults", "profile")
            raise where.error(at, f"{vm.profile!r} is not allowed; expected a guest profile: {', '.join(known)} "
                                  "(a project's own profiles are folders under those named in 'guests:')")
    profiles: Dict[str, Dict[str, Any]] = {}
    for name, options in _mapping(top.get("profiles"), ("profiles",), where).items():
        at = ("profiles", str(name))
        if name not in known:
            raise where.error(at, "unknown guest profile; known: " + ", ".join(known))
        fields = PROFILE_FIELDS.get(name) or PROFILE_FIELDS_BY_OS.get(_os_of(name, guest_dirs), {})
        profiles[name] = _fields(_mapping(options, at, where), fields, at, where)

    sync = SyncConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in
                         _fields(_mapping(top.get("sync"), ("sync",), where), SYNC_FIELDS, ("sync",), where).items()})
    suites: Dict[str, SuiteConfig] = {}
    for name, settings in _mapping(top.get("suites"), ("suites",), where).items():
        at = ("suites", str(name))
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise where.error(at, "a suite name is lowercase letters, digits, '-' and '_'")
        given = _fields(_mapping(settings, at, where), SUITE_FIELDS, at, where)
        if "command" not in given:
            raise where.error(at, "a suite needs a 'command'")
        given["env"] = tuple(sorted(given.get("env", {}).items()))
        given["artifacts"] = tuple(given.get("artifacts", ()))
        given["format"] = _suite_format(given, at, where)
        suites[name] = SuiteConfig(name=name, **given)
    build = top.get("build")
    if build is not None and (not isinstance(build, str) or not build.strip()):
        raise where.error(("build",), "expected the build command, a string")
    quick = top.get("quick")
    if quick is not None and (not isinstance(quick, str) or quick not in suites):
        raise where.error(("quick",), f"{quick!r} is not the name of a suite (one name, not a list); "
                                      f"configured suites: {', '.join(suites) or 'none'}")
    restore_on_failure = top.get("restore_on_failure", False)
    if not isinstance(restore_on_failure, bool):
        raise where.error(("restore_on_failure",), "expected true or false")

    cache_dir = _folder(project_dir, top["cache_dir"], ("cache_dir",), where) if "cache_dir" in top \
        else default_cache_dir()
    state_dir = _folder(project_dir, top["state_dir"], ("state_dir",), where) if "state_dir" in top \
        else project_dir / "vm"
    return LabConfig(source=source, project_dir=project_dir, cache_dir=cache_dir, vms=vms, state_dir=state_dir,
                     guest_dirs=guest_dirs, profiles=profiles, sync=sync, suites=suites, build=build, quick=quick,
                     restore_on_failure=restore_on_failure)


def _suite_format(given: Dict[str, Any], at: Tuple[str, ...], where: _Where) -> Optional[str]:
    """`junit:` names the file of format junit (alone, it says format junit), and format junit needs it."""
    format_ = given.get("format")
    if format_ == "junit" and not given.get("junit"):
        raise where.error(at + ("format",), "format junit needs 'junit:', the file the command writes")
    if format_ not in (None, "junit") and given.get("junit"):
        raise where.error(at + ("junit",), f"'junit:' is the file of format junit, but this suite's format is "
                                           f"{format_}: remove one of them")
    return format_


def _folder(project_dir: Path, value: Any, at: Tuple[str, ...], where: _Where) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise where.error(at, "expected a folder path (relative to the config file)")
    return project_dir / Path(value).expanduser()


def _list(value: Any, at: Tuple[str, ...], where: _Where) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise where.error(at, "expected a list of folders, e.g. [guests]")
    return value


def _os_of(profile: str, guest_dirs: Sequence[Path]) -> str:
    from vmlab import guests  # guests reads profile.yaml files; config only needs the OS here

    return guests.load(profile, guest_dirs).os
