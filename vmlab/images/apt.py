"""The Debian mirror and release this host's apt is configured with.

The offline test guest is built from the same mirror the host uses, read from
apt's own configuration (both the one-line `.list` and the deb822 `.sources`
formats), so that no registry host name is ever written into a project.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from vmlab.errors import PrerequisiteMissing

APT_DIR = Path("/etc/apt")


def host_codename(os_release: Path = Path("/etc/os-release")) -> Optional[str]:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or None
    except OSError:
        pass
    return None


def _entries(apt_dir: Path) -> Iterator[Tuple[str, str, List[str]]]:
    """(uri, suite, components) for every `deb` source apt knows."""
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # drop [options], spaces and all
            if words[:1] == ["deb"]:
                words = words[1:]
                if len(words) >= 3:
                    yield words[0], words[1], words[2:]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                for uri in fields.get("uris", []):
                    for suite in fields.get("suites", []):
                        yield uri, suite, fields.get("components", [])


def host_debian_mirror(apt_dir: Path = APT_DIR, codename: Optional[str] = None) -> Tuple[str, str]:
    """(mirror URL, suite): the source that serves this host's release with `main`."""
    codename = codename or host_codename()
    for uri, suite, components in _entries(apt_dir):
        if suite == codename and "main" in components:
            return uri.rstrip("/"), suite
    raise PrerequisiteMissing(
        f"no Debian mirror for release {codename or '(unknown)'} with 'main' found in {apt_dir}; "
        "set one in vmlab.yaml: profiles: {debian: {mirror: URL, suite: NAME}}"
    )
