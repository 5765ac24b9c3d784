"""Guest profiles: one folder per guest OS under vmlab/guests/, described by its profile.yaml.

A profile is data (how the guest boots, what its image is built from, who logs
in) beside the scripts it names, so adding a guest OS is adding a folder. It is
read once, into the typed sections below, and every key is checked then: a
mistake is an error naming the file and the key, not a KeyError later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Type, TypeVar, get_type_hints

import yaml

from vmlab.errors import ConfigError
from vmlab.schema import GUESTS_DIR, known_profiles

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Section = TypeVar("Section", bound="DataclassInstance")


@dataclass(frozen=True)
class Build:
    """`image:` (a disk image) or `medium:` (an install ISO), built on the host from packages."""

    builder: str  # the script, run as root; it finds the rest in its environment (images/builder.py)
    packages: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)  # what the builder copies: with it, they key the result
    host_tools: List[str] = field(default_factory=list)  # host tools it needs beyond builder.BUILD_TOOLS


@dataclass(frozen=True)
class Iso:
    """`iso:`, an installer downloaded from the guest's mirrors and verified."""

    path: str  # on a mirror; {release} is filled in
    checksums: str  # the checksum file beside it on the mirror
    release: str = ""  # vmlab.yaml may set it (profiles: {NAME: {release: ...}})
    mirrors: List[str] = field(default_factory=list)  # vmlab.yaml's, if it names any, come first
    size: str = ""  # as the mirrors list it, said before a first download


@dataclass(frozen=True)
class Install:
    """`install:`, the serial-console recipe that installs the guest from its installer."""

    recipe: str = ""  # vmlab.yaml may name another of the folder's recipes
    takes: str = ""  # how long, with its source: said before a first start makes the image


@dataclass(frozen=True)
class Provision:
    """`provision:`: what runs over SSH, as root, with the config's packages as its arguments."""

    script: Optional[str] = None


@dataclass(frozen=True)
class Boot:
    """`boot:`: the kernel vmlab boots itself (beside disk.qcow2); empty: the disk's own boot loader."""

    kernel: Optional[str] = None
    initrd: Optional[str] = None
    cmdline: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    dir: Path
    description: str
    os: str
    ssh_user: str = "root"
    image: Optional[Build] = None
    medium: Optional[Build] = None
    iso: Optional[Iso] = None
    install: Optional[Install] = None
    provision: Provision = Provision()
    boot: Boot = Boot()
    after_restore: str = ""  # shell run after a restore; see profile.yaml
    agent: str = ""  # "qemu-ga": the guest runs QEMU's guest agent, and after_restore goes through it
    privileged: str = "sudo -n"  # prefix that runs a command as root for a non-root ssh_user (sudo -n, doas -n)

    @property
    def file(self) -> Path:
        return self.dir / "profile.yaml"

    def section(self, name: str) -> Build:
        """A build section (`image` or `medium`) of profile.yaml."""
        found = {"image": self.image, "medium": self.medium}[name]
        if found is None:
            raise ConfigError(f"{self.file}: guest profile {self.name!r} has no {name!r} section")
        return found

    def build_files(self, section: str) -> List[Path]:
        """The builder and every file it copies (paths relative to this folder): they key the result."""
        spec = self.section(section)
        return [(self.dir / n).resolve() for n in [spec.builder, *spec.files]]


AGENTS = ("", "qemu-ga")  # `agent:` values: none, or QEMU's guest agent on its usual virtio port
SECTIONS: Dict[str, type] = {"image": Build, "medium": Build, "iso": Iso, "install": Install,
                             "provision": Provision, "boot": Boot}


def load(name: str, guest_dirs: Sequence[Path] = ()) -> Profile:
    """The profile `name`: from the project's own guest folders if one has it, else vmlab's."""
    path = next((Path(d) / name / "profile.yaml" for d in guest_dirs if (Path(d) / name / "profile.yaml").is_file()),
                GUESTS_DIR / name / "profile.yaml")
    if not path.is_file():
        raise ConfigError(f"no guest profile {name!r} (no {path}); known: {', '.join(known_profiles(guest_dirs))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a guest profile is a mapping (description, os, ...)")
    sections: Dict[str, Any] = {key: _read(kind, data[key], key, path) for key, kind in SECTIONS.items()
                                if data.get(key) is not None}
    top = {key: value for key, value in data.items() if key not in SECTIONS}
    profile = _read(Profile, top, "", path, name=name, dir=path.parent, **sections)
    if profile.agent not in AGENTS:
        raise ConfigError(f"{path}: agent: {profile.agent!r} is not one vmlab talks to; known: "
                          f"{', '.join(a for a in AGENTS if a)} (or leave it out)")
    return profile


def _read(kind: Type[Section], value: Any, at: str, path: Path, **given: Any) -> Section:
    """A section (or the profile, `at` ''), each key checked against the field it fills."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {at}: a mapping of {', '.join(f.name for f in dataclasses.fields(kind))}"
                          f", not {value!r}")
    names = [f.name for f in dataclasses.fields(kind) if f.name not in given]
    for key in value:
        if key not in names:
            raise ConfigError(f"{path}: {_key(at, key)}: unknown key; known: {', '.join(names)}")
    types = get_type_hints(kind)
    found = dict(given)
    for f in dataclasses.fields(kind):
        if f.name in given:
            continue
        if f.name in value:
            found[f.name] = _value(types[f.name], value[f.name], _key(at, f.name), path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: {_key(at, f.name)}: missing")
    return kind(**found)


def _key(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


def _value(kind: Any, value: Any, key: str, path: Path) -> Any:
    if kind in (str, Optional[str]):
        if isinstance(value, str) or (value is None and kind is not str):
            return value
        raise ConfigError(f"{path}: {key}: {value!r} is not a string (put it in quotes)")
    if kind == List[str]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{path}: {key}: a list of strings, not {value!r}")
    raise TypeError(f"no reader for {kind}")  # a field of a type this module does not read yet
