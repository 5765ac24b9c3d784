"""A suite's output as a person reads it: a line per package or test, a failure's own output under it.

With a `format:` vmlab reads (formats.py), the terminal shows what gotestsum shows by
default for Go: a line per package as it ends (`✓  pkg (1.2s)`, `✖` failed, `∅` no tests),
a line per failing or skipped test with its own output (or reason) under it, and at the
end `DONE 73 tests, 2 skipped, 3 failures in 51.234s`. TAP has no packages: a line per
test. pytest and JUnit are read from the file the suite writes when it ends, so their
output passes as it comes (pytest's own is written for people), and the lines of the
file's tests follow it, a line per classname.

It keeps up with the stream: each line is parsed as it arrives, and what it completes is
shown before the next chunk is read (a test's diagnostics that came in the same chunk
are shown under it, so a TAP test's line can carry the time its YAML block gives). A
line that is not in the format passes as it is: a suite whose output is not what it
declared still shows every line. The stream itself always goes whole to the suite's
log in the results folder; `raw` (`--raw`, VMLAB_RAW=1) shows it here as it comes.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from typing import IO, Dict, List, Optional, Union

from vmlab.config import SuiteConfig
from vmlab.runs import formats
from vmlab.runs.formats import ERROR, FAILED, PASSED, SKIPPED, TestCase
from vmlab.runs.results import SuiteResult

ICONS = {PASSED: "✓", FAILED: "✖", ERROR: "✖", SKIPPED: "∅"}  # gotestsum's
COLORS = {PASSED: "32", FAILED: "31", ERROR: "31", SKIPPED: "33"}  # green, red, yellow
INDENT = "    "  # a test's output under its line
LONGEST_LINE = 1 << 20  # bytes without a newline that are shown as they are, not read as the format


@dataclass
class _Shown:
    """A test's line, held until its chunk of output has been read (its diagnostics may follow)."""

    case: TestCase
    depth: int
    lines: List[str]
    name: str = ""  # as it was when it ended (TAP names a subtest after its parent only later)
    margin: Optional[str] = None  # the indentation its output lines lose under it (its first lines')

    @classmethod
    def of(cls, case: TestCase, depth: int = 0) -> "_Shown":
        return cls(case, depth, case.text.splitlines(keepends=True), case.name)


