"""Golden images: a provisioned guest frozen as a read-only base plus a "clean" snapshot.

A golden image is a folder in the cache, `golden/<key>/`, whose key hashes
everything that made it (the image it came from, the provisioning, the machine
shape the snapshot needs, vmlab's version), so CI can cache it by key:

    base.qcow2       the provisioned disk, flattened; mode 0444, never written again
    clean.qcow2      a small overlay on base.qcow2 holding the snapshot "clean"; never written again
    vmlinuz, initrd.img   for guests booted by their kernel
    keys/            the SSH keys the guest trusts (a VM made from it logs in with these)
    manifest.json    the key, its inputs, the machine shape, and the sha256 of every file

A VM made from it gets a copy of clean.qcow2 (its writes land there, never in
base.qcow2) and starts by restoring "clean": a restore, not a boot.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from vmlab import __version__, host
from vmlab.cache import MANIFEST, ArtefactCache, key_of, sha256_file
from vmlab.errors import ConfigError, DownloadError, ImageBuildError
from vmlab.keys import LabKeys, private_file

log = logging.getLogger(__name__)

KIND = "golden"
FROZEN = ("base.qcow2", "clean.qcow2")
SNAPSHOT = "clean"
VERIFIED = "verified.json"  # this machine's record of what verify() checked: never exported
# The files an export carries and an import accepts: top-level names and keys/NAME, nothing else.
MEMBER = re.compile(r"(keys/)?[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Golden:
    dir: Path

    @property
    def manifest(self) -> Dict[str, Any]:
        return json.loads((self.dir / MANIFEST).read_text())

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def keys(self) -> LabKeys:
        return LabKeys(self.dir / "keys")

    def verify(self) -> None:
        """Check every frozen file against its recorded sha256 (once per change of the file)."""
        files = self.manifest["files"]
        stamp_file = self.dir / VERIFIED
        try:
            stamps = json.loads(stamp_file.read_text())
        except (OSError, ValueError):
            stamps = {}
        for name in FROZEN:
            st = (self.dir / name).stat()
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
            if stamps.get(name) == stamp:
                continue
            actual = sha256_file(self.dir / name)
            if actual != files[name]:
                raise ImageBuildError(f"golden image {self.dir / name} was modified: sha256 {actual}, "
                                      f"recorded {files[name]}. Delete {self.dir} and make it again")
            stamps[name] = stamp
        stamp_file.write_text(json.dumps(stamps))

    def new_disk(self, path: Path) -> None:
        """A VM disk that starts as clean.qcow2 and writes only to itself."""
        self.verify()
        tmp = path.with_suffix(".partial")
        shutil.copyfile(self.dir / "clean.qcow2", tmp)
        os.chmod(tmp, 0o644)
        # clean.qcow2 names its base relatively; the copy must name it absolutely (-u: header only)
        subprocess.run([host.which("qemu-img") or "qemu-img", "rebase", "-u", "-F", "qcow2", "-b",
                        str(self.dir / "base.qcow2"), str(tmp)], check=True, capture_output=True)
        os.replace(tmp, path)


def golden_key(inputs: Dict[str, Any]) -> str:
    return key_of(dict(inputs, vmlab=__version__, format=1))


def find(cache: ArtefactCache, key: str) -> Optional[Golden]:
    return Golden(cache.path(KIND, key)) if cache.has(KIND, key) else None


def make(cache: ArtefactCache, key: str, inputs: Dict[str, Any], disk: Path, kernel_files: Dict[str, Path],
         keys: LabKeys, snapshot_taker: Callable[[Path], None]) -> Golden:
    """Freeze the stopped VM disk `disk` as golden image `key`.

    `snapshot_taker(clean_qcow2)` boots a guest on the new clean.qcow2 and saves
    the snapshot "clean" in it (the lab does that: it knows how to run a VM).
    """

    def build(out: Path) -> Dict[str, Any]:
        log.info("golden image %s: flattening %s into base.qcow2", key, disk)
        subprocess.run([host.which("qemu-img") or "qemu-img", "convert", "-O", "qcow2", str(disk),
                        str(out / "base.qcow2")], check=True, capture_output=True)
        subprocess.run([host.which("qemu-img") or "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", "base.qcow2", "clean.qcow2"], cwd=out, check=True, capture_output=True)
        for name, src in kernel_files.items():
            shutil.copyfile(src, out / name)
        shutil.copytree(keys.dir, out / "keys", ignore=shutil.ignore_patterns(".lock"))
        snapshot_taker(out / "clean.qcow2")
        for name in FROZEN:
            os.chmod(out / name, 0o444)
        return {"files": {name: sha256_file(out / name) for name in FROZEN}, "vmlab": __version__}

    return Golden(cache.get_or_build(KIND, key, inputs, build, f"golden image {key}"))


def export(golden: Golden, output: Path) -> Path:
    """One file (tar) with everything in the golden folder, the manifest first, recording the
    sha256 of every file. It holds the lab's private keys: mode 0600 from its first byte, and
    never left half-written (see keys.private_file)."""
    if output.is_dir() or not output.parent.is_dir():
        raise ConfigError(f"cannot write the export to {output}: " + (
            "it is a folder; name a file in it" if output.is_dir() else
            f"there is no folder {output.parent}; create it or name another output file"))
    golden.verify()
    manifest = golden.manifest
    names = [p.relative_to(golden.dir).as_posix() for p in sorted(golden.dir.rglob("*"))
             if p.is_file() and not p.is_symlink()]
    names = [n for n in names if MEMBER.fullmatch(n) and n not in (MANIFEST, VERIFIED)]
    manifest["files"] = {n: manifest["files"][n] if n in FROZEN else sha256_file(golden.dir / n) for n in names}
    data = json.dumps(manifest, indent=2).encode() + b"\n"
    info = tarfile.TarInfo(MANIFEST)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    with private_file(output) as f, tarfile.open(fileobj=f, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
        for name in names:
            tar.add(golden.dir / name, arcname=name)
    return output


def import_(cache: ArtefactCache, archive: Path) -> Golden:
    """Unpack an exported golden image into the cache, verifying every file against its manifest."""
    try:
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile(MANIFEST))  # type: ignore[arg-type]
    except (OSError, tarfile.TarError, KeyError, ValueError) as e:
        raise DownloadError(f"{archive} is not a vmlab golden image export: {e}") from None
    key = manifest["key"]
    if golden_key(manifest["inputs"]) != key and manifest.get("vmlab") == __version__:
        raise DownloadError(f"{archive}: its key {key} does not match its recorded inputs")
    existing = find(cache, key)
    if existing:
        log.info("golden image %s is already in the cache", key)
        return existing

    def build(out: Path) -> Dict[str, Any]:
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
        for name, expected in manifest["files"].items():
            actual = sha256_file(out / name)
            if actual != expected:
                raise DownloadError(f"{archive}: {name} has sha256 {actual}, its manifest says {expected}; "
                                    "the export is damaged, nothing was imported")
        for name in FROZEN:
            os.chmod(out / name, 0o444)
        return {"files": manifest["files"], "vmlab": manifest.get("vmlab"), "imported_from": str(archive)}

    return Golden(cache.get_or_build(KIND, key, manifest["inputs"], build, f"golden image {key}"))
