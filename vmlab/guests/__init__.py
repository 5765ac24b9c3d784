"""Guest profiles: one folder per guest OS under vmlab/guests/, described by its profile.yaml.

A profile is data (how the guest boots, what its image is built from, who logs
in) beside the scripts it names, so adding a guest OS is adding a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from vmlab.errors import ConfigError
from vmlab.schema import GUESTS_DIR, known_profiles


@dataclass(frozen=True)
class Profile:
    name: str
    dir: Path
    description: str
    os: str
    ssh_user: str
    image: Dict[str, Any]  # a disk image built from packages: builder, packages, files
    medium: Dict[str, Any]  # an install ISO built from packages: builder, packages, files
    iso: Dict[str, Any]  # an install ISO downloaded: release, path, checksums, mirrors
    install: Dict[str, Any]  # recipe: the serial-console recipe that installs from the ISO
    provision: Dict[str, Any]  # script, run over SSH as root with the config's packages
    boot: Dict[str, Any]  # kernel, initrd, cmdline when vmlab boots the kernel itself
    after_restore: str  # shell run after a restore; see profile.yaml
    privileged: str  # prefix that runs a command as root for a non-root ssh_user (sudo -n, doas -n)

    def section(self, name: str) -> Dict[str, Any]:
        """A build section (`image` or `medium`) of profile.yaml."""
        found = {"image": self.image, "medium": self.medium}[name]
        if not found:
            raise ConfigError(f"{self.dir / 'profile.yaml'}: guest profile {self.name!r} has no {name!r} section")
        return found

    def build_files(self, section: str) -> List[Path]:
        """The builder and every file it copies (paths relative to this folder): they key the result."""
        spec = self.section(section)
        return [(self.dir / n).resolve() for n in [spec["builder"], *spec.get("files", [])]]


def load(name: str, guest_dirs: Sequence[Path] = ()) -> Profile:
    """The profile `name`: from the project's own guest folders if one has it, else vmlab's."""
    path = next((Path(d) / name / "profile.yaml" for d in guest_dirs if (Path(d) / name / "profile.yaml").is_file()),
                GUESTS_DIR / name / "profile.yaml")
    if not path.is_file():
        raise ConfigError(f"no guest profile {name!r} (no {path}); known: {', '.join(known_profiles(guest_dirs))}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a guest profile is a mapping (description, os, ...)")
    try:
        return Profile(name=name, dir=path.parent, description=data["description"], os=data["os"],
                       ssh_user=data.get("ssh_user", "root"), image=data.get("image", {}),
                       medium=data.get("medium", {}), iso=data.get("iso", {}), install=data.get("install", {}),
                       provision=data.get("provision", {}), boot=data.get("boot", {}),
                       after_restore=data.get("after_restore", ""),
                       privileged=data.get("privileged", "sudo -n"))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: missing or malformed key {e}") from None
