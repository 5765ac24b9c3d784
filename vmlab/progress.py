"""Progress of a long transfer: a tqdm bar on a terminal, log lines elsewhere (CI), or nothing."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Optional

log = logging.getLogger("vmlab.fetch")  # its lines read as the download's

LOG_EVERY = 5.0  # plain progress lines: at most every LOG_EVERY seconds or every 10%


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def mode(progress: Optional[bool]) -> str:
    if progress is False:
        return "off"
    if progress or (sys.stderr.isatty() and not os.environ.get("CI")):
        return "bar"
    return "log"


class Progress:
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
                log.info("%s: %d%% (%s of %s), %s/s%s", self.name, 100 * n // self._total, mb(n),
                         mb(self._total), mb(rate), left)
            else:
                log.info("%s: %s, %s/s", self.name, mb(n), mb(rate))
            self._last, self._last_n = now, n

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
