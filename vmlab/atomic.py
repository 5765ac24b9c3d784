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
from typing import BinaryIO, ContextManager, Iterator


@contextmanager
def made_as(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for a tool to make the file under (qemu-img, a copy):
    renamed to `path` if the block ends without error, deleted on any failure or Ctrl-C. The
    name is fixed, so what a `kill -9` left (a disk: it can be large) is replaced by the next
    try, not piled up."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.unlink(missing_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _new_file(path: Path, mode: int) -> Iterator[BinaryIO]:
    """A new file to write `path`'s content into, under a random name of its own, opened
    exclusively with `mode`: so two writers never share it (one's rename would take the
    other's half-written file into place) and a link planted beside `path` is never followed.

    The name is chosen before the file exists: with tempfile.mkstemp a Ctrl-C landing between
    its open and its return left the file behind under a name nobody knew (seen in CI)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    try:
        with open(tmp, "xb", opener=lambda name, flags: os.open(name, flags, mode)) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Replace `path`'s content with `text` as one step (a record, a report), even with two
    commands writing it at once (a watch and a quick both write the sync record)."""
    with _new_file(path, 0o666) as f:  # the umask applies, as for any new file
        f.write(text.encode())


def private_file(path: Path) -> ContextManager[BinaryIO]:
    """A new file at `path`, mode 0600 from its first byte (whatever the umask), for secrets
    (keys, a golden export, a seed CD); a link at `path` is replaced, never followed."""
    return _new_file(path, 0o600)
