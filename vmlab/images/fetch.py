"""Verified, resumable, cached downloads of installer images (ISOs), from a list of mirrors.

The first thing a user runs downloads ~260 MB over whatever network they have, so a
download must survive a cut connection, a dead mirror and a bad file, and must never
leave a file a later step would trust unless it was verified:

- Mirrors are tried in order; each one's failure is named if all fail.
- The transfer itself (transfer.py) resumes a cut or Ctrl-C with an HTTP Range request
  and decompresses and hashes while the download goes on.
- The result is written under a temporary name and renamed into the cache only once the
  mirror's checksum file (BSD `md5.txt`) or a configured pin agrees. Its sha256 is then
  pinned (pins.py; trust on first use, since MD5 is weak): a later mismatch is an error,
  never a silent re-download.
- A lock per file: two commands at once download it once.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Set, Tuple

from vmlab import locks, records
from vmlab.errors import Busy, ChecksumMismatch, ConfigError, DownloadError, NotCached, PrerequisiteMissing
from vmlab.images import pins, transfer
from vmlab.images.cache import file_stamp
from vmlab.progress import mb
from vmlab.progress import mode as progress_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the decompressed, verified file in the cache
    sha256: str  # sha256 of that file (pinned after its first verification)
    source: str  # the URL (or path) it came from, or "cache"
    downloaded_bytes: int  # bytes read from a mirror by this call (0 when served from cache)


def fetch(*, mirrors: List[str], path: str, cache_dir: Path, checksums: Optional[str] = "iso-images/md5.txt",
          pin: Optional[str] = None, offline: bool = False, progress: Optional[bool] = None) -> FetchResult:
    """The verified file `<mirror>/<path>` (decompressed if it ends in .bz2), from the cache if it is there.

    Mirrors are tried in order; each is an http(s):// URL, a file:// URL or a folder. The
    checksum file `<mirror>/<checksums>` is read from the same mirror unless `pin`
    ("md5:<hex>" or "sha256:<hex>", of the published or the decompressed file) is given.
    `progress=None` shows a bar on a terminal (not under CI), log lines otherwise.
    """
    name = PurePosixPath(path).name
    if not name:
        raise ConfigError(f"ISO path {path!r} does not name a file")
    compressed = name.endswith(".bz2")
    out_name = name[: -len(".bz2")] if compressed else name
    want = pins.parse(pin)
    isos = Path(cache_dir) / "isos"
    isos.mkdir(parents=True, exist_ok=True)

    sha256 = pins.cached_sha256(isos, out_name, want)  # the common case needs no lock
    if sha256 is not None:
        return FetchResult(isos / out_name, sha256, "cache", 0)
    with locks.held(isos / f"{out_name}.lock", f"the download of {name}"):
        sha256 = pins.cached_sha256(isos, out_name, want)  # fetched by whoever held the lock before us
        if sha256 is not None:
            return FetchResult(isos / out_name, sha256, "cache", 0)
        if offline:  # the caller, who knows why it may not download, says what to do (NotCached)
            raise NotCached(f"{out_name} is not in the cache ({isos})", hint="nothing was downloaded (offline)")
        if not mirrors:
            raise PrerequisiteMissing(f"{out_name} is not in the cache ({isos}) and no mirror is configured")
        mode = progress_mode(progress)
        failures = []
        for i, mirror in enumerate(mirrors):
            src = _Source.of(str(mirror), path, checksums)
            try:
                return _fetch_from(src, isos, name, out_name, want, mode)
            except transfer.Unavailable as e:
                failures.append(f"{src.url}: {e}")
                more = "; trying the next mirror" if i + 1 < len(mirrors) else ""
                log.warning("%s: %s%s", src.url, e, more)
        partial = isos / f"{name}.partial"
        kept = (f"\nThe {mb(partial.stat().st_size)} already downloaded are kept in {partial}; "
                f"a later run resumes from there." if partial.is_file() and partial.stat().st_size else "")
        raise PrerequisiteMissing(f"no mirror could provide {name}:", detail="  " + "\n  ".join(failures) + kept)


def unreachable(mirrors: List[str], path: str, checksums: Optional[str] = "iso-images/md5.txt") -> List[str]:
    """Why no mirror can serve `path` now, one line per mirror; [] as soon as one answers.

    A mirror answers when its checksum file lists the file (or, without a checksum file,
    when it is a folder holding it); a quick question asked before a long download is
    promised, so that offline the user hears one thing: what is missing."""
    name = PurePosixPath(path).name
    why = []
    for mirror in mirrors:
        src = _Source.of(str(mirror), path, checksums)
        try:
            if src.checksums:
                _checksum_lines(src, name, name[: -len(".bz2")] if name.endswith(".bz2") else name)
            elif src.local is not None and not src.local.is_file():
                raise transfer.Unavailable(f"{src.local} is not there")
            return []
        except transfer.Unavailable as e:
            why.append(f"{src.url}: {e}")
    return why


def cached(cache_dir: Path) -> List[Dict[str, Any]]:
    """What the ISO cache holds: verified files, then partial downloads (sha256 None), by name."""
    isos = Path(cache_dir) / "isos"
    found: List[Dict[str, Any]] = []
    for out_name, entry in sorted(pins.load(isos).items()):
        f = isos / out_name
        if f.is_file():
            found.append({"name": out_name, "size": f.stat().st_size, "sha256": entry.get("sha256"),
                          "source": entry.get("source"), "fetched_at": entry.get("fetched_at"),
                          "partial": False})
    for f in sorted(isos.glob("*.partial")):
        meta = records.read(isos / f"{f.name}.json", warn=True)
        found.append({"name": f.name, "size": f.stat().st_size, "sha256": None,
                      "source": meta.get("url"), "fetched_at": None, "partial": True})
    return found


def prune(cache_dir: Path, keep: Set[str]) -> List[Path]:
    """Delete cached files and partial downloads whose name is not in `keep`; return what went.

    A name in `keep` may be the cached file's or the published one's (`x.iso` or
    `x.iso.bz2`). Files being downloaded right now are skipped. Pins stay: a file
    downloaded again must still be the one first verified.
    """
    isos = Path(cache_dir) / "isos"
    if not isos.is_dir():
        return []
    groups: Dict[str, List[Path]] = {}
    for f in isos.iterdir():
        n = f.name
        if n.endswith(".lock") or n.lstrip(".").startswith(pins.PINS) or not f.is_file():
            continue
        out_name = re.sub(r"^\.(.*)\.tmp$", r"\1", n)  # a temporary file belongs to its file
        out_name = re.sub(r"(\.bz2)?(\.partial|\.partial\.json)?$", "", out_name)
        groups.setdefault(out_name, []).append(f)
    deleted: List[Path] = []
    for out_name, files in sorted(groups.items()):
        if out_name in keep or f"{out_name}.bz2" in keep:
            continue
        try:
            with locks.held(isos / f"{out_name}.lock", f"the download of {out_name}", wait=False):
                for f in sorted(files):
                    f.unlink(missing_ok=True)
                    deleted.append(f)
        except Busy as e:  # being downloaded right now
            log.info("not pruning %s: %s", out_name, e)
    return deleted


# --- one mirror ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    url: str  # what messages name and the sidecar records
    local: Optional[Path]  # set for a folder or file:// mirror
    checksums: Optional[str]  # URL or path of the checksum file, None for none

    @staticmethod
    def of(mirror: str, path: str, checksums: Optional[str]) -> "_Source":
        parts = urllib.parse.urlsplit(mirror)
        if parts.scheme in ("http", "https"):
            base = mirror.rstrip("/")
            return _Source(f"{base}/{path.lstrip('/')}", None,
                           f"{base}/{checksums.lstrip('/')}" if checksums else None)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"mirror {mirror}: a file:// URL must name a local path (file:///...)")
            folder = Path(urllib.request.url2pathname(parts.path))
        elif parts.scheme and len(parts.scheme) > 1:
            raise ConfigError(f"mirror {mirror}: only http://, https://, file:// and local folders are supported")
        else:
            folder = Path(mirror).expanduser()
        file = folder / path.lstrip("/")
        return _Source(str(file), file, str(folder / checksums.lstrip("/")) if checksums else None)


def _fetch_from(src: _Source, isos: Path, name: str, out_name: str,
                want: Optional[Tuple[str, str]], mode: str) -> FetchResult:
    """Download, check and cache the file from one mirror; transfer.Unavailable if this mirror cannot."""
    expected = _checksum_lines(src, name, out_name) if want is None and src.checksums else {}
    compressed = name != out_name
    partial = isos / f"{name}.partial"
    sidecar = isos / f"{name}.partial.json"
    tmp = isos / f".{out_name}.tmp"
    tmp.unlink(missing_ok=True)  # left by a process killed with -9: never trusted
    log.info("fetching %s from %s", name, src.url)
    # only the sums something will check: each costs CPU the decompressor could use
    pub_algos = {"md5"} | set(expected.get(name, {})) | ({want[0]} if want else set())
    out_algos = {"sha256"} | set(expected.get(out_name, {})) | ({want[0]} if want else set())
    if not compressed:
        pub_algos = out_algos = pub_algos | out_algos
    try:
        if src.local is not None:
            got = transfer.copy_local(src.local, tmp, compressed, name, mode, pub_algos, out_algos)
        else:
            got = transfer.download(src.url, partial, sidecar, tmp if compressed else None, name, mode, pub_algos,
                                    out_algos)
    except DownloadError:  # a damaged stream: no part of it is worth keeping
        for f in (tmp, partial, sidecar):
            f.unlink(missing_ok=True)
        raise
    except BaseException:  # cut, dead mirror, Ctrl-C: keep the resumable partial only
        tmp.unlink(missing_ok=True)
        raise
    pins_file = isos / pins.PINS
    pinned = pins.load(isos).get(out_name)
    try:
        _verify(src, name, out_name, got, expected, want, pinned, pins_file)
    except DownloadError:
        for f in (tmp, partial, sidecar):
            f.unlink(missing_ok=True)
        raise
    entry = {"sha256": got.out["sha256"], "md5": got.out.get("md5"), "size": got.size, "source": src.url,
             "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "published": {"name": name, **got.published}, "stamp": file_stamp(got.file)}
    pins.record(isos, out_name, entry)  # before the rename: a file in the cache always has its pin
    final = isos / out_name
    os.replace(got.file, final)
    for f in (partial, sidecar):
        f.unlink(missing_ok=True)
    log.info("%s verified (sha256 %s) and cached as %s", name, got.out["sha256"], final)
    return FetchResult(final, got.out["sha256"], src.url, got.fetched)


def _verify(src: _Source, name: str, out_name: str, got: transfer.Got, expected: Dict[str, Dict[str, str]],
            want: Optional[Tuple[str, str]], pinned: Optional[Dict[str, Any]], pins_file: Path) -> None:
    """Raise ChecksumMismatch / DownloadError unless every known checksum agrees."""
    gone = "The download was deleted; nothing was cached."
    for algo, hexd in expected.get(name, {}).items():
        if got.published.get(algo) != hexd:
            raise ChecksumMismatch(f"{src.url} is not the published file: its {algo} is {got.published.get(algo)}, "
                                   f"but {src.checksums} says {hexd}. {gone} The mirror may be damaged or "
                                   f"tampered with: retry later or use another mirror.")
    if not got.complete:
        raise DownloadError(f"{src.url} is truncated: its bz2 stream stops before its end. {gone}")
    for algo, hexd in expected.get(out_name, {}).items() if out_name != name else ():
        if got.out.get(algo) != hexd:
            raise ChecksumMismatch(f"{out_name} decompressed from {src.url} has {algo} {got.out.get(algo)}, but "
                                   f"{src.checksums} says {hexd}. {gone}")
    if want is not None:
        algo, hexd = want
        if hexd not in (got.published[algo], got.out[algo]):
            shown = got.published[algo] if out_name == name else \
                f"{got.published[algo]} ({name}) / {got.out[algo]} ({out_name})"
            raise ChecksumMismatch(f"{src.url} does not match the configured pin: expected {algo} {hexd}, "
                                   f"got {shown}. {gone}")
    if pinned is not None and pinned.get("sha256") != got.out["sha256"]:
        raise ChecksumMismatch(f"{out_name} from {src.url} has sha256 {got.out['sha256']}, but {pins_file} pins "
                               f"{pinned.get('sha256')} (verified {pinned.get('fetched_at')} from "
                               f"{pinned.get('source')}). {gone} If the release was re-published and the new "
                               f"file is right, remove its entry from {pins_file}.")
    if not expected and want is None and pinned is None:
        log.warning("%s: no checksum file and no pin: trusting this first download and pinning sha256 %s",
                    src.url, got.out["sha256"])


def _checksum_lines(src: _Source, name: str, out_name: str) -> Dict[str, Dict[str, str]]:
    """The mirror's checksums for our two names, from BSD lines `MD5 (name) = hex`."""
    assert src.checksums is not None
    try:
        if src.local is not None:
            text = Path(src.checksums).read_text(errors="replace")
        else:
            with urllib.request.urlopen(transfer.request(src.checksums), timeout=transfer.TIMEOUT) as resp:
                text = resp.read(16 << 20).decode(errors="replace")
    except urllib.error.HTTPError as e:
        raise transfer.Unavailable(f"cannot get the checksum file {src.checksums}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise transfer.Unavailable(f"cannot get the checksum file {src.checksums}: {transfer.reason(e)}") from None
    found: Dict[str, Dict[str, str]] = {}
    for m in re.finditer(r"^\s*(MD5|SHA256)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$", text, re.M):
        algo, file, hexd = m.group(1).lower(), m.group(2), m.group(3).lower()
        if file in (name, out_name) and len(hexd) == pins.ALGOS[algo]:
            found.setdefault(file, {})[algo] = hexd
    if not found:
        raise transfer.Unavailable(f"the checksum file {src.checksums} has no line for {name}")
    return found


# --- transfers ----------------------------------------------------------------------------

# --- cache and pins -----------------------------------------------------------------------

