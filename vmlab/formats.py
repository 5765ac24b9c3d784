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
before its tests did, says so in Parsed.problem, never with an exception. go test's
and TAP's also read line by line (GoTestReader, go_test()'s parser; TapReader, tap()'s),
saying what each line ended (a test, a package) or that it is not in the format, for
the display of a suite's output as it comes (readout.py).
"""

from __future__ import annotations

import json
import re
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple, Union

FORMATS = ("junit", "pytest", "go-test", "tap")
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
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


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
    output: List[str] = field(default_factory=list)
    outcome: Optional[str] = None  # None while it runs
    elapsed: float = 0.0


class _GoRun:
    """The tests of every package seen so far; a package's cases are made when it ends.

    `go test -v` names a test's package only in the package's last line, so its tests
    wait under the package "" until then."""

    def __init__(self) -> None:
        self.tests: Dict[str, Dict[str, _GoTest]] = {}
        self.package_output: Dict[str, List[str]] = {}
        self.build_output: Dict[str, List[str]] = {}  # by import path as the compiler names it
        self.cases: List[TestCase] = []
        self.current: Optional[str] = None  # text: the test the lines belong to
        self.building: Optional[str] = None  # text: the package whose compiler output is being read

    def test(self, package: str, name: str) -> _GoTest:
        return self.tests.setdefault(package, {}).setdefault(name, _GoTest(name))

    def output(self, package: str, name: Optional[str], text: str) -> None:
        if name:
            self.test(package, name).output.append(text)
        else:
            self.package_output.setdefault(package, []).append(text)

    def end(self, package: str, name: str, action: str, elapsed: float) -> None:
        test = self.test(package, name)
        test.outcome, test.elapsed = _GO_ENDS[action], elapsed

    def event(self, event: Dict[str, Any]) -> None:
        """One of test2json's events."""
        action, package = event["Action"], str(event.get("Package", ""))
        name = str(event["Test"]) if event.get("Test") else None
        if action == "build-output":
            self.build_output.setdefault(str(event.get("ImportPath", "")), []).append(str(event.get("Output", "")))
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
            self.build_output.setdefault(self.building, []).append(line)
        elif self.building is not None:
            self.build_output[self.building].append(line)
        elif line.strip() not in ("PASS", "FAIL"):
            self.output("", self.current, line)

    def package_end(self, package: str, action: str, build_failed: str = "") -> None:
        tests = {**self.tests.pop("", {}), **self.tests.pop(package, {})}
        output = self.package_output.pop(package, []) + self.package_output.pop("", [])
        build_failed = build_failed or next((m for line in output
                                             for m in re.findall(r"\[(build failed|setup failed)\]", line)), "")
        if build_failed:
            self.cases.append(self._build_case(package, build_failed))
        made = [_go_case(package, test, tests, (FAILED, "the test binary exited while it ran"))
                for test in tests.values()]
        self.cases += made
        if _GO_ENDS[action] == FAILED and not build_failed and not any(c.failing for c in made):
            text = "".join(line for line in output if not _GO_PACKAGE_END.match(line) and line.strip() != "FAIL")
            self.cases.append(TestCase("TestMain", package, FAILED, message=first_line(text) or
                                       "the test binary failed outside any test", text=text))

    def _build_case(self, package: str, why: str) -> TestCase:
        mine = [path for path in self.build_output if path.split()[0] == package or f"[{package}.test]" in path]
        lines = [line for path in (mine or list(self.build_output)) for line in self.build_output.pop(path)]
        return TestCase(f"[{why}]", package, ERROR, message=first_line("".join(lines[1:])) or why, text="".join(lines))

    def finish(self) -> Parsed:
        """The cases, and tests whose package never ended: the output stopped while they ran."""
        unfinished = [package or "(its package)" for package in self.tests]
        for package, tests in self.tests.items():
            self.cases += [_go_case(package, test, tests, (ERROR, "its output ended while it ran"))
                           for test in tests.values()]
        problem = f"the output ended before {', '.join(unfinished)} finished" if unfinished else ""
        if not self.cases and not problem:
            problem = "its output has no go test result (go test -json or -v names each test)"
        return Parsed(self.cases, problem)


def _go_case(package: str, test: _GoTest, siblings: Dict[str, _GoTest], if_running: Tuple[str, str]) -> TestCase:
    """`if_running`: the outcome, and why, of a test that never ended."""
    text = textwrap.dedent("".join(line for line in test.output if not _GO_MARK.match(line)))
    outcome, unfinished = (test.outcome, "") if test.outcome else if_running
    message = ""
    if outcome == SKIPPED:
        message = first_line(text) or "skipped"
    elif outcome != PASSED:
        failed = next((n for n, t in siblings.items() if n.startswith(test.name + "/") and t.outcome == FAILED), None)
        message = first_line(text) or (f"subtest {failed} failed" if failed else "failed")
        if test.outcome is None:
            message = f"{unfinished}: {message}" if first_line(text) else unfinished
    return TestCase(test.name, package, outcome, test.elapsed, message, text if outcome != PASSED else "")


