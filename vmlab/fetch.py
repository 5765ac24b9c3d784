"""Verified, resumable, cached downloads of installer images (ISOs).

The first thing a user runs downloads ~260 MB over whatever network they have, so a
download must survive a cut connection, a dead mirror and a bad file, and must never
leave a file a later step would trust unless it was verified:

- The compressed bytes go to `<cache>/isos/<name>.partial` (a sidecar records the URL
  and the server's validators), so a cut or Ctrl-C resumes with an HTTP Range request.
- That partial file is also the queue between the network and the CPU: a worker thread
  follows it, decompressing (bz2) while the download goes on, and another hashes and
  writes what comes out. bz2 and hashlib release the GIL, so the network, the
  decompressor and the hashers run at once and the network never waits for the CPU.
- The result is written under a temporary name and renamed into the cache only once the
  mirror's checksum file (BSD `md5.txt`) or a configured pin agrees. Its sha256 is then
  pinned in `pins.json` (trust on first use, since MD5 is weak): a later mismatch is an
  error, never a silent re-download.
- A lock per file: two commands at once download it once.
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Set, Tuple

from vmlab import __version__, locks
from vmlab.cache import file_stamp, sha256_file
from vmlab.errors import Busy, ChecksumMismatch, ConfigError, DownloadError, PrerequisiteMissing

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # large reads: per-chunk overhead is then negligible next to bz2
OUT_CHUNK = 4 << 20  # bound on what one bz2 call may produce (zero-filled ISOs compress a lot)
TIMEOUT = 30.0  # seconds a connect or a read may stall before the mirror counts as down
RESUMES = 3  # a connection cut mid-file is resumed at once this many times per mirror
RESUME_WAIT = 1.0
LOG_EVERY = 5.0  # plain progress lines: at most every LOG_EVERY seconds or every 10%
PINS = "pins.json"
ALGOS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the decompressed, verified file in the cache
    sha256: str  # sha256 of that file (pinned after its first verification)
    source: str  # the URL (or path) it came from, or "cache"
    downloaded_bytes: int  # bytes read from a mirror by this call (0 when served from cache)


class _Unavailable(Exception):
    """This mirror cannot provide the file now (down, 404, cut for good): try the next one."""


class _Cut(Exception):
    """The connection ended before the whole file came; the partial file holds what did."""


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
    want = _parse_pin(pin)
    isos = Path(cache_dir) / "isos"
    isos.mkdir(parents=True, exist_ok=True)

    hit = _from_cache(isos, out_name, want)  # the common case needs no lock
    if hit is not None:
        return hit
    with locks.held(isos / f"{out_name}.lock", f"the download of {name}"):
        hit = _from_cache(isos, out_name, want)  # fetched by whoever held the lock before us
        if hit is not None:
            return hit
        if offline:
            raise PrerequisiteMissing(f"{out_name} is not in the cache ({isos}) and offline mode forbids "
                                      f"downloading it; run once without --offline to fetch it")
        if not mirrors:
            raise PrerequisiteMissing(f"{out_name} is not in the cache ({isos}) and no mirror is configured")
        mode = _progress_mode(progress)
        failures = []
        for i, mirror in enumerate(mirrors):
            src = _Source.of(str(mirror), path, checksums)
            try:
                return _fetch_from(src, isos, name, out_name, want, mode)
            except _Unavailable as e:
                failures.append(f"{src.url}: {e}")
                more = "; trying the next mirror" if i + 1 < len(mirrors) else ""
                log.warning("%s: %s%s", src.url, e, more)
        partial = isos / f"{name}.partial"
        kept = (f"\nThe {_mb(partial.stat().st_size)} already downloaded are kept in {partial}; "
                f"a later run resumes from there." if partial.is_file() and partial.stat().st_size else "")
        raise PrerequisiteMissing(f"no mirror could provide {name}:\n  " + "\n  ".join(failures) + kept)


def cached(cache_dir: Path) -> List[Dict[str, Any]]:
    """What the ISO cache holds: verified files, then partial downloads (sha256 None), by name."""
    isos = Path(cache_dir) / "isos"
    pins = _load_pins(isos)
    found: List[Dict[str, Any]] = []
    for out_name, entry in sorted(pins.items()):
        f = isos / out_name
        if f.is_file():
            found.append({"name": out_name, "size": f.stat().st_size, "sha256": entry.get("sha256"),
                          "source": entry.get("source"), "fetched_at": entry.get("fetched_at"),
                          "partial": False})
    for f in sorted(isos.glob("*.partial")):
        meta = _load_json(isos / f"{f.name}.json")
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
        if n.endswith(".lock") or n.lstrip(".").startswith(PINS) or not f.is_file():
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
    """Download, check and cache the file from one mirror; _Unavailable if this mirror cannot."""
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
            got = _copy_local(src.local, tmp, compressed, name, mode, pub_algos, out_algos)
        else:
            got = _download(src.url, partial, sidecar, tmp if compressed else None, name, mode, pub_algos, out_algos)
    except DownloadError:  # a damaged stream: no part of it is worth keeping
        for f in (tmp, partial, sidecar):
            f.unlink(missing_ok=True)
        raise
    except BaseException:  # cut, dead mirror, Ctrl-C: keep the resumable partial only
        tmp.unlink(missing_ok=True)
        raise
    pins_file = isos / PINS
    pinned = _load_pins(isos).get(out_name)
    try:
        _verify(src, name, out_name, got, expected, want, pinned, pins_file)
    except DownloadError:
        for f in (tmp, partial, sidecar):
            f.unlink(missing_ok=True)
        raise
    entry = {"sha256": got.out["sha256"], "md5": got.out.get("md5"), "size": got.size, "source": src.url,
             "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "published": {"name": name, **got.published}, "stamp": file_stamp(got.file)}
    _record_pin(isos, out_name, entry)  # before the rename: a file in the cache always has its pin
    final = isos / out_name
    os.replace(got.file, final)
    for f in (partial, sidecar):
        f.unlink(missing_ok=True)
    log.info("%s verified (sha256 %s) and cached as %s", name, got.out["sha256"], final)
    return FetchResult(final, got.out["sha256"], src.url, got.fetched)


@dataclass
class _Got:
    file: Path  # the complete output, under its temporary name
    published: Dict[str, str]  # md5, sha256 of the file as published (compressed)
    out: Dict[str, str]  # md5, sha256 of the output (the same for a file stored as is)
    size: int
    complete: bool  # the bz2 stream ended properly
    fetched: int


def _verify(src: _Source, name: str, out_name: str, got: _Got, expected: Dict[str, Dict[str, str]],
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
            with urllib.request.urlopen(_request(src.checksums), timeout=TIMEOUT) as resp:
                text = resp.read(16 << 20).decode(errors="replace")
    except urllib.error.HTTPError as e:
        raise _Unavailable(f"cannot get the checksum file {src.checksums}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Unavailable(f"cannot get the checksum file {src.checksums}: {_reason(e)}") from None
    found: Dict[str, Dict[str, str]] = {}
    for m in re.finditer(r"^\s*(MD5|SHA256)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$", text, re.M):
        algo, file, hexd = m.group(1).lower(), m.group(2), m.group(3).lower()
        if file in (name, out_name) and len(hexd) == ALGOS[algo]:
            found.setdefault(file, {})[algo] = hexd
    if not found:
        raise _Unavailable(f"the checksum file {src.checksums} has no line for {name}")
    return found


# --- transfers ----------------------------------------------------------------------------

def _download(url: str, partial: Path, sidecar: Path, out: Optional[Path], name: str, mode: str,
              pub_algos: Set[str], out_algos: Set[str]) -> _Got:
    """Fetch `url` into `partial`, resuming what a previous run left; decompress into `out` if given."""
    meta = _load_json(sidecar)
    offset = partial.stat().st_size if partial.is_file() else 0
    length = meta.get("length")
    if meta.get("url") != url or not offset or (length is not None and offset > length):
        offset, meta, length = 0, {}, None
        partial.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    hashes = _hashers(pub_algos)
    if offset:  # what is on disk goes through the hashers (and, below, the decompressor) first
        log.info("%s: resuming after the %s already downloaded", name, _mb(offset))
        with open(partial, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                for h in hashes.values():
                    h.update(chunk)
    pipe = _Pipeline(partial, out, out_algos) if out is not None else None
    if pipe is not None:
        pipe.grow(offset)
    show = _Progress(mode, name, length)

    def restart() -> None:
        nonlocal offset, meta, hashes, pipe
        offset, meta, hashes = 0, {}, _hashers(pub_algos)
        if pipe is not None:
            pipe.abort()
        partial.write_bytes(b"")
        sidecar.unlink(missing_ok=True)
        if pipe is not None:
            pipe = _Pipeline(partial, out, out_algos)  # type: ignore[arg-type]

    fetched = resumes = 0
    cut: Optional[str] = None
    try:
        while length is None or offset < length:
            with _open(url, offset, meta, cut) as resp:
                if offset and resp.status == 206 and not _resumes(resp, offset, meta):
                    log.info("%s changed on the server since the partial download: starting over", url)
                    restart()
                    continue
                if offset and resp.status != 206:
                    log.info("%s: the server sent the whole file, not the rest (it ignores ranges or the "
                             "file changed): starting over", url)
                    restart()
                if offset == 0:
                    length = _int(resp.headers.get("Content-Length"))
                    meta = {"url": url, "length": length, "etag": resp.headers.get("ETag"),
                            "last_modified": resp.headers.get("Last-Modified")}
                    _write_json(sidecar, meta)
                    show.total(length)
                got = 0
                try:
                    with open(partial, "ab") as f:
                        for chunk in iter(lambda: _read(resp), b""):
                            f.write(chunk)
                            f.flush()  # the pipeline reads the file: the bytes must be there first
                            for h in hashes.values():
                                h.update(chunk)
                            offset += len(chunk)
                            got += len(chunk)
                            fetched += len(chunk)
                            if pipe is not None:
                                pipe.grow(len(chunk))
                                pipe.check(url)
                            show.update(pipe.pos if pipe is not None else offset)
                    if length is None:
                        break  # no length announced: the end of the body is the end of the file
                    if offset < length:
                        raise _Cut(f"the connection closed after {_mb(offset)} of {_mb(length)}")
                except _Cut as e:
                    cut = str(e)
                    if got == 0 or resumes >= RESUMES:
                        raise _Unavailable(cut) from None
                    resumes += 1
                    log.warning("%s: %s; resuming (%d/%d)", url, cut, resumes, RESUMES)
                    time.sleep(RESUME_WAIT)
        if pipe is None:
            show.update(offset)
            return _Got(partial, _digests(hashes), _digests(hashes), offset, True, fetched)
        complete = pipe.finish(show)
        pipe.check(url)
        return _Got(pipe.out, _digests(hashes), pipe.digests(), pipe.size, complete, fetched)
    except BaseException:
        if pipe is not None:
            pipe.abort()
        raise
    finally:
        show.close()


def _copy_local(file: Path, out: Path, compressed: bool, name: str, mode: str,
                pub_algos: Set[str], out_algos: Set[str]) -> _Got:
    """The same as a download, from a folder mirror (no partial file: the source stays)."""
    try:
        size = file.stat().st_size
        f = open(file, "rb")
    except OSError as e:
        raise _Unavailable(_reason(e)) from None
    hashes = _hashers(pub_algos)
    show = _Progress(mode, name, size)
    pipe = None
    try:
        with f:
            if compressed:
                pipe = _Pipeline(file, out, out_algos)
                pipe.grow(size)
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    for h in hashes.values():
                        h.update(chunk)
                complete = pipe.finish(show)
                pipe.check(str(file))
                return _Got(out, _digests(hashes), pipe.digests(), pipe.size, complete, size)
            with open(out, "wb") as w:
                done = 0
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    w.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    done += len(chunk)
                    show.update(done)
            return _Got(out, _digests(hashes), _digests(hashes), done, True, done)
    except BaseException:
        if pipe is not None:
            pipe.abort()
        raise
    finally:
        show.close()


class _Pipeline:
    """Decompresses a growing file into `out` and hashes the result, in two threads.

    The file (the partial download) is the queue: the network appends and calls grow(),
    the inflater follows behind, so neither waits for the other and a resumed download
    re-reads what is already on disk while the network fetches the rest.
    """

    def __init__(self, src: Path, out: Path, algos: Set[str]):
        self.src, self.out = src, out
        self.pos = 0  # compressed bytes decompressed so far
        self.size = 0  # bytes written to out
        self.complete = False
        self.error: Optional[str] = None
        self._hashes = _hashers(algos)
        self._avail = 0
        self._done = False
        self._stop = False
        self._cond = threading.Condition()
        self._plain: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=8)
        self._file = open(out, "wb")
        self._threads = [threading.Thread(target=self._inflate, name="vmlab-bunzip2", daemon=True),
                         threading.Thread(target=self._write, name="vmlab-hash", daemon=True)]
        for t in self._threads:
            t.start()

    def grow(self, n: int) -> None:
        with self._cond:
            self._avail += n
            self._cond.notify()

    def check(self, url: str) -> None:
        """Raise DownloadError if the stream is corrupt or the output cannot be written."""
        if self.error is not None:
            raise DownloadError(f"{url}: {self.error}. The download was deleted; nothing was cached.")

    def finish(self, show: "_Progress") -> bool:
        """Wait for the threads to drain the file; True if the bz2 stream ended properly."""
        with self._cond:
            self._done = True
            self._cond.notify()
        for t in self._threads:
            while t.is_alive():
                t.join(0.25)
                show.update(self.pos)
        self._file.close()
        show.update(self.pos)
        return self.complete

    def abort(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        for t in self._threads:
            t.join()
        self._file.close()

    def digests(self) -> Dict[str, str]:
        return _digests(self._hashes)

    def _inflate(self) -> None:
        f = None
        d = bz2.BZ2Decompressor()
        try:
            while True:
                with self._cond:
                    while self._avail <= self.pos and not self._done and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    want = min(CHUNK, self._avail - self.pos)
                if want <= 0:
                    break  # done, and everything read
                if f is None:  # only now: a fresh partial file appears with its first bytes
                    f = open(self.src, "rb", buffering=0)
                chunk = f.read(want)
                if not chunk:
                    self.error = f"{self.src} is shorter than what was downloaded"
                    return
                try:
                    d = self._decompress(d, chunk)
                except (OSError, EOFError, ValueError) as e:
                    self.error = f"not a valid bz2 stream (near byte {self.pos}: {e})"
                    return
                self.pos += len(chunk)
            self.complete = d.eof
        except OSError as e:
            self.error = f"cannot read {self.src}: {e}"
        finally:
            if f is not None:
                f.close()
            self._plain.put(None)

    def _decompress(self, d: Any, data: bytes) -> Any:
        """Feed `data` to `d`; a stream that ends is followed by the next (pbzip2 writes several)."""
        while True:
            if d.eof:
                data = d.unused_data + data
                if not data:
                    return d
                d = bz2.BZ2Decompressor()
            out = d.decompress(data, OUT_CHUNK)
            data = b""
            if out:
                self._plain.put(out)
            if self._stop:
                return d
            if not d.eof and d.needs_input:
                return d

    def _write(self) -> None:
        failed = False
        while True:
            data = self._plain.get()
            if data is None:
                return
            if failed or self._stop:
                continue  # keep draining so the inflater never blocks
            try:
                for h in self._hashes.values():
                    h.update(data)
                self._file.write(data)
                self.size += len(data)
            except OSError as e:
                self.error = f"cannot write {self.out}: {e}"
                failed = True


# --- HTTP ---------------------------------------------------------------------------------

def _request(url: str, headers: Optional[Dict[str, str]] = None) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": f"vmlab/{__version__}", **(headers or {})})


def _open(url: str, offset: int, meta: Dict[str, Any], cut: Optional[str]) -> Any:
    """The response for `url` from `offset` on; If-Range makes a changed file come whole."""
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    then = f"{cut}; then " if cut else ""
    try:
        return urllib.request.urlopen(_request(url, headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our partial is no prefix of the file: start over
            e.close()
            return _open(url, 0, {}, cut)
        raise _Unavailable(f"{then}HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Unavailable(then + _reason(e)) from None


def _resumes(resp: Any, offset: int, meta: Dict[str, Any]) -> bool:
    """True if a 206 answer continues our partial file: same start, length and validators."""
    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if not m or int(m.group(1)) != offset:
        return False
    if meta.get("length") is not None and m.group(3) != "*" and int(m.group(3)) != meta["length"]:
        return False
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        if meta.get(key) and resp.headers.get(header) and resp.headers.get(header) != meta[key]:
            return False
    return True


def _read(resp: Any) -> bytes:
    """What has arrived, up to CHUNK: on a slow link progress stays live and Ctrl-C loses nothing."""
    try:
        return resp.read1(CHUNK)
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
        raise _Cut(f"the connection broke ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """A short why for a failed connection or read: "connection refused", "timed out after 30 s"."""
    if isinstance(e, urllib.error.URLError):
        if not isinstance(e.reason, BaseException):
            return str(e.reason)
        e = e.reason
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out after {TIMEOUT:.0f} s"
    text = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


# --- cache and pins -----------------------------------------------------------------------

def _from_cache(isos: Path, out_name: str, want: Optional[Tuple[str, str]]) -> Optional[FetchResult]:
    """The cached file if there, checked against its pin; a changed file is an error, not a miss.

    It is hashed again only if its size, mtime or inode differ from when it was verified."""
    final = isos / out_name
    if not final.is_file():
        return None
    entry = _load_pins(isos).get(out_name)
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
        _record_pin(isos, out_name, dict(entry, stamp=stamp))  # verified again: hashed once more, not every time
    return FetchResult(final, actual, "cache", 0)


def _record_pin(isos: Path, out_name: str, entry: Dict[str, Any]) -> None:
    with locks.held(isos / "pins.lock", "the checksum pins"):
        pins = _load_pins(isos)
        old = pins.get(out_name)
        if old is not None:
            entry["first_fetched_at"] = old.get("first_fetched_at", old.get("fetched_at"))
        pins[out_name] = entry
        _write_json(isos / PINS, pins)


def _load_pins(isos: Path) -> Dict[str, Dict[str, Any]]:
    return _load_json(isos / PINS)


def _load_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --- small helpers ------------------------------------------------------------------------

def _parse_pin(pin: Optional[str]) -> Optional[Tuple[str, str]]:
    if pin is None:
        return None
    algo, _, hexd = pin.strip().partition(":")
    algo, hexd = algo.lower(), hexd.lower()
    if algo not in ALGOS or len(hexd) != ALGOS[algo] or not re.fullmatch(r"[0-9a-f]+", hexd):
        raise ConfigError(f"checksum pin {pin!r}: expected md5:<32 hex digits> or sha256:<64 hex digits>")
    return algo, hexd


def _hashers(algos: Set[str]) -> Dict[str, Any]:
    return {algo: hashlib.new(algo) for algo in sorted(algos)}


def _digests(hashes: Dict[str, Any]) -> Dict[str, str]:
    return {algo: h.hexdigest() for algo, h in hashes.items()}


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _progress_mode(progress: Optional[bool]) -> str:
    if progress is False:
        return "off"
    if progress or (sys.stderr.isatty() and not os.environ.get("CI")):
        return "bar"
    return "log"


class _Progress:
    """A tqdm bar on a terminal, else a log line every LOG_EVERY seconds or 10%, or nothing."""

    def __init__(self, mode: str, name: str, total: Optional[int]):
        self.mode, self.name, self._total = mode, name, total
        self._bar: Any = None
        self._start = self._last = time.monotonic()
        self._last_n = 0
        self._n = 0
        if mode == "bar":
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                             file=sys.stderr, dynamic_ncols=True, leave=True)

    def total(self, total: Optional[int]) -> None:
        self._total = total
        if self._bar is not None and total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int) -> None:
        if n <= self._n:
            return
        if self._bar is not None:
            self._bar.update(n - self._n)
        self._n = n
        if self.mode != "log":
            return
        now = time.monotonic()
        step = self._total / 10 if self._total else None
        if now - self._last >= LOG_EVERY or (step and n - self._last_n >= step) or (self._total and n >= self._total):
            rate = (n - self._last_n) / max(now - self._last, 1e-6)
            if self._total:
                left = "" if n >= self._total else \
                    f", about {(self._total - n) / rate:.0f} s left" if rate > 0 else ", stalled"
                log.info("%s: %d%% (%s of %s), %s/s%s", self.name, 100 * n // self._total, _mb(n),
                         _mb(self._total), _mb(rate), left)
            else:
                log.info("%s: %s, %s/s", self.name, _mb(n), _mb(rate))
            self._last, self._last_n = now, n

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
