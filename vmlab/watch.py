"""`vm.watch`: the edit-test loop as one long-lived process, a run on every save.

One process keeps what a one-shot `vm.quick` pays for on every turn: Python and
its imports, and the SSH control master (kept open while it watches). The
project is watched with watchfiles (inotify; a burst of saves is one set of
changes), under the same rules as the sync (`.git`, the lab's `vm/`, the config's
excludes, what git ignores) plus editors' temporary files. Each run sends only
what changed (vmlab/sync/) and runs the suite; a run still going when the next
change comes is cancelled and started again, or with `finish` left to end first
and followed by one run for everything that came meanwhile.

Each run prints the suite's output (read as its format says, as vm.quick does: runs/readout.py)
and one result line; stopping (Ctrl-C, SIGTERM) kills the run under way, closes the
control master if watch opened it, and prints a summary line of the session.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Set

from vmlab.config import SuiteConfig, SyncConfig
from vmlab.errors import Cancelled, Terminated, VmlabError
from vmlab.lab import GuestVM, loop
from vmlab.sync.rules import Rules

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 240  # an idle watch touches the control master before its ControlPersist ends


@dataclass
class Tally:
    """What a watch session did, for its summary line."""

    passed: int = 0
    failed: int = 0
    cancelled: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        runs = self.passed + self.failed + self.cancelled + self.errors
        parts = [f"{self.passed} passed", f"{self.failed} failed"]
        parts += [f"{self.cancelled} cancelled"] if self.cancelled else []
        parts += [f"{self.errors} did not finish"] if self.errors else []
        took = _clock(time.monotonic() - self.started)
        return f"watch: {runs} run{'s' if runs != 1 else ''}: {', '.join(parts)} in {took}"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class Ignored:
    """The sync's rules (vmlab.sync.rules), for paths watchfiles reports (absolute): vmlab's
    and the config's excludes for each change as it comes, what git ignores once per burst."""

    def __init__(self, project_dir: Path, state_dir: Path, settings: SyncConfig):
        from watchfiles import DefaultFilter

        self.project_dir = project_dir
        self.excluded = Rules(settings)  # git's list is not read per change: see kept()
        self.git = Rules.read(project_dir, settings) if settings.gitignore else None
        self.editor = DefaultFilter(ignore_paths=[str(state_dir), str(project_dir / "vm")])

    def __call__(self, change: object, path: str) -> bool:
        """watchfiles' filter: True for a path the sync could send."""
        if not self.editor(change, path):  # type: ignore[arg-type]
            return False
        rel = os.path.relpath(path, self.project_dir)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):  # outside; `..data` is a name inside
            return False
        return not self.excluded.leaves_out_anywhere(rel.replace(os.sep, "/"),
                                                     os.path.isdir(path) and not os.path.islink(path))

    def kept(self, paths: Set[str]) -> Set[str]:
        """Of `paths`, those git does not ignore (with sync.gitignore), by the list the sync
        reads (git's own; a folder holding only ignored files is listed whole), read again for
        each burst; a path gone by then is judged by the list before it too."""
        if self.git is None or not paths:
            return paths
        before, self.git = self.git, Rules.read(self.project_dir, self.git.settings)
        either = Rules(self.git.settings, before.git | self.git.git)
        return {path for path in paths if not (self.git if os.path.lexists(path) else either)
                .git_ignores(os.path.relpath(path, self.project_dir).replace(os.sep, "/"))}


class Watch:
    """A watch session of one VM: the runs, one at a time, in a
    worker thread. It drives the lab's verbs (it is above the lab: vmlab.lab never imports it)."""

    def __init__(self, vm: GuestVM, suite: SuiteConfig, finish: bool = False,
                 say: Callable[[str], None] = lambda line: print(line, flush=True), raw: bool = False):
        self.vm, self.suite, self.finish, self.say = vm, suite, finish, say
        self.raw = raw  # the suite's output as it comes, not read as its format (runs/readout.py)
        self.tally = Tally()
        self._cancel = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._runs = 0
        self._stopping = False  # a run cancelled now is cut off by the watch ending, not by a newer change

    def run(self) -> None:
        """Watch until interrupted (KeyboardInterrupt, or Terminated on SIGTERM)."""
        from watchfiles import watch

        config = self.vm.project.config
        project = config.project_dir
        ignored = Ignored(project, config.state_dir, config.sync)
        conn = self.vm.connection()
        owned = not conn.control_path.exists()  # a master watch opens, watch closes
        try:
            conn.run(":", timeout=60)  # opens the master (or finds the VM gone: RunIncomplete says so)
            self.say(f"watching {project} (suite {self.suite.name}, VM {self.vm.name}); Ctrl-C stops")
            self._start()
            pending, idle_since = False, time.monotonic()
            for changes in self._watched(watch(project, watch_filter=ignored, rust_timeout=200,
                                               yield_on_timeout=True, debounce=1600, step=30)):
                paths = ignored.kept({path for _, path in changes})
                busy = self._worker is not None and self._worker.is_alive()
                if paths:
                    idle_since = time.monotonic()
                    if busy and self.finish:
                        pending = True
                    else:
                        self._stop_run()
                        self._start()
                elif pending and not busy:
                    pending = False
                    self._start()
                elif not busy and time.monotonic() - idle_since > KEEPALIVE_SECONDS:
                    conn.run(":", timeout=60)
                    idle_since = time.monotonic()
        finally:
            self._stopping = True
            self._stop_run()
            if owned:
                conn.close(cut_off=True)
            self.say(self.tally.line())

    @staticmethod
    def _watched(changes: Iterator[Set[Any]]) -> Iterator[Set[Any]]:
        """watchfiles' sets of changes; SIGTERM stays Terminated (watchfiles reports any signal
        that stopped it as KeyboardInterrupt, losing which one it was)."""
        terminated = []

        def on_term(signum: int, frame: Any) -> None:
            terminated.append(signum)
            raise Terminated()

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield from changes
        except KeyboardInterrupt:
            if terminated:
                raise Terminated() from None
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _start(self) -> None:
        self._cancel = threading.Event()
        self._runs += 1
        self._worker = threading.Thread(target=self._turn, args=(self._runs, self._cancel), daemon=True,
                                        name=f"vmlab-watch-run-{self._runs}")
        self._worker.start()

    def _stop_run(self) -> None:
        """Cancel the run under way, if any, and wait for it (its ssh is killed at once)."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.join()
            self._worker = None

    def _turn(self, number: int, cancel: threading.Event) -> None:
        started = time.monotonic()
        stamp = time.strftime("%H:%M:%S")
        try:
            report = loop.run_suites(self.vm, [self.suite], sync_first=True,
                                     echo=sys.stdout.buffer, cancel=cancel, raw=self.raw)
        except Cancelled:
            self.tally.cancelled += 1
            why = "watch stopped" if self._stopping else "a newer change came"
            self.say(f"[{stamp}] run {number}: cancelled ({why})")
            return
        except (VmlabError, OSError) as e:
            self.tally.errors += 1
            self.say(f"[{stamp}] run {number}: DID NOT FINISH: {e.message if isinstance(e, VmlabError) else e}")
            return
        (suite,) = report.suites
        if report.passed:
            self.tally.passed += 1
        else:
            self.tally.failed += 1
        verdict = "PASSED" if report.passed else "FAILED"
        self.say(f"[{stamp}] run {number}: {verdict} {suite.name}: {suite.passed} passed, "
                 f"{suite.failed} failed in {time.monotonic() - started:.2f}s ({report.sync or 'synced'}) "
                 f"results: {report.results_dir}")

