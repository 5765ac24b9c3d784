"""Files written whole or not at all.

A reader (a later run, another vmlab command, CI's artifact upload) sees the old file or the
new one, never half of one, and a failure or Ctrl-C while writing leaves nothing behind: the
new file is made under a temporary name beside it, renamed over it (atomic within a folder)
when done, and removed in the same `try` that made it, so no moment leaves it behind.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def made_as(path: Path, unique: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` for a tool to make the file under (qemu-img, a copy):
    renamed to `path` if the block ends without error, deleted on any failure or Ctrl-C. The
    name is fixed, so what a `kill -9` left (a disk: it can be large) is replaced by the next
    try, not piled up; `unique` gives each writer its own, for a file two commands may write
    at once (the other's rename would take a half-written file into place)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8) + '.' if unique else ''}partial")
    try:
        tmp.unlink(missing_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Replace `path`'s content with `text` as one step (a record, a report)."""
    with made_as(path, unique=True) as tmp:
        tmp.write_text(text)


@contextmanager
def private_file(path: Path) -> Iterator[BinaryIO]:
    """A new file at `path`, mode 0600 from its first byte (whatever the umask), for secrets
    (keys, a golden export, a seed CD). Its temporary name is random and opened exclusively,
    so a link planted beside `path` is never followed (nor is one at `path`: it is replaced).

    The name is chosen before the file exists: with tempfile.mkstemp a Ctrl-C landing between
    its open and its return left the file behind under a name nobody knew (seen in CI)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    try:
        with open(tmp, "xb", opener=lambda name, flags: os.open(name, flags, 0o600)) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