@dataclass
class Readout:
    """Where a suite's output goes as it comes (openssh's Sink): the readable view of it, on `out`."""

    suite: SuiteConfig
    out: IO[bytes]
    raw: bool = False
    color: Optional[bool] = None  # None: if `out` is a terminal (and NO_COLOR is not set)
    reader: Union[formats.GoTestReader, formats.TapReader, None] = field(init=False, default=None)
    partial: List[bytes] = field(init=False, default_factory=list)  # a line whose end has not come yet
    partial_size: int = field(init=False, default=0)
    pending: Optional[_Shown] = field(init=False, default=None)
    last: Optional[_Shown] = field(init=False, default=None)  # lines said after it go under it, if it failed

    def __post_init__(self) -> None:
        fmt = self.suite.format
        if not self.raw and fmt and fmt not in formats.FROM_FILE:
            self.reader = formats.reader(fmt, self.suite.name)
        if self.color is None:
            self.color = _is_terminal(self.out) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    @property
    def readable(self) -> bool:
        return not self.raw and bool(self.suite.format)

    def write(self, data: bytes) -> int:
        if self.reader is None:
            self.out.write(data)
            return len(data)
        if b"\n" not in data:
            self.partial.append(data)  # joined once its end comes: a long line costs no more than its size
            self.partial_size += len(data)
            if self.partial_size > LONGEST_LINE:  # not a test's line: shown as it is
                self.out.write(b"".join(self.partial))
                self.partial, self.partial_size = [], 0
            return len(data)
        lines = b"".join([*self.partial, data]).split(b"\n")
        rest = lines.pop()
        self.partial, self.partial_size = ([rest] if rest else []), len(rest)
        for line in lines:
            self._read(line + b"\n")
        return len(data)

    def flush(self) -> None:
        """The end of a chunk: nothing waits for the next one."""
        self._settle()
        self.out.flush()

    def finish(self, result: SuiteResult) -> None:
        """The suite ended: what its output still held, the lines of a JUnit file's tests, the summary."""
        if not self.readable:
            return
        if self.reader is not None:
            if self.partial:
                self._read(b"".join(self.partial) + b"\n")
                self.partial, self.partial_size = [], 0
            events, parsed = self.reader.close()
            for event in events:
                self._show(event)
            self._settle()
            cases = parsed.cases
        else:
            cases = result.cases
            self._groups(cases)
        self._print("", summary(cases, result.duration))
        self.out.flush()

    # --- what each thing looks like ---

    def _read(self, line: bytes) -> None:
        assert self.reader is not None
        for event in self.reader.line(line.decode(errors="surrogateescape")):  # bytes out as they came in
            self._show(event)

    def _show(self, event: formats.Event) -> None:
        if isinstance(event, formats.Said):
            if self.pending is not None and self.pending.case is event.case:
                self.pending.lines.append(event.line)
            elif self.last is not None and self.last.case is event.case and event.case.failing:
                self._print(self._under(self.last, event.line))
            return
        self._settle()
        if isinstance(event, formats.Ended):
            if event.case.outcome != PASSED or isinstance(self.reader, formats.TapReader):  # TAP: every test
                self.pending = _Shown.of(event.case, event.depth)
        elif isinstance(event, formats.GroupEnded):
            self._print(self._group_line(event.name, event.outcome if event.tests or event.outcome != PASSED
                                         else SKIPPED, event.time, event.note))
        else:
            self._print(event.line.rstrip("\n"))

    def _settle(self) -> None:
        """Show the test held back, with its output if it failed (its reason if skipped)."""
        shown, self.pending = self.pending, None
        if shown is None:
            return
        case = shown.case
        where = f"{case.classname} " if case.classname and case.classname != self.suite.name else ""
        took = f" ({case.time:.2f}s)" if case.time else ""
        self._print(" " * shown.depth + f"{self._icon(case.outcome)}  {where}{shown.name}{took}")
        if case.failing:
            block = "".join(shown.lines)
            shown.margin = _margin(block) if block.strip() else None
            for line in block.splitlines():
                self._print(self._under(shown, line))
        elif case.outcome == SKIPPED and case.message:
            self._print(" " * shown.depth + INDENT + case.message)
        self.last = shown

    def _groups(self, cases: List[TestCase]) -> None:
        """A JUnit file's tests: a line per failing or skipped test, then one per classname."""
        groups: Dict[str, List[TestCase]] = {}
        for case in cases:
            groups.setdefault(case.classname, []).append(case)
        for classname, group in groups.items():
            for case in group:
                if case.outcome != PASSED:
                    self.pending = _Shown.of(case)
                    self._settle()
            outcome = FAILED if any(c.failing for c in group) else \
                SKIPPED if all(c.outcome == SKIPPED for c in group) else PASSED
            self._print(self._group_line(classname or self.suite.name, outcome, sum(c.time for c in group)))

    def _group_line(self, name: str, outcome: str, seconds: float, note: str = "") -> str:
        took = "" if not seconds or "cached" in note else f" ({duration(seconds)})"
        return f"{self._icon(outcome)}  {name}{took}" + (f" ({note})" if note else "")

    def _under(self, shown: _Shown, line: str) -> str:
        line = line.rstrip("\n")
        if shown.margin is None and line.strip():
            shown.margin = line[:len(line) - len(line.lstrip())]
        margin = shown.margin or ""
        return " " * shown.depth + INDENT + (line[len(margin):] if line.startswith(margin) else line)

    def _icon(self, outcome: str) -> str:
        icon = ICONS[outcome]
        return f"\x1b[{COLORS[outcome]}m{icon}\x1b[0m" if self.color else icon

    def _print(self, *lines: str) -> None:
        self.out.write("".join(f"{line}\n" for line in lines).encode(errors="surrogateescape"))


def summary(cases: List[TestCase], seconds: float) -> str:
    """gotestsum's last line: `DONE 73 tests, 2 skipped, 3 failures, 1 error in 51.234s`."""
    counts = [(sum(c.outcome == outcome for c in cases), word) for outcome, word in
              ((SKIPPED, "skipped"), (FAILED, "failure"), (ERROR, "error"))]
    said = "".join(f", {n} {word}{'s' if n > 1 and word != 'skipped' else ''}" for n, word in counts if n)
    return f"DONE {len(cases)} test{'s' if len(cases) != 1 else ''}{said} in {seconds:.3f}s"


def duration(seconds: float) -> str:
    """As Go writes a package's time, to the millisecond: 3ms, 1.2s, 1m4.5s."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


def _margin(block: str) -> str:
    """The indentation every line of `block` shares (textwrap.dedent's)."""
    dedented = textwrap.dedent(block)
    first = next((line for line in block.splitlines() if line.strip()), "")
    return first[:len(first) - len(next((line for line in dedented.splitlines() if line.strip()), ""))]


def _is_terminal(out: IO[bytes]) -> bool:
    try:
        return os.isatty(out.fileno())
    except (AttributeError, OSError, ValueError):
        return False