def go_test(output: str) -> Parsed:
    """`go test -json` (test2json's events; lines that are not JSON, such as a build's
    errors before Go 1.24, are read as text) or `go test -v` and plain `go test`."""
    run = _GoRun()
    for line in output.splitlines(keepends=True):
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


class _TapFile:
    """One TAP stream: its plan and its points (a subtest waits at its depth until its parent)."""

    def __init__(self, classname: str) -> None:
        self.classname, self.plan, self.ran = classname, -1, 0
        self.cases: List[TestCase] = []
        self.waiting: List[Tuple[int, TestCase]] = []  # subtests, before the point of their parent
        self.last: Optional[TestCase] = None  # the point the lines below belong to
        self.bailed = False

    def point(self, indent: int, failed: bool, number: Optional[str], description: str) -> None:
        directive = _TAP_DIRECTIVE.search(description)
        name = (description[:directive.start()] if directive else description).strip() or f"test {number or '?'}"
        case = TestCase(name, self.classname, FAILED if failed else PASSED)
        if directive and (directive.group(1).upper() == "SKIP" or failed):
            case.outcome = SKIPPED
            case.message = f"{directive.group(1).upper()}: {directive.group(2)}".rstrip(": ")
        children = [c for depth, c in self.waiting if depth > indent]
        self.waiting = [(depth, c) for depth, c in self.waiting if depth <= indent]
        for child in children:
            child.name = f"{name}/{child.name}"
        if indent == 0:
            self.ran += 1
            self.cases += [case, *children]
        else:
            self.waiting += [(indent, case), *((indent, c) for c in children)]
        self.last = case

    def line(self, text: str) -> None:
        if self.last is not None:
            self.last.text += text

    def finish(self) -> str:
        """What is wrong with the stream as a whole, if anything; fills in each case's time and message."""
        for case in self.cases:
            duration = re.search(r"^\s*duration_ms:\s*([\d.]+)", case.text, re.MULTILINE)
            case.time = float(duration.group(1)) / 1000 if duration else 0.0
            if case.outcome == FAILED:
                case.message = _tap_message(case.text) or "not ok"
            elif case.outcome != SKIPPED:
                case.text = ""
        if not self.bailed and 0 <= self.plan and self.ran < self.plan:
            return f"{self.classname}: planned {self.plan} tests, ran {self.ran}"
        return ""


def _tap_message(text: str) -> str:
    """A YAML block's `error:` (node --test), else the first diagnostic line (Test::More's `# Failed test`)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*error:\s*(.*)$", line)
        if m:
            value = m.group(1).strip()
            return first_line("\n".join(lines[i + 1:])) if value[:1] in ("|", ">") else value.strip("'\"")
    return first_line(re.sub(r"^\s*#", "", text, flags=re.MULTILINE))


def tap(output: str, classname: str) -> Parsed:
    """TAP versions 12 to 14 (and `prove -v`); `classname` names a stream that has no file name."""
    reader = TapReader(classname)
    for line in output.splitlines(keepends=True):
        reader.line(line)
    return reader.close()[1]


def parse(format_: str, output: str, classname: str) -> Parsed:
    """The cases in a suite's output (`format_` go-test or tap); `classname` for tests that name none."""
    if format_ == "go-test":
        return go_test(output)
    if format_ == "tap":
        return tap(output, classname)
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
        told = self.told.get((package, name)) if name else None
        if told is not None:
            self.events.append(Said(told, text))
        elif not name and not package:  # in no test and no package: not go test's
            self.events.append(Other(text))

    def end(self, package: str, name: str, action: str, elapsed: float) -> None:
        super().end(package, name, action, elapsed)
        tests = self.tests[package]
        self.told[(package, name)] = case = _go_case(package, tests[name], tests, (ERROR, ""))
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
            current.line(line)
            duration = _TAP_DURATION.match(line)
            if duration:
                current.last.time = float(duration.group(1)) / 1000
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
_TAP_DURATION = re.compile(r"^\s*duration_ms:\s*([\d.]+)")


def reader(format_: str, classname: str) -> Union[GoTestReader, TapReader]:
    """A reader of a suite's output as it comes (`format_` go-test or tap); `classname` for tests that name none."""
    if format_ == "go-test":
        return GoTestReader()
    if format_ == "tap":
        return TapReader(classname)
    raise ValueError(f"format {format_!r} is read from a file, not from the output")
