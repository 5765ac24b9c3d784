"""A suite's output read as test cases: one per test its runner reports.

A suite says what its output is (`format:` in vmlab.yaml), and vmlab reads it as CI
test reporters do (gotestsum, go-junit-report, TAP's JUnit converters), so CI shows
which test failed, not just which suite:

- `go-test`: `go test -json` (test2json's events) or `go test -v`; the classname is
  the package, a subtest is `TestParent/sub`, a failed test's output is its failure
  text, a package that does not build is an error case `[build failed]`, one that
  fails outside any test (TestMain, init) a failure `TestMain`, and a panic or a
  timeout goes to the test that was running.
- `tap`: TAP from a producer (Test::More, `node --test`, a shell script) or from
  `prove -v` (a file's tests get its name as classname); a subtest is `parent/child`,
  `# SKIP` and `# TODO` are skipped.
- `junit`, and `pytest` (pytest's own --junitxml, which vmlab asks for): the file.

The parsers are pure: text in, cases out. Output that holds no test, or that ends
before its tests did, says so in Parsed.problem, never with an exception. They read a
suite's log line by line (`parse_log`) in time linear in its size, and keep only what
junit.xml gets: a failing test's output (at most KEPT_CHARS of it, its start and its end),
never a passing test's; so any size of output is read in bounded memory per test.
go test's and TAP's readers (GoTestReader, TapReader) also say what each line ended (a
test, a package) or that it is not in the format, for the display of a suite's output as
it comes (readout.py).
"""

from __future__ import annotations

import io
import json
import re
import textwrap
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

FROM_FILE = ("junit", "pytest")  # read from the JUnit file the suite wrote, not from its output
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


@dataclass
class TestCase:
    __test__ = False  # not a pytest test class

    name: str
    classname: str
    outcome: str = PASSED
    time: float = 0.0
    message: str = ""  # one line: why it failed or was skipped
    text: str = ""  # the output that shows why

    @property
    def failing(self) -> bool:
        return self.outcome in (FAILED, ERROR)


@dataclass
class Parsed:
    cases: List[TestCase]
    problem: str = ""  # why these may not be all the suite's tests; "" when they are


def first_line(text: str) -> str:
    return next((line.strip() for line in _each_line(text) if line.strip()), "")


def _each_line(text: str) -> Iterator[str]:
    """text.splitlines(), one line at a time: a megabyte of short lines is not a list of objects."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield from text[start:end].splitlines()
        start = end


KEPT_CHARS = 1 << 20  # of one test's output, for junit.xml: its first and last half (the log has it all)
LINE_CHARS = 1 << 20  # a longer line is cut (a line is read whole): a test2json event holds one output line
NAME_CHARS = 500  # a test's name, its parents' names included


class _Text:
    """A test's output as it comes, a line at a time, holding at most about KEPT_CHARS of it: the
    start (where Go's and TAP's messages are) and the end (where a panic or a summary is). Lines
    are joined in pieces of CHUNK_CHARS, so a short line costs its characters, not an object."""

    CHUNK_CHARS = 1 << 14

    def __init__(self) -> None:
        self.head: List[str] = []
        self.tail: Deque[str] = deque()
        self.lines: List[str] = []  # not yet joined into a piece
        self.head_chars = self.tail_chars = self.lines_chars = self.cut = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.lines_chars += len(line)
        if self.lines_chars >= self.CHUNK_CHARS:
            self._piece()

    def _piece(self) -> None:
        piece = "".join(self.lines)
        self.lines, self.lines_chars = [], 0
        if self.head_chars < KEPT_CHARS // 2:
            self.head.append(piece)
            self.head_chars += len(piece)
            return
        self.tail.append(piece)
        self.tail_chars += len(piece)
        while self.tail_chars - len(self.tail[0]) >= KEPT_CHARS // 2:
            dropped = self.tail.popleft()
            self.tail_chars -= len(dropped)
            self.cut += len(dropped)

    def __str__(self) -> str:
        if self.lines:
            self._piece()
        cut = f"[... {self.cut} characters of this output left out; the suite's log has them]\n" if self.cut else ""
        return "".join(self.head) + cut + "".join(self.tail)


def _lines(stream: IO[str]) -> Iterator[str]:
    """The stream's lines, ended by "\n" only (str.splitlines also splits at \x0b, \x0c, \x1c...,
    which runners print inside a line); a line longer than LINE_CHARS is cut there."""
    while True:
        line = stream.readline(LINE_CHARS)
        if not line:
            return
        if not line.endswith("\n") and len(line) == LINE_CHARS:
            while (rest := stream.readline(LINE_CHARS)) and not rest.endswith("\n"):
                pass
            line += "\n"
        yield line


def _text_lines(output: str) -> Iterator[str]:
    return _lines(io.StringIO(output, newline="\n"))


# --- JUnit (and pytest's --junitxml) ---


def junit(data: bytes) -> Parsed:
    """Every <testcase> in a JUnit file, whatever nests it (<testsuites>, <testsuite>)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        return Parsed([], f"its JUnit file is not valid XML ({e})")
    cases = [_junit_case(case) for case in root.iter("testcase")]
    return Parsed(cases, "" if cases else "its JUnit file has no test case")


