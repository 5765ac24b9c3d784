"""Golden images: a provisioned guest frozen as a read-only base plus a "clean" snapshot.

A golden image is a folder in the cache, `golden/<key>/`, whose key hashes
everything that made it (the image it came from, the provisioning, the machine
shape the snapshot needs, vmlab's version), so CI can cache it by key:

    base.qcow2       the provisioned disk, flattened; mode 0444, never written again
    clean.qcow2      a small overlay on base.qcow2 holding the snapshot "clean"; never written again
    vmlinuz, initrd.img   for guests booted by their kernel
    keys/            the SSH keys the guest trusts (a VM made from it logs in with these)
    manifest.json    the key, its inputs, the machine shape, and the sha256 of every file (an export's: and its size)

A VM made from it gets a copy of clean.qcow2 (its writes land there, never in
base.qcow2) and starts by restoring "clean": a restore, not a boot.

An export (one tar) may come from anywhere (CI imports a downloaded artifact, as
root): an import trusts nothing in it until checked, and writes only into
`<cache>/golden/<key>/`, published whole once every file's sha256 matched.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, NoReturn, Optional, Set

from vmlab import __version__, records
from vmlab.atomic import made_as, private_file
from vmlab.errors import ConfigError, DownloadError, ImageBuildError
from vmlab.images.cache import MANIFEST, ArtefactCache, key_of, sha256_file
from vmlab.qemu import disk
from vmlab.remote.keys import LabKeys

log = logging.getLogger(__name__)

KIND = "golden"
FROZEN = ("base.qcow2", "clean.qcow2")
SNAPSHOT = "clean"
VERIFIED = "verified.json"  # this machine's record of what verify() checked: never exported
KEY_FILES = tuple(f"keys/{name}" for name in ("id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key",
                                                "ssh_host_ed25519_key.pub", "known_hosts"))
# The files an export carries and an import accepts: top-level names and keys/NAME, nothing else.
MEMBER = re.compile(r"(keys/)?[A-Za-z0-9][A-Za-z0-9._-]*")
MANIFEST_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Golden:
    dir: Path

    @property
    def manifest(self) -> Dict[str, Any]:
        """The manifest; ImageBuildError naming it if it cannot be read or is not a JSON object
        (cut short by a full disk, say): a user gets that line, not a traceback."""
        path = self.dir / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ImageBuildError(f"golden image {self.dir}: cannot read {path} ({e}). "
                                  f"Delete {self.dir} and make it again") from None
        if not isinstance(manifest, dict):
            raise ImageBuildError(f"golden image {self.dir}: {path} is not a JSON object. "
                                  f"Delete {self.dir} and make it again")
        return manifest

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def keys(self) -> LabKeys:
        return LabKeys(self.dir / "keys")

    def verify(self) -> None:
        """Check the manifest (its key is this folder's and the hash of its inputs) and every
        frozen file against the sha256 it records; ImageBuildError naming what was changed.

        A file is hashed once per change: verified.json records, for each, its size, mtime,
        inode and ctime and the digest it matched. The ctime is there because an edit in place
        that puts the mtime back (`touch -r`, `cp -p` onto the file, `rsync --inplace -t`)
        keeps the other three, and such an edit used to pass unhashed; no user can set a
        ctime. The digest is there so that an edited manifest is checked again, not trusted
        from the record of the old one (its export would be refused as damaged elsewhere).
        """
        path = self.dir / MANIFEST
        manifest = self.manifest
        key, inputs, files = manifest.get("key"), manifest.get("inputs"), manifest.get("files")
        if key != self.dir.name or not isinstance(inputs, dict) or golden_key(inputs) != key:
            raise ImageBuildError(f"golden image {self.dir}: {path} was modified: its key {str(key)[:40]!r} is not "
                                  f"this folder's name or not the hash of its inputs. "
                                  f"Delete {self.dir} and make it again")
        if not isinstance(files, dict) or not all(isinstance(files.get(name), str) for name in FROZEN):
            raise ImageBuildError(f"golden image {self.dir}: {path} was modified: it records no sha256 for "
                                  f"{' and '.join(FROZEN)}. Delete {self.dir} and make it again")
        stamp_file = self.dir / VERIFIED
        stamps = records.read(stamp_file)
        for name in FROZEN:
            st = (self.dir / name).stat()
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, files[name]]
            if stamps.get(name) == stamp:
                continue
            actual = sha256_file(self.dir / name)
            if actual != files[name]:
                raise ImageBuildError(f"golden image {self.dir / name} was modified: its sha256 is {actual}, "
                                      f"{path} records {files[name]}. Delete {self.dir} and make it again")
            stamps[name] = stamp
        records.write(stamp_file, stamps)

    def new_disk(self, path: Path) -> None:
        """A VM disk that starts as clean.qcow2 and writes only to itself."""
        self.verify()
        with made_as(path) as tmp:
            shutil.copyfile(self.dir / "clean.qcow2", tmp)
            os.chmod(tmp, 0o644)
            disk.rebase_in_place(tmp, self.dir / "base.qcow2")  # clean.qcow2 names its base relatively; a copy can't


def golden_key(inputs: Dict[str, Any]) -> str:
    return key_of(dict(inputs, vmlab=__version__, format=1))


def find(cache: ArtefactCache, key: str) -> Optional[Golden]:
    return Golden(cache.path(KIND, key)) if cache.has(KIND, key) else None


def make(cache: ArtefactCache, key: str, inputs: Dict[str, Any], vm_disk: Path, kernel_files: Dict[str, Path],
         keys: LabKeys, snapshot_taker: Callable[[Path], None]) -> Golden:
    """Freeze the stopped VM disk `vm_disk` as golden image `key`.

    `snapshot_taker(clean_qcow2)` boots a guest on the new clean.qcow2 and saves
    the snapshot "clean" in it (the lab does that: it knows how to run a VM).
    """

    def build(out: Path) -> Dict[str, Any]:
        log.info("golden image %s: flattening %s into base.qcow2", key, vm_disk)
        disk.flatten(vm_disk, out / "base.qcow2")
        disk.create_child(out, "clean.qcow2", "base.qcow2")
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
    never left half-written (see atomic.private_file)."""
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
    manifest["sizes"] = {n: (golden.dir / n).stat().st_size for n in names}  # an import writes no byte more
    data = json.dumps(manifest, indent=2).encode() + b"\n"
    info = tarfile.TarInfo(MANIFEST)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    with private_file(output) as f, tarfile.open(fileobj=f, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
        for name in names:
            tar.add(golden.dir / name, arcname=name)
    return output


def import_(cache: ArtefactCache, archive: Path) -> Golden:
    """Unpack an exported golden image into the cache, as `<cache>/golden/<key>/` and nowhere else.

    Refused before anything is written: a manifest without a well-formed key, inputs, files
    and sizes; a key that is not the hash of its inputs under this vmlab version; a member
    that is not a plain file its manifest lists (links, devices, absolute or `..` names), or
    is sparse (a few KiB in the archive that unpack to any size: tar's own hardening refuses
    them too), or is not the size its manifest states. No member is written past that size,
    and each file's sha256 is checked as it is unpacked, before the folder is published.
    """
    def refuse(problem: str) -> NoReturn:
        raise DownloadError(f"{archive}: {problem}; nothing was imported")

    try:
        tar = tarfile.open(archive, "r:")  # vm.golden-export writes a plain tar
    except OSError as e:
        refuse(f"cannot read it: {e.strerror or e}")
    except tarfile.TarError as e:
        refuse(f"not a vmlab golden image export (a plain tar file): {e}")
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as e:
            refuse(f"not a vmlab golden image export (a plain tar file): {e}")
        manifest = _checked_manifest(tar, members, refuse)
        files: Dict[str, str] = manifest["files"]
        sizes: Dict[str, int] = manifest["sizes"]
        names: Set[str] = set()
        for m in members:
            if m.issparse():
                refuse(f"member {m.name[:200]!r} is a sparse file (vm.golden-export writes none): it would unpack "
                       f"to {m.size} bytes from a few in the archive")
            if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                refuse(f"member {m.name[:200]!r} is not a plain file (a link, folder, device or fifo)")
            if m.name != MANIFEST and m.name not in files:
                refuse(f"member {m.name[:200]!r} is not a file its manifest lists")
            if m.name in names:
                refuse(f"member {m.name!r} is in it more than once")
            if m.name != MANIFEST and m.size != sizes[m.name]:
                refuse(f"member {m.name!r} is {m.size} bytes, its manifest says {sizes[m.name]}: the export is damaged")
            names.add(m.name)
        missing = sorted(set(files) - names)
        if missing:
            refuse(f"{missing[0]} is listed in its manifest but is not in it")
        key = manifest["key"]
        existing = find(cache, key)
        if existing:
            log.info("golden image %s is already in the cache", key)
            return existing

        def build(out: Path) -> Dict[str, Any]:
            (out / "keys").mkdir(mode=0o700)
            for m in members:
                if m.name == MANIFEST:
                    continue
                dest = out / m.name
                try:
                    data = tar.extractfile(m)
                    if data is None:  # checked above: every member is a regular file
                        refuse(f"{m.name} is not a regular file")
                    with private_file(dest) if m.name.startswith("keys/") else open(dest, "xb") as f:
                        if _copy_at_most(data, f, sizes[m.name]) != sizes[m.name]:
                            refuse(f"{m.name} ends before the {sizes[m.name]} bytes its manifest states: "
                                   "the export is damaged")
                except tarfile.TarError as e:
                    refuse(f"cannot read {m.name} from it ({e}): the export is damaged")
                actual = sha256_file(dest)
                if actual != files[m.name]:
                    refuse(f"{m.name} has sha256 {actual}, its manifest says {files[m.name]}: the export is damaged")
            for name in FROZEN:
                os.chmod(out / name, 0o444)
            return {"files": files, "vmlab": __version__, "imported_from": str(archive)}

        return Golden(cache.get_or_build(KIND, key, manifest["inputs"], build, f"golden image {key}"))


def _copy_at_most(source: IO[bytes], target: IO[bytes], size: int) -> int:
    """Copy up to `size` bytes, in 1 MiB pieces; how many there were."""
    copied = 0
    while copied < size:
        chunk = source.read(min(1 << 20, size - copied))
        if not chunk:
            break
        target.write(chunk)
        copied += len(chunk)
    return copied


def _checked_manifest(tar: tarfile.TarFile, members: List[tarfile.TarInfo],
                      refuse: Callable[[str], NoReturn]) -> Dict[str, Any]:
    """The export's manifest, if it is well-formed, of this vmlab version, and its key is its inputs' hash."""
    found = [m for m in members if m.name == MANIFEST]
    if len(found) != 1 or not found[0].isreg() or found[0].size > MANIFEST_MAX_BYTES:
        refuse(f"it has no {MANIFEST} (one plain file at its top): not a vmlab golden image export")
    try:
        manifest = json.load(tar.extractfile(found[0]))  # type: ignore[arg-type]
    except (ValueError, RecursionError, tarfile.TarError) as e:
        refuse(f"its {MANIFEST} is not JSON ({e})")
    if not isinstance(manifest, dict):
        refuse(f"its {MANIFEST} is not a JSON object")
    key, inputs, files = manifest.get("key"), manifest.get("inputs"), manifest.get("files")
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{16}", key):
        refuse(f"its {MANIFEST} has no valid 'key' (16 lowercase hex digits): {str(key)[:40]!r}")
    if not isinstance(inputs, dict):
        refuse(f"its {MANIFEST} has no 'inputs' mapping")
    if not isinstance(files, dict) or not all(
            isinstance(n, str) and MEMBER.fullmatch(n) and n not in (MANIFEST, VERIFIED)
            and isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for n, h in files.items()):
        refuse(f"its {MANIFEST} has no 'files' mapping of file names (NAME or keys/NAME) to sha256 digests")
    missing = [n for n in (*FROZEN, *KEY_FILES) if n not in files]
    if missing:
        refuse(f"its {MANIFEST} records no sha256 for {missing[0]} (an export by an older vmlab? export it again)")
    sizes = manifest.get("sizes")
    if not isinstance(sizes, dict) or set(sizes) != set(files) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes.values()):
        refuse(f"its {MANIFEST} has no 'sizes' mapping of its files to their sizes in bytes (an export by an "
               "older vmlab? export it again)")
    if manifest.get("kind", KIND) != KIND:
        refuse(f"it holds a {manifest.get('kind')!r}, not a golden image")
    if manifest.get("vmlab") != __version__:
        theirs = " ".join(str(manifest.get("vmlab")).split())[:40]
        refuse(f"it was exported by vmlab {theirs}, and this is vmlab {__version__}: a golden image's key "
               f"includes vmlab's version, so it would never be used here. Import it with vmlab {theirs}, "
               "or make the golden image with this one (invoke vm.golden)")
    if golden_key(inputs) != key:
        refuse(f"its key {key} is not the hash of its recorded inputs (expected {golden_key(inputs)})")
    return manifest
