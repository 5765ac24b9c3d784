"""The whole workflow, run after run, on this machine: jobs in the order `needs:` gives, every
shard of a matrix at once, Ctrl-C passed on to every step; and scripts/rehearse-ci's command line.
tools/ci_rehearsal/__init__.py says what is stood in for."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from ci_rehearsal import expressions
from ci_rehearsal.job import Job
from ci_rehearsal.records import (
    FAILED,
    INTERRUPTED,
    PASSED,
    UNFINISHED,
    JobRecord,
    check_results,
    job_result,
    report_lines,
)
from ci_rehearsal.standins import kill_qemus, signal_group
from vmlab import host
from vmlab.errors import ConfigError, VmlabError

WORKFLOW = Path(".github") / "workflows" / "vm-tests.yml"
TOOLS = Path(__file__).resolve().parents[1]  # tools/: where ci_rehearsal is found (vmlab's wheel lacks it)
DEFAULT_WORK = Path(tempfile.gettempdir()) / f"vmlab-ci-rehearsal-{os.getuid()}"


class Rehearsal:
    """Runs one workflow file against one repository, run after run, sharing the cache store."""

    def __init__(self, workflow: Path, repo: Path, work: Path, env: Dict[str, str],
                 echo: Callable[[str], None] = print):
        # Every step runs with WORK/bin first on PATH, as root here: a folder someone else can
        # write to would let them plant the `bash` a step runs. Checked before it is resolved
        # (a link there is refused, not followed).
        work.absolute().parent.mkdir(parents=True, exist_ok=True)
        host.private_folder(work.absolute(), "the CI rehearsal's work (its steps run programs from WORK/bin)",
                            "name another folder with --work")
        self.workflow_path, self.repo, self.work = workflow.resolve(), repo.resolve(), work.resolve()
        try:
            self.workflow = yaml.safe_load(workflow.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{workflow}: cannot read it as a workflow: {e}") from None
        if not isinstance(self.workflow, dict) or not isinstance(self.workflow.get("jobs"), dict):
            raise ConfigError(f"{workflow}: no `jobs:` mapping")
        for name in env:
            if name not in (self.workflow.get("env") or {}):
                raise ConfigError(f"{workflow}: its `env:` has no {name}, so the rehearsal cannot switch it")
        self.env_override = env
        self.echo = echo
        self.cancel = threading.Event()
        self.interrupts = 0
        self.lock = threading.Lock()
        self.procs: Dict[int, subprocess.Popen[str]] = {}
        self.cache_store = self.work / "actions-cache"
        self.bin = self.work / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        shim = self.bin / "sudo"
        shim.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(TOOLS)!r})\n"
                        "from ci_rehearsal.standins import as_sudo\nas_sudo(sys.argv[1:])\n")
        shim.chmod(0o755)

    # --- the run ---

    def run(self, number: int) -> Dict[str, Any]:
        """One run of the whole workflow; returns its record (also in WORK/rN/summary.json)."""
        folder = self.work / f"r{number}"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "artifacts").mkdir(parents=True)
        started = time.monotonic()
        records: Dict[str, List[JobRecord]] = {}
        for level in self._levels():
            with ThreadPoolExecutor(max_workers=max(1, len(level))) as pool:
                for job_id, shards in zip(level, pool.map(lambda j: self._run_job(j, folder, records), level)):
                    records[job_id] = shards
        jobs = [r for shards in records.values() for r in shards]
        code = INTERRUPTED if self.cancel.is_set() else max((j.code for j in jobs), default=PASSED)
        summary = {"run": number, "seconds": round(time.monotonic() - started, 1), "exit_code": code,
                   "jobs": [asdict(j) for j in jobs]}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for job in jobs:  # the big files: a runner's disk is gone after its job; logs and artifacts stay
            for name in ("ws", "c"):
                shutil.rmtree(Path(job.folder) / name, ignore_errors=True)
        return summary

    def _levels(self) -> List[List[str]]:
        """The jobs in the order `needs:` allows, those that may run together in one level."""
        jobs = self.workflow["jobs"]
        needs = {j: _needs(spec) for j, spec in jobs.items()}
        for job, wanted in needs.items():
            unknown = [w for w in wanted if w not in jobs]
            if unknown:
                raise ConfigError(f"{self.workflow_path}: job {job} needs {unknown[0]}, which is not a job")
        done: List[str] = []
        levels = []
        while len(done) < len(jobs):
            level = [j for j in jobs if j not in done and all(n in done for n in needs[j])]
            if not level:
                raise ConfigError(f"{self.workflow_path}: its jobs' `needs:` make a cycle")
            levels.append(level)
            done += level
        return levels

    def _run_job(self, job_id: str, run_dir: Path, done: Dict[str, List[JobRecord]]) -> List[JobRecord]:
        spec = self.workflow["jobs"][job_id]
        needs = {n: {"result": job_result(done[n]), "outputs": {k: v for r in done[n] for k, v in r.outputs.items()}}
                 for n in _needs(spec)}
        statuses = [n["result"] for n in needs.values()]
        functions = {"success": lambda: all(s == "success" for s in statuses) and not self.cancel.is_set(),
                     "failure": lambda: any(s == "failure" for s in statuses), "always": lambda: True,
                     "cancelled": self.cancel.is_set}
        contexts = {"needs": needs, "github": self.github_context(job_id), "vars": {}, "secrets": {}, "inputs": {},
                    "env": self.workflow_env()}
        where = f"{self.workflow_path}: jobs.{job_id}"
        if not expressions.condition(spec.get("if"), contexts, functions):
            why = "its if: is false" if functions["success"]() else "a job it needs did not succeed"
            record = JobRecord(job_id, job_id, {}, str(run_dir / job_id), code=UNFINISHED, status="skipped",
                               problems=[f"skipped: {why}"])
            self.echo(f"[{job_id}] skipped ({why})")
            return [record]
        strategy = spec.get("strategy") or {}
        matrix = expressions.field(strategy.get("matrix"), contexts, functions) if "matrix" in strategy else None
        shards = expressions.expand_matrix(matrix, where) if matrix is not None else [{}]
        fail_fast = bool(expressions.field(strategy.get("fail-fast", True), contexts, functions))
        parallel = int(strategy.get("max-parallel") or len(shards))
        group = threading.Event()  # fail-fast: a failed shard cancels the others
        runners = [Job(self, job_id, spec, shard, index, len(shards), run_dir, needs, group if fail_fast else None)
                   for index, shard in enumerate(shards)]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            records = list(pool.map(lambda r: r.run(), runners))
        if matrix is not None:
            for record in records:
                check_results(record, run_dir / "artifacts")
        return records

    def github_context(self, job_id: str) -> Dict[str, Any]:
        return {"job": job_id, "event_name": "push", "repository": f"rehearsal/{self.repo.name}",
                "ref": "refs/heads/main", "workflow": self.workflow.get("name", self.workflow_path.name),
                "run_number": 1, "actor": "rehearsal"}

    def workflow_env(self) -> Dict[str, str]:
        return {k: expressions.to_text(v) for k, v in (self.workflow.get("env") or {}).items()}

    # --- processes, so that Ctrl-C reaches them and nothing is left ---

    def started(self, proc: subprocess.Popen[str]) -> None:
        with self.lock:
            self.procs[proc.pid] = proc

    def ended(self, proc: subprocess.Popen[str]) -> None:
        with self.lock:
            self.procs.pop(proc.pid, None)

    def interrupt(self, *_: Any) -> None:
        """Ctrl-C or SIGTERM: SIGTERM to every running step (vmlab stops its VMs on it), and only
        `always()` steps still run; a second one kills the steps and every QEMU of the rehearsal."""
        self.cancel.set()
        self.interrupts += 1
        self.signal_steps(signal.SIGTERM if self.interrupts == 1 else signal.SIGKILL)
        if self.interrupts > 1:
            kill_qemus(self.work)

    def signal_steps(self, signum: int, within: Optional[Path] = None) -> None:
        """Send `signum` to every running step (its process group), or only those of the job folder `within`."""
        with self.lock:
            for proc in self.procs.values():
                argv = proc.args if isinstance(proc.args, list) else []  # a step's: its script is in its job's folder
                if within is None or str(within) in " ".join(map(str, argv)):
                    signal_group(proc, signum)


def _needs(spec: Dict[str, Any]) -> List[str]:
    return [spec["needs"]] if isinstance(spec.get("needs"), str) else list(spec.get("needs") or [])



def rehearse(workflow: Path, repo: Path, work: Path, vm: str, runs: int,
             echo: Callable[[str], None] = print) -> int:
    """Run the workflow `runs` times; every run after the first must build no golden image."""
    rehearsal = Rehearsal(workflow, repo, work, {"VM": vm}, echo)
    previous = {s: signal.signal(s, rehearsal.interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    summaries: List[Dict[str, Any]] = []
    try:
        for number in range(1, runs + 1):
            echo(f"rehearsal: run {number} of {workflow} with VM={vm} in {work}")
            summary = rehearsal.run(number)
            if number > 1:
                rebuilt = [f"{j['label']}: {key}" for j in summary["jobs"] for key in j["built_golden"]]
                if rebuilt:
                    summary["problems"] = [f"run {number} made a golden image again (the cache missed): "
                                           + ", ".join(rebuilt)]
                    summary["exit_code"] = max(summary["exit_code"], FAILED)
            summaries.append(summary)
            if summary["exit_code"] == INTERRUPTED:
                break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        kill_qemus(work.resolve())
    (work / "rehearsal.json").write_text(json.dumps({"vm": vm, "runs": summaries}, indent=2) + "\n")
    for line in report_lines(summaries):
        echo(line)
    return max(int(s["exit_code"]) for s in summaries)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/rehearse-ci", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository to check out (default: .)")
    parser.add_argument("--workflow", type=Path, help=f"the workflow file (default: REPO/{WORKFLOW})")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"folder for the runs and the cache store, made 0700; one that another user owns or "
                             f"can read or write is refused (default: {DEFAULT_WORK})")
    parser.add_argument("--vm", default="default", help="the workflow's VM, switched to one built offline "
                                                        "(default: default, the Debian guest)")
    parser.add_argument("--runs", type=int, default=2, help="runs in a row (default 2: the second must hit the "
                                                            "golden image's cache)")
    args = parser.parse_args(argv)
    try:
        return rehearse(args.workflow or args.repo / WORKFLOW, args.repo, args.work, args.vm, args.runs)
    except VmlabError as e:  # a workflow it cannot run, an unsafe work folder: it did not start
        print(f"rehearse-ci: error: {e}", file=sys.stderr)
        return UNFINISHED


if __name__ == "__main__":
    sys.exit(main())