def _junit_case(case: ET.Element) -> TestCase:
    found = TestCase(case.get("name", ""), case.get("classname", ""), time=_seconds(case.get("time")))
    for tag, outcome in (("failure", FAILED), ("error", ERROR), ("skipped", SKIPPED)):
        element = case.find(tag)
        if element is not None:
            found.outcome, found.message, found.text = outcome, element.get("message", ""), element.text or ""
            break
    return found


def _seconds(value: Optional[str]) -> float:
    try:
        return float((value or "0").replace(",", ""))
    except ValueError:
        return 0.0


# --- go test -json / -v ---

_GO_MARK = re.compile(r"^\s*(?:=== (RUN|PAUSE|CONT|NAME)\s*|--- (PASS|FAIL|SKIP): )(\S*)(?: \((\d+(?:\.\d+)?)s\))?")
_GO_PACKAGE_END = re.compile(r"^(ok  |FAIL|\?   )\t(\S+)(?:[\t ](.*))?$")  # ok, FAIL, ?: a package's last line
_GO_BUILD_HEADER = re.compile(r"^# (\S+(?: \[\S+\])?)$")  # the compiler's output for a package follows
_GO_ENDS = {"pass": PASSED, "PASS": PASSED, "fail": FAILED, "FAIL": FAILED, "skip": SKIPPED, "SKIP": SKIPPED}


@dataclass
class _GoTest:
    name: str
    output: _Text = field(default_factory=_Text)  # its lines but the RUN/PASS/FAIL marks
    outcome: Optional[str] = None  # None while it runs
    elapsed: float = 0.0


@dataclass
class _GoOutput:
    """A package's lines outside any test (its TestMain, init, a panic): the text of a TestMain
    case when it fails outside a test, and whether they say its build failed."""

    text: _Text = field(default_factory=_Text)
    build_failed: str = ""

    def add(self, line: str) -> None:
        if not self.build_failed:
            found = re.search(r"\[(build failed|setup failed)\]", line)
            self.build_failed = found.group(1) if found else ""
        if not _GO_PACKAGE_END.match(line) and line.strip() != "FAIL":
            self.text.add(line)


