"""The Debian test guest's base image: built offline with debootstrap, cached by its inputs.

The inputs are the mirror, the suite, the package list and the bytes of the
builder and guest files; change any of them and the next start builds a new
image, otherwise the cached one is used as-is (it is never written to: each VM
runs on its own overlay).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Dict

from vmlab import apt, host
from vmlab.cache import ArtefactCache, key_of
from vmlab.errors import ImageBuildError
from vmlab.guests import Profile

log = logging.getLogger(__name__)

KIND = "debian-image"
BUILD_TOOLS = ("debootstrap", "mkfs.ext4", "qemu-img")


def image_inputs(profile: Profile, options: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that decides the image's content, apart from the files' bytes."""
    mirror, suite = options.get("mirror"), options.get("suite")
    if not (mirror and suite):
        host_mirror, host_suite = apt.host_debian_mirror()
        mirror, suite = mirror or host_mirror, suite or host_suite
    return {"profile": profile.name, "mirror": mirror, "suite": suite,
            "packages": sorted(profile.image["packages"]), "format": 1}


def image_key(profile: Profile, options: Dict[str, Any]) -> str:
    return key_of(image_inputs(profile, options), profile.image_files)


def ensure_image(cache: ArtefactCache, profile: Profile, options: Dict[str, Any]) -> Path:
    """The folder holding disk.qcow2, vmlinuz and initrd.img, built first if not cached."""
    inputs = image_inputs(profile, options)
    key = key_of(inputs, profile.image_files)
    if cache.has(KIND, key):
        return cache.path(KIND, key)
    host.require(BUILD_TOOLS, "building the Debian test guest")
    host.require_root("building the Debian test guest")
    return cache.get_or_build(KIND, key, inputs, lambda out: _build(cache, profile, inputs, key, out),
                              f"the Debian image {key}")


def _build(cache: ArtefactCache, profile: Profile, inputs: Dict[str, Any], key: str, out: Path) -> None:
    log_path = cache.root / "logs" / f"{KIND}-{key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the Debian test guest (%s from %s); log: %s", inputs["suite"], inputs["mirror"], log_path)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache.root))
    env = dict(os.environ, MIRROR=inputs["mirror"], SUITE=inputs["suite"], PACKAGES=",".join(inputs["packages"]),
               OUT=str(out), WORK=str(work), HERE=str(profile.dir), DEB_CACHE=str(cache.root / "debs"),
               PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin", LC_ALL="C")
    tail: deque = deque(maxlen=25)
    try:
        with open(log_path, "w") as logfile:
            proc = subprocess.Popen(["sh", str(profile.dir / profile.image["builder"])], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                logfile.write(line)
                tail.append(line.rstrip())
                if line.startswith("vmlab-step:"):
                    log.info("  %s", line.split(":", 1)[1].strip())
            rc = proc.wait()
        if rc != 0:
            raise ImageBuildError(f"building the Debian test guest failed (exit {rc}); log: {log_path}\n"
                                  + "\n".join(tail))
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _unmount_below(folder: Path) -> None:
    """debootstrap mounts /proc and /sys in its target; an interrupted run must not leave them."""
    prefix = str(folder.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
