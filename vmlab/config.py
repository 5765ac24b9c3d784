"""vmlab.yaml: the schema, its defaults, and validation that names file, line and key.

Everything a user can set is declared once, in the field tables below, with its
default and what it accepts. A wrong key, type or value is refused before
anything starts, and the message says where it is and what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import yaml

from vmlab.errors import ConfigError
from vmlab.schema import (
    PROFILE_FIELDS,
    PROFILE_FIELDS_BY_OS,
    SUITE_FIELDS,
    SYNC_FIELDS,
    TOP_KEYS,
    VM_FIELDS,
    Field,
    known_profiles,
)

CONFIG_NAME = "vmlab.yaml"
VM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")  # with fullmatch: "$" lets a newline end it


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
    warm: Optional[SuiteConfig] = None  # its own `warm:`; else its profile's (see vmlab/lab/warming.py)


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
    seen: Set[int] = set()  # an alias can make the node graph a cycle

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
        key = ".".join(k if re.fullmatch(r"[\w.-]+", k) else repr(k) for k in at)  # a key with a newline: one line
        return ConfigError(f"{loc}: {key or 'top level'}: {problem}")


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
        if not isinstance(name, str) or not VM_NAME.fullmatch(name):
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
            warm=warm_suite(merged["warm"]),
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
            profile_at: Tuple[str, ...] = ("vms", vm.name, "profile")
            raise where.error(profile_at if profile_at in lines else ("defaults", "profile"),
                              f"{vm.profile!r} is not allowed; expected a guest profile: {', '.join(known)} "
                              "(a project's own profiles are folders under those named in 'guests:')")
    profiles: Dict[str, Dict[str, Any]] = {}
    for name, options in _mapping(top.get("profiles"), ("profiles",), where).items():
        at = ("profiles", str(name))
        if name not in known:
            raise where.error(at, "unknown guest profile; known: " + ", ".join(known))
        fields = PROFILE_FIELDS.get(name) or PROFILE_FIELDS_BY_OS.get(_os_of(name, guest_dirs), {})
        profiles[name] = _fields(_mapping(options, at, where), fields, at, where)

    sync_values = _fields(_mapping(top.get("sync"), ("sync",), where), SYNC_FIELDS, ("sync",), where)
    sync = SyncConfig(guest_dir=sync_values.get("guest_dir", SyncConfig.guest_dir),
                      excludes=tuple(sync_values.get("excludes", ())),
                      gitignore=sync_values.get("gitignore", SyncConfig.gitignore))
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


def warm_suite(spec: Optional[Dict[str, Any]]) -> Optional[SuiteConfig]:
    """A `warm:` setting (schema.warm_spec's mapping) as the suite it runs as, named 'warm'."""
    if spec is None:
        return None
    return SuiteConfig(name="warm", command=spec["command"], workdir=spec["workdir"], privileged=spec["privileged"],
                       env=tuple(sorted(spec["env"].items())), timeout=spec["timeout"])


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
