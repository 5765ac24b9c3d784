"""Advisory locks that cannot outlive their holder.

flock(2) locks are released by the kernel when the process dies, so a crash or
Ctrl-C never leaves a lock behind; the pid written inside only serves messages.
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vmlab.errors import Busy

log = logging.getLogger(__name__)


@contextmanager
def held(path: Path, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block; `what` names it in messages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise Busy(f"{what} is busy: another vmlab command (pid {holder}) holds {path}") from None
            log.info("waiting for %s: another vmlab command (pid %s) is using it", what, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
