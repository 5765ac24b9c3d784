"""What was verified: `<cache>/isos/pins.json` records the sha256 of every file vmlab verified.

Trust on first use (DragonFly publishes only MD5): a later file with another sha256 is an
error, never a silent re-download. A pin also records the file's size, mtime and inode,
so a verified file is hashed again only when those change.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from vmlab import locks, records
from vmlab.errors import ChecksumMismatch, ConfigError
from vmlab.images.cache import file_stamp, sha256_file

log = logging.getLogger("vmlab.images.fetch")

PINS = "pins.json"
ALGOS = {"md5": 32, "sha256": 64}


def cached_sha256(isos: Path, out_name: str, want: Optional[Tuple[str, str]]) -> Optional[str]:
    """The sha256 of the cached file if it is there, checked against its pin; a changed file is
    an error, not a miss.

    It is hashed again only if its size, mtime or inode differ from when it was verified."""
    final = isos / out_name
    if not final.is_file():
        return None
    entry = load(isos).get(out_name)
    if entry is None:
        log.warning("%s has no pinned checksum in %s (not fetched by vmlab?): not trusting it", final, isos / PINS)
        return None
    stamp = file_stamp(final)
    actual = entry.get("sha256") if entry.get("stamp") == stamp else sha256_file(final)
    if actual != entry.get("sha256"):
        raise ChecksumMismatch(f"the cached {final} has changed since it was verified: its sha256 is {actual}, "
                               f"pinned {entry.get('sha256')} ({entry.get('fetched_at')}, from "
                               f"{entry.get('source')}). Not using it; delete it to download it again.")
    if want is not None:
        algo, hexd = want
        known = {entry.get(algo), (entry.get("published") or {}).get(algo)}
        if hexd not in known:
            raise ChecksumMismatch(f"the cached {final} was verified as sha256 {actual} (from "
                                   f"{entry.get('source')}), but the configured pin is {algo}:{hexd}. If the pin "
                                   f"is right, delete {final} to download it again.")
    if entry.get("stamp") != stamp:
        record(isos, out_name, dict(entry, stamp=stamp))  # verified again: hashed once more, not every time
    return actual


def record(isos: Path, out_name: str, entry: Dict[str, Any]) -> None:
    with locks.held(isos / "pins.lock", "the checksum pins"):
        pins = load(isos)
        old = pins.get(out_name)
        if old is not None:
            entry["first_fetched_at"] = old.get("first_fetched_at", old.get("fetched_at"))
        pins[out_name] = entry
        records.write(isos / PINS, pins, indent=2, sort_keys=True)


def load(isos: Path) -> Dict[str, Dict[str, Any]]:
    return records.read(isos / PINS, warn=True)


def parse(pin: Optional[str]) -> Optional[Tuple[str, str]]:
    if pin is None:
        return None
    algo, _, hexd = pin.strip().partition(":")
    algo, hexd = algo.lower(), hexd.lower()
    if algo not in ALGOS or len(hexd) != ALGOS[algo] or not re.fullmatch(r"[0-9a-f]+", hexd):
        raise ConfigError(f"checksum pin {pin!r}: expected md5:<32 hex digits> or sha256:<64 hex digits>")
    return algo, hexd
