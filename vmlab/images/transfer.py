"""One transfer of a file: a resumable HTTP download or a local copy, decompressed (bz2) and hashed on the way.

The compressed bytes go to a `.partial` file (a sidecar records the URL and the server's
validators), so a cut or Ctrl-C resumes with an HTTP Range request. That partial file is
also the queue between the network and the CPU: a worker thread follows it,
decompressing while the download goes on, and another hashes and writes what comes out
(bz2 and hashlib release the GIL, so the network never waits for the CPU).
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import logging
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Set

from vmlab import __version__, records
from vmlab.errors import DownloadError
from vmlab.progress import Progress, mb

log = logging.getLogger("vmlab.images.fetch")

CHUNK = 1 << 20  # large reads: per-chunk overhead is then negligible next to bz2
OUT_CHUNK = 4 << 20  # bound on what one bz2 call may produce (zero-filled ISOs compress a lot)
TIMEOUT = 30.0  # seconds a connect or a read may stall before the mirror counts as down
RESUMES = 3  # a connection cut mid-file is resumed at once this many times per mirror
RESUME_WAIT = 1.0


class Unavailable(Exception):
    """This mirror cannot provide the file now (down, 404, cut for good): try the next one."""


class Cut(Exception):
    """The connection ended before the whole file came; the partial file holds what did."""


@dataclass
class Got:
    file: Path  # the complete output, under its temporary name
    published: Dict[str, str]  # md5, sha256 of the file as published (compressed)
    out: Dict[str, str]  # md5, sha256 of the output (the same for a file stored as is)
    size: int
    complete: bool  # the bz2 stream ended properly
    fetched: int


def download(url: str, partial: Path, sidecar: Path, out: Optional[Path], name: str, mode: str,
              pub_algos: Set[str], out_algos: Set[str]) -> Got:
    """Fetch `url` into `partial`, resuming what a previous run left; decompress into `out` if given."""
    meta = records.read(sidecar, warn=True)
    offset = partial.stat().st_size if partial.is_file() else 0
    length = meta.get("length")
    if meta.get("url") != url or not offset or (length is not None and offset > length):
        offset, meta, length = 0, {}, None
        partial.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    hashes = _hashers(pub_algos)
    if offset:  # what is on disk goes through the hashers (and, below, the decompressor) first
        log.info("%s: resuming after the %s already downloaded", name, mb(offset))
        with open(partial, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                for h in hashes.values():
                    h.update(chunk)
    pipe = _Pipeline(partial, out, out_algos) if out is not None else None
    if pipe is not None:
        pipe.grow(offset)
    show = Progress(mode, name, length)

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
                    records.write(sidecar, meta, indent=2, sort_keys=True)
                    show.total(length)
                got = 0
                try:
                    with open(partial, "ab") as out_file:
                        for chunk in iter(lambda: _read(resp), b""):
                            out_file.write(chunk)
                            out_file.flush()  # the pipeline reads the file: the bytes must be there first
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
                        raise Cut(f"the connection closed after {mb(offset)} of {mb(length)}")
                except Cut as e:
                    cut = str(e)
                    if got == 0 or resumes >= RESUMES:
                        raise Unavailable(cut) from None
                    resumes += 1
                    log.warning("%s: %s; resuming (%d/%d)", url, cut, resumes, RESUMES)
                    time.sleep(RESUME_WAIT)
        if pipe is None:
            show.update(offset)
            return Got(partial, _digests(hashes), _digests(hashes), offset, True, fetched)
        complete = pipe.finish(show)
        pipe.check(url)
        return Got(pipe.out, _digests(hashes), pipe.digests(), pipe.size, complete, fetched)
    except BaseException:
        if pipe is not None:
            pipe.abort()
        raise
    finally:
        show.close()


def copy_local(file: Path, out: Path, compressed: bool, name: str, mode: str,
                pub_algos: Set[str], out_algos: Set[str]) -> Got:
    """The same as a download, from a folder mirror (no partial file: the source stays)."""
    try:
        size = file.stat().st_size
        f = open(file, "rb")
    except OSError as e:
        raise Unavailable(reason(e)) from None
    hashes = _hashers(pub_algos)
    show = Progress(mode, name, size)
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
                return Got(out, _digests(hashes), pipe.digests(), pipe.size, complete, size)
            with open(out, "wb") as w:
                done = 0
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    w.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    done += len(chunk)
                    show.update(done)
            return Got(out, _digests(hashes), _digests(hashes), done, True, done)
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

    def finish(self, show: "Progress") -> bool:
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


def request(url: str, headers: Optional[Dict[str, str]] = None) -> urllib.request.Request:
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
        return urllib.request.urlopen(request(url, headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our partial is no prefix of the file: start over
            e.close()
            return _open(url, 0, {}, cut)
        raise Unavailable(f"{then}HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise Unavailable(then + reason(e)) from None


def _resumes(resp: Any, offset: int, meta: Dict[str, Any]) -> bool:
    """True if a 206 answer continues our partial file: same start, length and validators."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
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
        data: bytes = resp.read1(CHUNK)
        return data
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
        raise Cut(f"the connection broke ({reason(e)})") from None


def reason(e: BaseException) -> str:
    """A short why for a failed connection or read: "connection refused", "timed out after 30 s"."""
    if isinstance(e, urllib.error.URLError):
        if not isinstance(e.reason, BaseException):
            return str(e.reason)
        e = e.reason
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out after {TIMEOUT:.0f} s"
    text = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def _hashers(algos: Set[str]) -> Dict[str, Any]:
    return {algo: hashlib.new(algo) for algo in sorted(algos)}


def _digests(hashes: Dict[str, Any]) -> Dict[str, str]:
    return {algo: h.hexdigest() for algo, h in hashes.items()}


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
