"""Progress of long work: a transfer's tqdm bar on a terminal, log lines elsewhere (CI), or
nothing; and a heartbeat line for a step that has been silent too long."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, Callable, Optional, Type

log = logging.getLogger("vmlab.images.fetch")  # its lines read as the download's

LOG_EVERY = 5.0  # plain progress lines: at most every LOG_EVERY seconds or every 10%
HEARTBEAT_EVERY = 8.0  # a silent step says what it is doing this often (issue 14: a line every 10 s)


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


class Heartbeat:
    """Logs `describe(seconds since start)` whenever vmlab logged nothing for `every` seconds.

    A long step that prints nothing (debootstrap unpacking, an installer booting) looks hung;
    a line naming what it is doing and for how long says it is not. Any line vmlab logs
    meanwhile (its "vmlab" logger) restarts the count, so the heartbeat only fills silences.
    Used as a context manager: the thread that writes the lines ends with the block.
    """

    def __init__(self, logger: logging.Logger, describe: Callable[[float], str], every: Optional[float] = None):
        self.logger, self.describe = logger, describe
        self.every = HEARTBEAT_EVERY if every is None else every
        self._start = self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vmlab-heartbeat")
        self._listener = _OnRecord(self.beat)

    def beat(self) -> None:
        """Something was said: the silence starts again."""
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            now = time.monotonic()
            if now - self._last >= self.every:
                try:
                    self.logger.info("%s", self.describe(now - self._start))
                except Exception:  # a progress line must never break the step it reports on
                    pass
                self._last = now

    def __enter__(self) -> "Heartbeat":
        self._start = self._last = time.monotonic()
        logging.getLogger("vmlab").addHandler(self._listener)
        self._thread.start()
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._stop.set()
        self._thread.join()
        logging.getLogger("vmlab").removeHandler(self._listener)


class _OnRecord(logging.Handler):
    """Calls `seen` for every record logged (Heartbeat: vmlab said something)."""

    def __init__(self, seen: Callable[[], None]):
        super().__init__()
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        self.seen()
