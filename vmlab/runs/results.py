"""A test run's record: `vm/<name>/results/<run-id>/` with report.json, junit.xml and logs.

report.json says what ran where (run id, VM config, guest OS and kernel, vmlab
and QEMU versions) and, per suite, tests, passed/failed/skipped, the failing
tests, duration, exit code, log and artifacts. junit.xml merges every suite: one
test case per test its runner reported (formats.py), and one standing for the
suite itself when those do not tell its whole story (it reported none, it was cut
off or timed out, it failed while every test passed, its output ended early).

A run cut off before its end (SSH gone, the sync failed, Ctrl-C) still gets both:
the suite under way is an "error" (suites.cut_off: with the tests it finished), the
ones after it "not run", and the run is not
"passed": a report says passed only when every suite it was asked for ran and passed.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

from vmlab import atomic
from vmlab.logtail import last_lines
from vmlab.runs.formats import ERROR, FAILED, PASSED, SKIPPED, TestCase


class Status(StrEnum):
    """How a suite ended, as report.json and the summary say it."""

    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    ERROR = "error"  # cut off while it ran (SSH gone, the sync failed, Ctrl-C)
    NOT_RUN = "not run"


@dataclass
class SuiteResult:
    name: str
    status: Status
    exit_code: int  # -1 when it has none (cut off, not run)
    duration: float
    log: Optional[Path]
    junit: Optional[Path] = None  # the fetched JUnit file, if the suite wrote one
    cases: List[TestCase] = field(default_factory=list)  # one per test its runner reported
    problem: str = ""  # why `cases` may not be all its tests (its output ended early, or held none)
    artifacts: List[str] = field(default_factory=list)  # files copied back, relative to the run's folder
    note: str = ""

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a word that is not a status fails here, not in a reader of the report

    @property
    def passed(self) -> bool:
        return self.status == Status.PASSED


SUITE_CLASS = "vmlab.suite"  # the classname of the case that stands for a whole suite
SHOWN_FAILING = 10  # failing tests named under a suite's summary line


@dataclass(frozen=True)
class Failing:
    """A failing test as report.json names it (the summary shows the first few)."""

    classname: str
    name: str
    message: str


@dataclass(frozen=True)
class SuiteEntry:
    """One suite in report.json: its counts agree with its cases in junit.xml."""

    name: str
    status: Status
    tests: int
    passed: int
    failed: int  # failures and errors
    skipped: int
    failing: List[Failing]
    duration_seconds: float
    exit_code: int
    log: Optional[str]
    junit: Optional[str]
    artifacts: List[str]
    note: str


@dataclass(frozen=True)
class RunReport:
    """report.json: what ran where, and how each suite did. Users and CI read the file, so
    `as_json` writes exactly the keys, in the order, it has always had; `guest`, `qemu` and
    `sync` are there only once known (a run cut off before it reached the guest has none)."""

    vm: Dict[str, Any]  # the VM's config as it ran
    vmlab: str
    started_at: str
    results_dir: str
    guest: Optional[Dict[str, str]] = None  # {"os", "kernel"}
    qemu: Optional[str] = None
    sync: Optional[str] = None  # what the sync before the first suite did (the loop's runs)
    run_id: str = ""
    passed: bool = False  # every suite it was asked for ran and passed
    complete: bool = True  # not cut off
    cut_off: Optional[str] = None  # why, if it was
    suites: List[SuiteEntry] = field(default_factory=list)

    @property
    def vm_name(self) -> str:
        return str(self.vm["name"])

    def as_json(self) -> Dict[str, Any]:
        known = {k: v for k, v in (("guest", self.guest), ("qemu", self.qemu), ("sync", self.sync)) if v is not None}
        return {"vm": self.vm, "vmlab": self.vmlab, "started_at": self.started_at, "results_dir": self.results_dir,
                **known, "run_id": self.run_id, "passed": self.passed, "complete": self.complete,
                "cut_off": self.cut_off, "suites": [_suite_json(s) for s in self.suites]}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "RunReport":
        """A report as report.json has it; KeyError, TypeError or ValueError if it is not one."""
        suites = [SuiteEntry(**dict(s, status=Status(s["status"]), failing=[Failing(**f) for f in s["failing"]]))
                  for s in data["suites"]]
        return cls(**dict(data, suites=suites))

    @classmethod
    def read(cls, path: Path) -> "RunReport":
        return cls.from_json(json.loads(path.read_text()))


def _suite_json(s: SuiteEntry) -> Dict[str, Any]:
    return {"name": s.name, "status": s.status, "tests": s.tests, "passed": s.passed, "failed": s.failed,
            "skipped": s.skipped, "failing": [{"classname": f.classname, "name": f.name, "message": f.message}
                                              for f in s.failing],
            "duration_seconds": s.duration_seconds, "exit_code": s.exit_code, "log": s.log, "junit": s.junit,
            "artifacts": s.artifacts, "note": s.note}


@dataclass(frozen=True)
class CutOff:
    """Why a run ended early, and the suite under way then (None: between suites)."""

    suite: Optional[str]
    why: str


def new_run(results_dir: Path) -> Path:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    folder = results_dir / run_id
    folder.mkdir(parents=True)
    return folder


def cases_of(s: SuiteResult) -> List[TestCase]:
    """The suite's cases as junit.xml has them: its runner's, and one for the suite itself
    when they do not explain its status (or there are none, or they may not be all)."""
    explained = s.status in (Status.PASSED, Status.FAILED) and not s.problem and (
        s.status == Status.PASSED or any(c.failing for c in s.cases))
    return list(s.cases) if s.cases and explained else [*s.cases, _suite_case(s)]


def _suite_case(s: SuiteResult) -> TestCase:
    outcome = {Status.PASSED: PASSED, Status.FAILED: FAILED, Status.NOT_RUN: SKIPPED}.get(s.status, ERROR)
    why = s.note or ("" if outcome == PASSED else f"exit code {s.exit_code}")
    return TestCase(s.name, SUITE_CLASS, outcome, s.duration, why,
                    _tail(s.log) if s.log and outcome in (FAILED, ERROR) else "")


def count(cases: List[TestCase]) -> Dict[str, int]:
    return {"tests": len(cases), **{k: sum(c.outcome == o for c in cases) for k, o in
                                    (("failures", FAILED), ("errors", ERROR), ("skipped", SKIPPED))}}


def write(run_dir: Path, run: RunReport, suites: List[SuiteResult], planned: Optional[List[str]] = None,
          cut_off: Optional[CutOff] = None) -> RunReport:
    """Write report.json and the merged junit.xml (every planned suite in both); returns the report:
    `run` (what was known of the run before its suites: the VM, versions, the guest) with its outcome."""
    suites = list(suites)
    ran = {s.name for s in suites}
    for name in planned or []:
        if name not in ran:
            why = f"the run was cut off before it: {cut_off.why}" if cut_off else "not run"
            suites.append(SuiteResult(name, Status.NOT_RUN, -1, 0.0, None, note=why))
    cases = {s.name: cases_of(s) for s in suites}
    report = replace(run, run_id=run_dir.name, passed=bool(suites) and not cut_off and all(s.passed for s in suites),
                     complete=cut_off is None, cut_off=cut_off.why if cut_off else None,
                     suites=[_entry(s, cases[s.name]) for s in suites])
    atomic.write_text(run_dir / "report.json", json.dumps(report.as_json(), indent=2) + "\n")
    merged = ET.Element("testsuites", name=f"vmlab run {run_dir.name}")
    for s in suites:
        merged.extend(_testsuites(s.name, cases[s.name]))
    atomic.write_text(run_dir / "junit.xml", ET.tostring(merged, encoding="unicode", xml_declaration=True))
    return report


def _entry(s: SuiteResult, cases: List[TestCase]) -> SuiteEntry:
    n = count(cases)
    return SuiteEntry(s.name, s.status, tests=n["tests"],
                      passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"],
                      failed=n["failures"] + n["errors"], skipped=n["skipped"],
                      failing=[Failing(c.classname, c.name, c.message) for c in cases if c.failing],
                      duration_seconds=round(s.duration, 2), exit_code=s.exit_code,
                      log=str(s.log) if s.log else None, junit=str(s.junit) if s.junit else None,
                      artifacts=s.artifacts, note=s.note)


def _testsuites(suite: str, cases: List[TestCase]) -> List[ET.Element]:
    """One <testsuite> per classname (a Go package, a Python module, the suite itself)."""
    groups: Dict[str, List[TestCase]] = {}
    for case in cases:
        groups.setdefault(case.classname, []).append(case)
    found = []
    for classname, group in groups.items():
        n = count(group)
        element = ET.Element("testsuite", name=_xml(f"{suite}: {classname}" if classname not in ("", SUITE_CLASS)
                                                    else suite),
                             tests=str(n["tests"]), failures=str(n["failures"]), errors=str(n["errors"]),
                             skipped=str(n["skipped"]), time=f"{sum(c.time for c in group):.3f}")
        element.extend(_testcase(case) for case in group)
        found.append(element)
    return found


def _testcase(case: TestCase) -> ET.Element:
    element = ET.Element("testcase", classname=_xml(case.classname), name=_xml(case.name), time=f"{case.time:.3f}")
    if case.outcome == PASSED:
        if case.message:
            ET.SubElement(element, "system-out").text = _xml(case.message)
    else:
        tag = {FAILED: "failure", ERROR: "error", SKIPPED: "skipped"}[case.outcome]
        ET.SubElement(element, tag, message=_xml(case.message)).text = _xml(case.text)
    return element


_NOT_XML = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """Text as XML 1.0 can hold it: a test's output may have escape sequences (colours) or NULs."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return last_lines(log, lines)
    except OSError:
        return ""


def summary(report: RunReport) -> List[str]:
    lines = []
    for s in report.suites:
        extra = f" ({s.note})" if s.note else ""
        lines.append(f"  {s.status:<9} {s.name:<20} {s.passed} passed, {s.failed} failed, "
                     f"{s.skipped} skipped, {s.duration_seconds:.1f}s, exit {s.exit_code}{extra}")
        failing = [f for f in s.failing if f.classname != SUITE_CLASS]
        lines += [f"      FAIL {f.name} ({f.classname}): {f.message.splitlines()[0] if f.message else ''}"
                  .rstrip(": ") for f in failing[:SHOWN_FAILING]]
        if len(failing) > SHOWN_FAILING:
            lines.append(f"      ... and {len(failing) - SHOWN_FAILING} more failing tests (see junit.xml)")
    verdict = "PASSED" if report.passed else ("FAILED" if report.complete else "DID NOT FINISH")
    return [f"{verdict}: run {report.run_id} on VM {report.vm_name}", *lines, f"  results: {report.results_dir}"]
