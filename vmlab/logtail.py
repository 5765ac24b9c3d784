"""The last lines of a log, read from its end: a log of any size costs the same to show.

A suite's log or a guest's console can be gigabytes; reading one whole to show its last
40 lines cost about 4 times its size in memory (a 10 MiB log: 42 MiB at its peak).
"""

from __future__ import annotations

import os
from pathlib import Path

TAIL_BYTES = 64 << 10  # read from the end of a log, at most: 40 lines of 1.6 KiB each


def last_lines(path: Path, count: int, limit: int = TAIL_BYTES) -> str:
    """The last `count` lines of the file (fewer if they take more than its last `limit`
    bytes), joined by newlines; OSError if it cannot be read."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        data = f.read(limit)
    lines = data.decode(errors="replace").splitlines()
    if size > limit and lines:
        lines = lines[1:]  # the first may be the end of a longer line
    return "\n".join(lines[-count:])