class _GoRun:
    """The tests of every package seen so far; a package's cases are made when it ends.

    `go test -v` names a test's package only in the package's last line, so its tests
    wait under the package "" until then."""

    def __init__(self) -> None:
        self.tests: Dict[str, Dict[str, _GoTest]] = {}
        self.package_output: Dict[str, _GoOutput] = {}
        self.build_output: Dict[str, _Text] = {}  # by import path as the compiler names it
        self.cases: List[TestCase] = []
        self.current: Optional[str] = None  # text: the test the lines belong to
        self.building: Optional[str] = None  # text: the package whose compiler output is being read

    def test(self, package: str, name: str) -> _GoTest:
        name = name[:NAME_CHARS]
        return self.tests.setdefault(package, {}).setdefault(name, _GoTest(name))

    def output(self, package: str, name: Optional[str], text: str) -> None:
        if name:
            test = self.test(package, name)  # a RUN line makes the test
            if not _GO_MARK.match(text):
                test.output.add(text)
        else:
            self.package_output.setdefault(package, _GoOutput()).add(text)

    def end(self, package: str, name: str, action: str, elapsed: float) -> None:
        test = self.test(package, name)
        test.outcome, test.elapsed = _GO_ENDS[action], elapsed
        if test.outcome == PASSED:
            test.output = _Text()  # a passed test's output is not kept: it ran as it should

    def event(self, event: Dict[str, Any]) -> None:
        """One of test2json's events."""
        action, package = event["Action"], str(event.get("Package", ""))
        name = str(event["Test"]) if event.get("Test") else None
        if action == "build-output":
            self.build_output.setdefault(str(event.get("ImportPath", "")), _Text()).add(str(event.get("Output", "")))
        elif action == "run" and name:
            self.test(package, name)
        elif action == "output":
            self.output(package, name, str(event.get("Output", "")))
        elif action in ("pass", "fail", "skip") and name:
            self.end(package, name, action, _seconds(str(event.get("Elapsed") or 0)))
        elif action in ("pass", "fail", "skip"):
            self.package_end(package, action, "build failed" if event.get("FailedBuild") else "")

    def text(self, line: str) -> None:
        """A line of `go test -v` (or one that is not an event in `go test -json`'s output)."""
        mark, end, header = _GO_MARK.match(line), _GO_PACKAGE_END.match(line), _GO_BUILD_HEADER.match(line.rstrip())
        if mark:
            _, action, name, seconds = mark.groups()
            self.current, self.building = name or None, None
            if name:
                self.output("", name, line)  # makes the test (RUN) if need be
            if name and action:
                self.end("", name, action, _seconds(seconds))
        elif end:
            word, package, rest = end.groups()
            if word != "?   ":
                why = (rest or "").strip("[] ") if "failed]" in (rest or "") else ""
                self.package_end(package, "pass" if word == "ok  " else "fail", why)
            self.current = self.building = None
        elif header and self.current is None:
            self.building = header.group(1)
            self.build_output.setdefault(self.building, _Text()).add(line)
        elif self.building is not None:
            self.build_output[self.building].add(line)
        elif line.strip() not in ("PASS", "FAIL"):
            self.output("", self.current, line)

    def package_end(self, package: str, action: str, build_failed: str = "") -> None:
        tests = {**self.tests.pop("", {}), **self.tests.pop(package, {})}
        own, unnamed = self.package_output.pop(package, _GoOutput()), self.package_output.pop("", _GoOutput())
        build_failed = build_failed or own.build_failed or unnamed.build_failed
        if build_failed:
            self.cases.append(self._build_case(package, build_failed))
        failed_below = _first_failed_subtests(tests)
        made = [_go_case(package, test, failed_below.get(test.name), (FAILED, "the test binary exited while it ran"))
                for test in tests.values()]
        self.cases += made
        if _GO_ENDS[action] == FAILED and not build_failed and not any(c.failing for c in made):
            text = str(own.text) + str(unnamed.text)
            self.cases.append(TestCase("TestMain", package, FAILED, message=first_line(text) or
                                       "the test binary failed outside any test", text=text))

    def _build_case(self, package: str, why: str) -> TestCase:
        mine = [path for path in self.build_output if path.split()[0] == package or f"[{package}.test]" in path]
        text = "".join(str(self.build_output.pop(path)) for path in (mine or list(self.build_output)))
        after_header = text.partition("\n")[2]
        return TestCase(f"[{why}]", package, ERROR, message=first_line(after_header) or why, text=text)

    def finish(self) -> Parsed:
        """The cases, and tests whose package never ended: the output stopped while they ran."""
        unfinished = [package or "(its package)" for package in self.tests]
        for package, tests in self.tests.items():
            failed_below = _first_failed_subtests(tests)
            self.cases += [_go_case(package, test, failed_below.get(test.name),
                                    (ERROR, "its output ended while it ran")) for test in tests.values()]
        problem = f"the output ended before {', '.join(unfinished)} finished" if unfinished else ""
        if not self.cases and not problem:
            problem = "its output has no go test result (go test -json or -v names each test)"
        return Parsed(self.cases, problem)


def _first_failed_subtests(tests: Dict[str, _GoTest]) -> Dict[str, str]:
    """For each test with a failed subtest (at any depth), the first such, in the order they
    ran: one pass over the tests, each parent's name made once (names are NAME_CHARS at most)."""
    first: Dict[str, str] = {}
    for name, test in tests.items():
        if test.outcome != FAILED:
            continue
        parent = name
        while (cut := parent.rfind("/")) > 0:
            parent = parent[:cut]
            if parent in first:
                break  # and so are all of its parents
            first[parent] = name
    return first


def _go_case(package: str, test: _GoTest, failed_subtest: Optional[str], if_running: Tuple[str, str]) -> TestCase:
    """`if_running`: the outcome, and why, of a test that never ended."""
    text = textwrap.dedent(str(test.output))
    outcome, unfinished = (test.outcome, "") if test.outcome else if_running
    message = ""
    if outcome == SKIPPED:
        message = first_line(text) or "skipped"
    elif outcome != PASSED:
        message = first_line(text) or (f"subtest {failed_subtest} failed" if failed_subtest else "failed")
        if test.outcome is None:
            message = f"{unfinished}: {message}" if first_line(text) else unfinished
    return TestCase(test.name, package, outcome, test.elapsed, message, text if outcome != PASSED else "")


