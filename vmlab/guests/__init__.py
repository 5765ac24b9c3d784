"""Guest profiles: one folder per guest OS under vmlab/guests/, described by its profile.yaml.

A profile is data (how the guest boots, what its image is built from, who logs
in) beside the scripts it names, so adding a guest OS is adding a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from vmlab.config import GUESTS_DIR, known_profiles
from vmlab.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    dir: Path
    description: str
    os: str
    ssh_user: str
    image: Dict[str, Any]
    boot: Dict[str, Any]
    iso: Dict[str, Any]  # release, path, checksums, mirrors: for guests installed from an ISO
    after_restore: str  # shell run after a restore; see profile.yaml
    privileged: str  # prefix that runs a command as root for a non-root ssh_user (sudo -n, doas -n)

    @property
    def image_files(self) -> List[Path]:
        """Every file in the folder that goes into the image: they key its cache entry."""
        names = [self.image["builder"], *self.image.get("guest_files", [])]
        return [self.dir / n for n in names]

    @property
    def kernel_boot(self) -> bool:
        return "kernel" in self.boot


def load(name: str) -> Profile:
    path = GUESTS_DIR / name / "profile.yaml"
    if not path.is_file():
        raise ConfigError(f"no guest profile {name!r} (no {path}); known: {', '.join(known_profiles())}")
    data: Optional[Dict[str, Any]] = yaml.safe_load(path.read_text())
    try:
        return Profile(name=name, dir=path.parent, description=data["description"], os=data["os"],
                       ssh_user=data.get("ssh_user", "root"), image=data.get("image", {}),
                       boot=data.get("boot", {}), iso=data.get("iso", {}), after_restore=data.get("after_restore", ""),
                       privileged=data.get("privileged", "sudo -n"))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: missing or malformed key {e}") from None
