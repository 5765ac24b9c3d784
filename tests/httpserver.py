"""A real HTTP server on 127.0.0.1 for the download tests: in-memory files, Range, faults on demand.

Each test configures what a user's network could do to a download: cut the connection
after N bytes, ignore Range, answer 500/503, trickle bytes slowly; and reads back what
the server did (body bytes sent and requests per path).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
PIECE = 64 * 1024


class FileServer:
    """Serves `files` (URL path -> bytes). Faults: server-wide attributes, or per request via `plan`.

    plan[path] is a queue of dicts consumed one per request to that path, with keys
    cut (close after this many body bytes), status (answer with it), ignore_range, rate.
    """

    def __init__(self, files: Dict[str, bytes]):
        self.files = dict(files)
        self.plan: Dict[str, Deque[Dict[str, Any]]] = defaultdict(deque)
        self.status: Optional[int] = None  # answer every request with this status
        self.ignore_range = False
        self.rate: Optional[float] = None  # bytes per second, None for as fast as possible
        self.etag = True  # send an ETag (some servers do not)
        self.last_modified = True  # send Last-Modified (some servers do not)
        self.honour_if_range = True  # False: a Range is served even when If-Range names another version
        self.sent: Counter = Counter()  # body bytes sent, per path
        self.requests: List[Tuple[str, Optional[str]]] = []  # (path, Range header)
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def requests_for(self, path: str) -> List[Optional[str]]:
        with self.lock:
            return [rng for p, rng in self.requests if p == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FileServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha1(body).hexdigest()[:16] + '"'


def _handler(server: FileServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            with server.lock:
                server.requests.append((path, self.headers.get("Range")))
                rule = server.plan[path].popleft() if server.plan[path] else {}
            status = rule.get("status", server.status)
            if status:
                self.send_error(status)
                return
            body = server.files.get(path)
            if body is None:
                self.send_error(404)
                return
            etag = etag_of(body)
            start, code = 0, 200
            rng = self.headers.get("Range")
            if rng and not rule.get("ignore_range", server.ignore_range):
                if_range = self.headers.get("If-Range")
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                if m and (if_range in (None, etag, LAST_MODIFIED) or not server.honour_if_range):
                    start, code = int(m.group(1)), 206
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
            self.send_response(code)
            self.send_header("Content-Length", str(len(body) - start))
            if server.etag:
                self.send_header("ETag", etag)
            if server.last_modified:
                self.send_header("Last-Modified", LAST_MODIFIED)
            self.send_header("Accept-Ranges", "bytes")
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            cut = rule.get("cut")
            pos, end = start, len(body) if cut is None else min(len(body), start + cut)
            try:
                while pos < end:
                    piece = body[pos:min(end, pos + PIECE)]
                    self.wfile.write(piece)
                    pos += len(piece)
                    with server.lock:
                        server.sent[path] += len(piece)
                    rate = rule.get("rate", server.rate)  # read each time: a test may lift it
                    if rate:
                        time.sleep(len(piece) / rate)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away (Ctrl-C): what it got is counted
            if cut is not None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return Handler