def go_test(output: str) -> Parsed:
    """`go test -json` (test2json's events; lines that are not JSON, such as a build's
    errors before Go 1.24, are read as text) or `go test -v` and plain `go test`."""
    return _go_test(_text_lines(output))


def _go_test(lines: Iterable[str]) -> Parsed:
    run = _GoRun()
    for line in lines:
        event = _json_event(line)
        if event is not None:
            run.event(event)
        else:
            run.text(line)
    return run.finish()


def _json_event(line: str) -> Optional[Dict[str, Any]]:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("Action"), str) else None


# --- TAP ---

_TAP_POINT = re.compile(r"^(\s*)(not )?ok(?=\s|$)(?:\s+(\d+))?(?:\s*-)?\s*(.*?)\s*$")
_TAP_DIRECTIVE = re.compile(r"(?<!\\)#\s*(SKIP|TODO)\S*\s*(.*)$", re.IGNORECASE)
_TAP_PLAN = re.compile(r"^(\s*)1\.\.(\d+)")
_TAP_BAIL = re.compile(r"^\s*Bail out!\s*(.*)")
_TAP_SUBTEST = re.compile(r"^\s*# Subtest:")
_PROVE_FILE = re.compile(r"^(\S+) \.\.+ ?$")  # `prove -v`: the file whose TAP follows
_PROVE_SAYS = re.compile(r"^(Dubious, |Failed \d+/\d+ subtests|\t\(less |Test Summary Report|All tests successful)")


_TAP_DURATION = re.compile(r"[ \t]*duration_ms:[ \t]*([\d.]+)")  # node --test's YAML block


class _TapFile:
    """One TAP stream: its plan and its points. A subtest's point comes before its parent's:
    it waits, on a stack whose depths never decrease towards the top, until a point less
    indented takes it (and what it took) as its children; names are joined at the end, so
    each line costs the same however deep or long the stream."""

    def __init__(self, classname: str) -> None:
        self.classname, self.plan, self.ran = classname, -1, 0
        self.cases: List[TestCase] = []
        self.waiting: List[Tuple[int, TestCase]] = []  # subtests, before the point of their parent
        self.below: Dict[int, List[TestCase]] = {}  # id(case) -> its subtests at every depth, in order
        self.parent: Dict[int, TestCase] = {}  # id(case) -> the point it is a subtest of
        self.output: Dict[int, _Text] = {}  # id(case) -> its lines, for a case that is not passed
        self.last: Optional[TestCase] = None  # the point the lines below belong to
        self.bailed = False

    def point(self, indent: int, failed: bool, number: Optional[str], description: str) -> None:
        directive = _TAP_DIRECTIVE.search(description)
        name = (description[:directive.start()] if directive else description).strip() or f"test {number or '?'}"
        case = TestCase(name[:NAME_CHARS], self.classname, FAILED if failed else PASSED)
        if directive and (directive.group(1).upper() == "SKIP" or failed):
            case.outcome = SKIPPED
            case.message = f"{directive.group(1).upper()}: {directive.group(2)}".rstrip(": ")
        cut = len(self.waiting)
        while cut and self.waiting[cut - 1][0] > indent:
            cut -= 1
        below: List[TestCase] = []
        for _, child in self.waiting[cut:]:
            self.parent[id(child)] = case
            below += [child, *self.below.pop(id(child), [])]
        del self.waiting[cut:]
        if indent == 0:
            self.ran += 1
            self.cases += [case, *below]
        else:
            self.waiting.append((indent, case))
            self.below[id(case)] = below
        if case.outcome != PASSED:
            self.output[id(case)] = _Text()
        self.last = case

    def line(self, text: str) -> None:
        if self.last is None:
            return
        if not self.last.time:
            duration = _TAP_DURATION.match(text)
            self.last.time = float(duration.group(1)) / 1000 if duration else 0.0
        kept = self.output.get(id(self.last))
        if kept is not None:
            kept.add(text)

    def finish(self) -> str:
        """What is wrong with the stream as a whole, if anything; fills in each case's name, text and message."""
        for case in self.cases:  # a parent comes before its subtests: its name is whole when theirs are made
            parent = self.parent.get(id(case))
            if parent is not None:
                case.name = f"{parent.name}/{case.name}"[:NAME_CHARS]
            if id(case) in self.output:
                case.text = str(self.output[id(case)])
            if case.outcome == FAILED:
                case.message = _tap_message(case.text) or "not ok"
        if not self.bailed and 0 <= self.plan and self.ran < self.plan:
            return f"{self.classname}: planned {self.plan} tests, ran {self.ran}"
        return ""


