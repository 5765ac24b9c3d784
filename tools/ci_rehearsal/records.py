"""What a rehearsal run leaves: a record per step and per job, the check that a shard uploaded
results that agree with its exit code, and the summary lines printed at the end."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from vmlab.runs.results import RunReport

PASSED, FAILED, UNFINISHED, INTERRUPTED = 0, 1, 2, 130


@dataclass
class StepRecord:
    name: str
    status: str  # success, failure, skipped, cancelled
    exit_code: Optional[int] = None
    seconds: float = 0.0


@dataclass
class JobRecord:
    """One job, or one shard of a matrix job: what ran, what it left, its verdict (`code`)."""

    job: str
    label: str
    matrix: Dict[str, Any]
    folder: str
    code: int = PASSED
    status: str = "success"  # success, failure, cancelled, skipped (the `needs` context's result)
    seconds: float = 0.0
    steps: List[StepRecord] = field(default_factory=list)
    outputs: Dict[str, Any] = field(default_factory=dict)
    caches: List[Dict[str, Any]] = field(default_factory=list)
    artifacts: List[str] = field(default_factory=list)
    built_golden: List[str] = field(default_factory=list)
    results: List[Dict[str, Any]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)



def job_result(records: List[JobRecord]) -> str:
    statuses = {r.status for r in records}
    for status in ("cancelled", "failure", "skipped"):
        if status in statuses:
            return status
    return "success"


def check_results(record: JobRecord, artifacts: Path) -> None:
    """A shard of the matrix must have uploaded vmlab's results, and they must agree with its exit code."""
    if record.status == "skipped" or record.code == UNFINISHED:
        return
    reports = [p for name in record.artifacts for p in sorted((artifacts / name).rglob("report.json"))]
    if not reports:
        record.problems.append("it uploaded no results (report.json and junit.xml)")
        record.code = max(record.code, FAILED)
        return
    for report_file in reports:
        junit = report_file.parent / "junit.xml"
        try:
            report = RunReport.read(report_file)
        except (OSError, ValueError, KeyError, TypeError) as e:
            record.problems.append(f"{report_file} is not a report vmlab wrote ({type(e).__name__}: {e})")
            record.code = max(record.code, FAILED)
            continue
        entry: Dict[str, Any] = {"report": str(report_file), "junit": str(junit) if junit.exists() else None,
                                 "passed": report.passed, "suites": [s.name for s in report.suites]}
        record.results.append(entry)
        if not junit.exists():
            record.problems.append(f"{report_file.parent} has report.json but no junit.xml")
            record.code = max(record.code, FAILED)
            continue
        try:
            entry["tests"] = sum(1 for _ in ET.parse(junit).getroot().iter("testcase"))
        except ET.ParseError as e:
            record.problems.append(f"{junit} is not XML: {e}")
            record.code = max(record.code, FAILED)
        if not entry["passed"]:
            record.code = max(record.code, FAILED)


def report_lines(summaries: List[Dict[str, Any]]) -> List[str]:
    lines = []
    for s in summaries:
        lines.append(f"rehearsal run {s['run']}: exit code {s['exit_code']} in {s['seconds']:.0f}s")
        for job in s["jobs"]:
            seen: Dict[str, List[str]] = {}
            for c in job["caches"]:
                seen.setdefault(c["key"], []).append("hit" if c.get("hit") else "saved" if c.get("saved") else "miss")
            caches = ", ".join(f"cache {key}: {' then '.join(how)}" for key, how in seen.items())
            made = f"; made golden image {', '.join(job['built_golden'])}" if job["built_golden"] else ""
            results = "; ".join(f"{Path(r['report']).parent.name}: {'passed' if r['passed'] else 'FAILED'}, "
                                f"{r.get('tests', '?')} tests in junit.xml" for r in job["results"])
            shard = str(next(iter(job["matrix"].values()), ""))  # its first matrix value: the suite
            lines.append(f"  {(job['label'] + ' ' + shard).strip():<24} {job['status']:<9} {job['seconds']:>5.0f}s  "
                         + "; ".join(x for x in (caches + made, results) if x))
            lines += [f"    problem: {p}" for p in job["problems"]]
        lines += [f"  problem: {p}" for p in s.get("problems", [])]
    return lines
