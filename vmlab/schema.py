"""What a user can set in vmlab.yaml: every key, its default, what it accepts and what it is for.

Each key is declared once, in the field tables below; a value parser returns the value or
raises ValueError saying what is allowed, and config.py turns that into an error naming the
file, line and key. docs/VM-TESTING.md's key list is checked against these tables.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

GUESTS_DIR = Path(__file__).parent / "guests"
# What a suite's `format:` may say; vmlab/runs/formats.py reads each.
FORMATS = ("junit", "pytest", "go-test", "tap")



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
        return str(value)

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


# A mirror's URL reaches a command line (debootstrap's, as root): only what a URL needs, and no
# character a shell or an option parser reads (no space, quote, `$`, `;`, newline; never a leading `-`).
_URL = re.compile(r"(https?://[A-Za-z0-9.\[\]:-]+|file://)(/[A-Za-z0-9._~%+,=:@/-]*)?")


def url(value: Any) -> str:
    if not isinstance(value, str) or not _URL.fullmatch(value):
        raise ValueError("an http://, https:// or file:// URL (letters, digits and ._~%+,=:@/- in its path)")
    return value.rstrip("/")


def mirror_list(value: Any) -> List[str]:
    """Mirrors in the order to try: URLs, or local folders laid out like a mirror."""
    allowed = "a list of http://, https:// or file:// URLs or local folder paths"
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and (_URL.fullmatch(v) if "://" in v else re.fullmatch(r"[^\x00-\x1f\x7f]+", v))
            and v.strip() for v in value):
        raise ValueError(allowed)
    return [v.rstrip("/") for v in value]


def debian_suite(value: Any) -> str:
    """A Debian suite (bookworm, stable, sid): it is debootstrap's argument, as root, never an option."""
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9.-]{0,39}", value):
        raise ValueError("a Debian suite or codename such as bookworm or stable: lowercase letters, digits, '.' "
                         "and '-', starting with a letter")
    return value


def release(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d+\.\d+\.\d+", value):
        raise ValueError("a release number such as '6.4.2' (quote it in YAML)")
    return value


def recipe_file(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.yaml", value):
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


WARM_KEYS = ("command", "privileged", "workdir", "env", "timeout")


def warm_spec(value: Any) -> Dict[str, Any]:
    """The warm-up: a command (a string), or a mapping of a suite's settings (command, privileged,
    workdir, env, timeout), run as a suite runs before the golden image's clean state is taken."""
    allowed = ("a command (a string), or a mapping with 'command' and any of privileged, workdir, env, "
               "timeout (as a suite has them)")
    if isinstance(value, str):
        value = {"command": value}
    if not isinstance(value, dict) or "command" not in value or not set(value) <= set(WARM_KEYS):
        raise ValueError(allowed)
    spec: Dict[str, Any] = {"command": text, "privileged": boolean, "workdir": guest_path, "env": environment,
                            "timeout": seconds}
    parsed: Dict[str, Any] = {"privileged": False, "workdir": ".", "env": {}, "timeout": 3600.0}
    for key, item in value.items():
        try:
            parsed[key] = spec[key](item)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    return parsed


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
    "warm": Field(warm_spec, None, "a command run in the synced project, as a suite runs, before the golden "
                                   "image's clean snapshot is taken (a warm build cache); see vmlab/lab/warming.py"),
}

# Options of a guest profile, under `profiles: {NAME: ...}`.
def package_list(value: Any) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", v)
                                              for v in value):
        raise ValueError("a list of package names")
    return value


_PACKAGES = Field(package_list, [], "packages the provision step installs (apt or pkg)")
_WARM = Field(warm_spec, None, "the warm-up of every VM of this profile (a VM's own `warm:` replaces it)")
_DEBIAN = {
    "mirror": Field(url, None, "Debian mirror; default: the one in this host's apt configuration"),
    "suite": Field(debian_suite, None, "Debian suite; default: this host's release codename"),
    "packages": _PACKAGES,
    "warm": _WARM,
}
PROFILE_FIELDS: Dict[str, Dict[str, Field]] = {  # by name; a project's own guest: by its OS (below)
    "debian": _DEBIAN,
    "rehearsal": _DEBIAN,
    "dragonfly": {
        "release": Field(release, None, "DragonFly release to install; default: the profile's pinned one"),
        "mirrors": Field(mirror_list, None, "mirrors to try in order; default: the profile's list"),
        "checksum": Field(checksum_pin, None, "pin the ISO's checksum instead of trusting md5.txt"),
        "recipe": Field(recipe_file, None, "the install recipe, a file in the profile's folder; default: the profile's "
                                           "(install.yaml, by PFI; install-shell.yaml types at the live shell)"),
        "packages": _PACKAGES,
        "warm": _WARM,
    },
}
PROFILE_FIELDS_BY_OS: Dict[str, Dict[str, Field]] = {"linux": _DEBIAN, "dragonfly": PROFILE_FIELDS["dragonfly"]}


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def string_list(value: Any) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a list of strings")
    return value


def environment(value: Any) -> Dict[str, str]:
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


def file_patterns(value: Any) -> List[str]:
    """Shell glob patterns under a suite's workdir: only characters a guest's shell cannot take
    for more than a name or a wildcard, and never above the workdir."""
    if not isinstance(value, list) or not all(
            isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.,+@%=*?\[\]][A-Za-z0-9_.,+@%=*?\[\]/-]*", v)
            and ".." not in v.split("/") for v in value):
        raise ValueError("a list of file patterns relative to the suite's workdir: letters, digits, '._-+/' and the "
                         "wildcards * ? [ ], without '..' and not starting with '/' or '-'")
    return value


def rsync_rule(pattern: str) -> bool:
    """Whether rsync's --exclude reads `pattern` as a rule rather than a pattern: `!` clears
    every exclude before it (vmlab's own `.git` and `/vm/` among them), `+ ` includes, `- `
    excludes; a leading `!` elsewhere is only a name's first character (it negates nothing)."""
    return pattern.startswith(("!", "+ ", "- "))


def rsync_excludes(value: Any) -> List[str]:
    """rsync patterns, never a rule (see rsync_rule): the guest must never get the lab's keys or .git."""
    patterns = string_list(value)
    for pattern in patterns:
        if rsync_rule(pattern):
            raise ValueError(f"rsync patterns (a list of strings); {pattern!r} is an rsync rule, not a pattern: "
                             "'!' would clear vmlab's own excludes, '+ ' and '- ' are not allowed, and rsync has no "
                             "'!' to re-include (for git's rules, set gitignore: true)")
    return patterns


# How the project reaches the guest, under `sync:`.
SYNC_FIELDS: Dict[str, Field] = {
    "guest_dir": Field(guest_path, "src", "where the project goes in the guest (relative: to the SSH user's home)"),
    "excludes": Field(rsync_excludes, [], "rsync patterns never sent (.git/ and vm/ never are)"),
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
    "format": Field(choice(*FORMATS), None, "what its output is, read as a test case per test (vmlab/runs/formats.py)"),
    "artifacts": Field(file_patterns, [], "files (globs, relative to workdir) copied back into the run's results"),
}

TOP_KEYS = ("defaults", "vms", "profiles", "guests", "cache_dir", "state_dir", "sync", "suites", "build", "quick",
            "restore_on_failure")