def _tap_message(text: str) -> str:
    """A YAML block's `error:` (node --test), else the first diagnostic line (Test::More's `# Failed test`)."""
    lines = _each_line(text)
    for line in lines:
        m = re.match(r"^\s*error:\s*(.*)$", line)
        if m:
            value = m.group(1).strip()
            return next((rest.strip() for rest in lines if rest.strip()), "") if value[:1] in ("|", ">") \
                else value.strip("'\"")
    return next((line for line in (re.sub(r"^\s*#", "", line).strip() for line in _each_line(text)) if line), "")


def tap(output: str, classname: str) -> Parsed:
    """TAP versions 12 to 14 (and `prove -v`); `classname` names a stream that has no file name."""
    return _tap(_text_lines(output), classname)


def _tap(lines: Iterable[str], classname: str) -> Parsed:
    reader = TapReader(classname)
    for line in lines:
        reader.line(line)
    return reader.close()[1]


def parse(format_: str, output: str, classname: str) -> Parsed:
    """The cases in a suite's output (`format_` go-test or tap); `classname` for tests that name none."""
    return _parse(format_, _text_lines(output), classname)


def parse_log(format_: str, log: Path, classname: str) -> Parsed:
    """parse() of a suite's log, read a line at a time: a log of any size costs what its cases keep."""
    with open(log, encoding="utf-8", errors="replace", newline="\n") as f:
        return _parse(format_, _lines(f), classname)


def _parse(format_: str, lines: Iterable[str], classname: str) -> Parsed:
    if format_ == "go-test":
        return _go_test(lines)
    if format_ == "tap":
        return _tap(lines, classname)
    raise ValueError(f"format {format_!r} is read from a file, not from the output")


# --- read as it comes: what a display (readout.py) shows before the output ends ---


@dataclass
class Ended:
    """A test ended: its case as far as it is known then (TAP's diagnostics follow its point: Said)."""

    case: TestCase
    depth: int = 0  # a TAP subtest's indentation


@dataclass
class Said:
    """A line of output that belongs to a test that has already ended."""

    case: TestCase
    line: str


@dataclass
class GroupEnded:
    """A package ended (go test): its outcome and time as `go test` says them."""

    name: str
    outcome: str
    time: float
    tests: int  # how many tests it reported
    note: str = ""  # "cached", "no test files", "build failed", its coverage


@dataclass
class Other:
    """A line that is not in the format (a build's or a script's own words): shown as it is."""

    line: str


Event = Union[Ended, Said, GroupEnded, Other]
_GO_SUMMARY = re.compile(r"(\d+(?:\.\d+)?)s\b|\((cached)\)|(coverage: .*? of statements)|\[(.+?)\]")


