"""Content-addressed artefacts outside the checkout: built once, published whole.

An artefact lives in `<cache>/<kind>/<key>/`, where the key is a hash of every
input that made it. It is built in a temporary folder under a lock (two
commands at once build it once) and renamed into place only when complete, so a
failed or interrupted build never leaves something a later step would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from vmlab import locks
from vmlab.errors import VmlabError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_stamp(path: Path) -> List[int]:
    """Size, modification time and inode of a file: while they hold, its bytes are taken as the
    ones verified, so a big verified file is hashed once, not on every use."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def key_of(inputs: Dict[str, Any], files: Iterable[Path] = ()) -> str:
    """A short hash of the inputs and the bytes of the given files (by name)."""
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    for f in sorted(files, key=lambda p: p.name):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class ArtefactCache:
    """One cache root (by default ~/.cache/vmlab) holding artefacts by kind and key."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, kind: str, key: str) -> Path:
        """Where an artefact lives; a kind or key that could name another place is refused."""
        if not re.fullmatch(r"[a-z][a-z0-9-]*", kind) or not re.fullmatch(r"[0-9a-f]{1,64}", key):
            raise VmlabError(f"refusing cache entry {kind!r}/{key!r}: a kind is a lowercase name and a key "
                             "is hexadecimal; nothing in the cache was touched")
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / MANIFEST).is_file()

    def get_or_build(
        self, kind: str, key: str, inputs: Dict[str, Any], build: Callable[[Path], Optional[Dict[str, Any]]],
        what: str,
    ) -> Path:
        """The artefact's folder, building it with `build(tmpdir)` first if it is not cached.

        `build` may return more facts for the manifest (checksums, say).
        """
        final = self.path(kind, key)
        if self.has(kind, key):
            return final
        with locks.held(self.root / kind / f"{key}.lock", what):
            if self.has(kind, key):  # built by whoever held the lock before us
                return final
            tmp = self.root / kind / f".{key}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            started = time.monotonic()
            try:
                facts = build(tmp) or {}
                manifest = {"kind": kind, "key": key, "inputs": inputs,
                            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "build_seconds": round(time.monotonic() - started, 1), **facts}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    def entries(self, kind: str) -> List[Dict[str, Any]]:
        """Manifests of the complete artefacts of one kind, newest first."""
        found = []
        for manifest in (self.root / kind).glob(f"*/{MANIFEST}"):
            data = json.loads(manifest.read_text())
            data["path"] = str(manifest.parent)
            found.append(data)
        return sorted(found, key=lambda d: d.get("built_at", ""), reverse=True)
