"""A test run's record: `vm/<name>/results/<run-id>/` with report.json, junit.xml and logs.

report.json says what ran where (run id, VM config, guest OS and kernel, vmlab
and QEMU versions) and, per suite, passed/failed/skipped, duration, exit code
and log. junit.xml merges every suite: the JUnit a suite wrote itself, or one
test case standing for the whole suite when it wrote none.

A run cut off before its end (SSH gone, the sync failed, Ctrl-C) still gets both:
the suite under way is an "error", the ones after it "not run", and the run is not
"passed": a report says passed only when every suite it was asked for ran and passed.
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
    status: str  # "passed", "failed", "timed out"; "error" (cut off while running) or "not run"
    exit_code: int  # -1 when it has none (cut off, not run)
    duration: float
    log: Optional[Path]
    junit: Optional[Path] = None  # the fetched JUnit file, if the suite wrote one
    counts: dict = field(default_factory=dict)  # tests, failures, errors, skipped (from JUnit, else 1 test)
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


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
    return {"tests": 1, "failures": int(result.status == "failed"),
            "errors": int(result.status in ("timed out", "error")), "skipped": int(result.status == "not run")}


def write(run_dir: Path, meta: Dict[str, Any], suites: List[SuiteResult], planned: Optional[List[str]] = None,
          cut_off: Optional[CutOff] = None) -> Dict[str, Any]:
    """Write report.json and the merged junit.xml (every planned suite in both); returns the report."""
    suites = list(suites)
    ran = {s.name for s in suites}
    for name in planned or []:
        if name in ran:
            continue
        if cut_off and name == cut_off.suite:
            suites.append(SuiteResult(name, "error", -1, 0.0, _log_of(run_dir, name), note=f"cut off: {cut_off.why}"))
        else:
            why = f"the run was cut off before it: {cut_off.why}" if cut_off else "not run"
            suites.append(SuiteResult(name, "not run", -1, 0.0, None, note=why))
    for s in suites:
        s.counts = s.counts or count(s)
    report = dict(meta, run_id=run_dir.name, passed=bool(suites) and not cut_off and all(s.passed for s in suites),
                  complete=cut_off is None, cut_off=cut_off.why if cut_off else None, suites=[
        {"name": s.name, "status": s.status, "passed": s.counts.get("tests", 0) - s.counts.get("failures", 0)
         - s.counts.get("errors", 0) - s.counts.get("skipped", 0), "failed": s.counts.get("failures", 0)
         + s.counts.get("errors", 0), "skipped": s.counts.get("skipped", 0), "duration_seconds":
         round(s.duration, 2), "exit_code": s.exit_code, "log": str(s.log) if s.log else None,
         "junit": str(s.junit) if s.junit else None, "note": s.note} for s in suites])
    _write_atomically(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    merged = ET.Element("testsuites", name=f"vmlab run {run_dir.name}")
    for s in suites:
        merged.extend(_testsuites(s))
    _write_atomically(run_dir / "junit.xml", ET.tostring(merged, encoding="unicode", xml_declaration=True))
    return report


def _log_of(run_dir: Path, suite: str) -> Optional[Path]:
    log = run_dir / f"{suite}.log"
    return log if log.exists() else None


def _write_atomically(path: Path, text: str) -> None:
    """A reader (CI's artifact upload, a later run) sees the old file or the new, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
    """One test case standing for the whole suite (it wrote no JUnit, or it did not finish)."""
    suite = ET.Element("testsuite", name=s.name, tests="1", time=f"{s.duration:.2f}",
                       failures=str(int(s.status == "failed")), errors=str(int(s.status in ("timed out", "error"))),
                       skipped=str(int(s.status == "not run")))
    case = ET.SubElement(suite, "testcase", classname="vmlab.suite", name=s.name, time=f"{s.duration:.2f}")
    if s.status == "not run":
        ET.SubElement(case, "skipped", message=s.note)
    elif s.status != "passed":
        tag = "failure" if s.status == "failed" else "error"
        message = s.note or f"exit code {s.exit_code}"
        ET.SubElement(case, tag, message=message).text = _tail(s.log) if s.log else ""
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
    verdict = "PASSED" if report["passed"] else ("FAILED" if report.get("complete", True) else "DID NOT FINISH")
    return [f"{verdict}: run {report['run_id']} on VM {report['vm']['name']}", *lines,
            f"  results: {report['results_dir']}"]