class GoTestReader(_GoRun):
    """`go test -json` (or `-v`) read line by line, saying what ended as soon as it ends: the
    same parser as go_test(), with the moments a display needs."""

    def __init__(self) -> None:
        super().__init__()
        self.events: List[Event] = []
        self.told: Dict[Tuple[str, str], TestCase] = {}  # (package, test): the case an Ended gave
        self.summaries: Dict[str, str] = {}  # by package: the rest of its `ok`/`FAIL` line
        self.failed_below: Dict[Tuple[str, str], str] = {}  # (package, test): its first failed subtest

    def line(self, text: str) -> List[Event]:
        event = _json_event(text)
        said = str(event.get("Output", "")) if event and event["Action"] == "output" else text if not event else ""
        end = _GO_PACKAGE_END.match(said)
        if end:
            self.summaries[end.group(2)] = end.group(3) or ""
        if event is not None:
            self.event(event)
        elif end and end.group(1) == "?   ":  # -v: a package without tests ends with no event
            self.events.append(GroupEnded(end.group(2), SKIPPED, 0.0, 0, self.summaries.pop(end.group(2)).strip("[]")))
        else:
            self.text(text)
        events, self.events = self.events, []
        return events

    def output(self, package: str, name: Optional[str], text: str) -> None:
        super().output(package, name, text)
        told = self.told.get((package, name[:NAME_CHARS])) if name else None
        if told is not None:
            self.events.append(Said(told, text))
        elif not name and not package:  # in no test and no package: not go test's
            self.events.append(Other(text))

    def end(self, package: str, name: str, action: str, elapsed: float) -> None:
        super().end(package, name, action, elapsed)
        test = self.test(package, name)
        if test.outcome == FAILED:  # a subtest ends before its parent: the parent's message names it
            parent = test.name
            while (cut := parent.rfind("/")) > 0 and (package, parent[:cut]) not in self.failed_below:
                parent = parent[:cut]
                self.failed_below[(package, parent)] = test.name
        failed_below = self.failed_below.pop((package, test.name), None)
        self.told[(package, test.name)] = case = _go_case(package, test, failed_below, (ERROR, ""))
        self.events.append(Ended(case))

    def package_end(self, package: str, action: str, build_failed: str = "") -> None:
        made, said = len(self.cases), not self.package_output.get(package)  # -v: its lines were shown (Other)
        super().package_end(package, action, build_failed)
        cases = self.cases[made:]
        told = {name for (where, name) in self.told if where in ("", package)}
        self.events += [Ended(replace(c, text="") if said and c.name == "TestMain" else c)
                        for c in cases if c.failing and c.name not in told]
        self.told = {key: case for key, case in self.told.items() if key[0] not in ("", package)}
        seconds, notes = 0.0, []
        for found in _GO_SUMMARY.finditer(self.summaries.pop(package, "")):
            time_, cached, coverage, bracketed = found.groups()
            seconds = float(time_) if time_ else seconds
            notes += [n for n in (cached, coverage, bracketed) if n]
        outcome = ERROR if any(c.outcome == ERROR for c in cases) else _GO_ENDS[action]
        self.events.append(GroupEnded(package, outcome, seconds, sum(c.classname == package for c in cases),
                                      ", ".join(notes)))

    def close(self) -> Tuple[List[Event], Parsed]:
        """The output ended: the tests that never did (their output stopped), and every case."""
        made = len(self.cases)
        parsed = super().finish()
        return [Ended(c) for c in parsed.cases[made:] if c.failing], parsed


class TapReader:
    """TAP read line by line: each point is a test that ended; the lines below it its diagnostics."""

    def __init__(self, classname: str) -> None:
        self.files = [_TapFile(classname)]

    def line(self, line: str) -> List[Event]:
        prove, plan, bail, point = (_PROVE_FILE.match(line), _TAP_PLAN.match(line), _TAP_BAIL.match(line),
                                    _TAP_POINT.match(line))
        current = self.files[-1]
        if prove:
            self.files.append(_TapFile(prove.group(1)))
        elif point:
            current.point(len(point.group(1)), bool(point.group(2)), point.group(3), point.group(4))
            assert current.last is not None
            return [Ended(current.last, len(point.group(1)))]
        elif plan:
            current.last = None
            if not plan.group(1):
                current.plan = int(plan.group(2))
        elif bail:
            current.bailed = True
            current.cases.append(TestCase("Bail out!", current.classname, ERROR, message=bail.group(1) or "bailed out"))
            current.last = None
            return [Ended(current.cases[-1])]
        elif _TAP_SUBTEST.match(line) or _PROVE_SAYS.match(line):
            current.last = None
            return [Other(line)] if _PROVE_SAYS.match(line) else []
        elif current.last is None:
            return [] if _TAP_VERSION.match(line) else [Other(line)]
        else:
            current.line(line)  # a YAML block's duration_ms is its time
            return [Said(current.last, line)]
        return []

    def close(self) -> Tuple[List[Event], Parsed]:
        """The output ended: every case (TAP says nothing more at its end)."""
        problems = [problem for problem in (f.finish() for f in self.files) if problem]
        cases = [case for f in self.files for case in f.cases]
        if not cases and not problems:
            problems = ["its output has no TAP test line ('ok N - name' / 'not ok N - name')"]
        return [], Parsed(cases, "; ".join(problems))


_TAP_VERSION = re.compile(r"^TAP version \d+\s*$")


def reader(format_: str, classname: str) -> Union[GoTestReader, TapReader]:
    """A reader of a suite's output as it comes (`format_` go-test or tap); `classname` for tests that name none."""
    if format_ == "go-test":
        return GoTestReader()
    if format_ == "tap":
        return TapReader(classname)
    raise ValueError(f"format {format_!r} is read from a file, not from the output")
