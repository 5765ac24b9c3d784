"""A test run's record: `vm/<name>/results/<run-id>/` with report.json, junit.xml and logs.

report.json says what ran where (run id, VM config, guest OS and kernel, vmlab
and QEMU versions) and, per suite, passed/failed/skipped, duration, exit code
and log. junit.xml merges every suite: the JUnit a suite wrote itself, or one
test case standing for the whole suite when it wrote none.
"""

from __future__ import annotations

import json
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional



@dataclass
class SuiteResult:
    name: str
    status: str  # "passed", "failed" or "timed out"
    exit_code: int
    duration: float
    log: Path
    junit: Optional[Path] = None  # the fetched JUnit file, if the suite wrote one
    counts: dict = field(default_factory=dict)  # tests, failures, errors, skipped (from JUnit, else 1 test)
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def new_run(results_dir: Path) -> Path:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    folder = results_dir / run_id
    folder.mkdir(parents=True)
    return folder


def count(result: SuiteResult) -> Dict[str, int]:
    """tests, failures, errors, skipped: from the suite's JUnit, else the suite as one test."""
    if result.junit is not None:
        try:
            root = ET.parse(result.junit).getroot()
            cases = list(root.iter("testcase"))
            return {"tests": len(cases),
                    "failures": sum(1 for c in cases if c.find("failure") is not None),
                    "errors": sum(1 for c in cases if c.find("error") is not None),
                    "skipped": sum(1 for c in cases if c.find("skipped") is not None)}
        except ET.ParseError as e:
            result.note = f"its JUnit file is not valid XML ({e})"
    return {"tests": 1, "failures": int(result.status == "failed"), "errors": int(result.status == "timed out"),
            "skipped": 0}


def write(run_dir: Path, meta: Dict[str, Any], suites: List[SuiteResult]) -> Dict[str, Any]:
    """Write report.json and the merged junit.xml; returns the report."""
    report = dict(meta, run_id=run_dir.name, passed=all(s.passed for s in suites), suites=[
        {"name": s.name, "status": s.status, "passed": s.counts.get("tests", 0) - s.counts.get("failures", 0)
         - s.counts.get("errors", 0) - s.counts.get("skipped", 0), "failed": s.counts.get("failures", 0)
         + s.counts.get("errors", 0), "skipped": s.counts.get("skipped", 0), "duration_seconds":
         round(s.duration, 2), "exit_code": s.exit_code, "log": str(s.log),
         "junit": str(s.junit) if s.junit else None, "note": s.note} for s in suites])
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    merged = ET.Element("testsuites", name=f"vmlab run {run_dir.name}")
    for s in suites:
        merged.extend(_testsuites(s))
    ET.ElementTree(merged).write(run_dir / "junit.xml", encoding="utf-8", xml_declaration=True)
    return report


def _testsuites(s: SuiteResult) -> List[ET.Element]:
    if s.junit is not None and not s.note.startswith("its JUnit file is not valid"):
        root = ET.parse(s.junit).getroot()
        found = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in found:
            suite.set("name", f"{s.name}: {suite.get('name', '')}".rstrip(": "))
        if s.status == "timed out":  # it may have written part of its report: say it did not finish
            found.append(_one_case(s))
        return found
    return [_one_case(s)]


def _one_case(s: SuiteResult) -> ET.Element:
    suite = ET.Element("testsuite", name=s.name, tests="1", time=f"{s.duration:.2f}",
                       failures=str(int(s.status == "failed")), errors=str(int(s.status == "timed out")))
    case = ET.SubElement(suite, "testcase", classname="vmlab.suite", name=s.name, time=f"{s.duration:.2f}")
    if s.status != "passed":
        tag = "error" if s.status == "timed out" else "failure"
        message = s.note or f"exit code {s.exit_code}"
        ET.SubElement(case, tag, message=message).text = _tail(s.log)
    return suite


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def summary(report: Dict[str, Any]) -> List[str]:
    lines = []
    for s in report["suites"]:
        extra = f" ({s['note']})" if s["note"] else ""
        lines.append(f"  {s['status']:<9} {s['name']:<20} {s['passed']} passed, {s['failed']} failed, "
                     f"{s['skipped']} skipped, {s['duration_seconds']:.1f}s, exit {s['exit_code']}{extra}")
    verdict = "PASSED" if report["passed"] else "FAILED"
    return [f"{verdict}: run {report['run_id']} on VM {report['vm']['name']}", *lines,
            f"  results: {report['results_dir']}"]
