"""The CI rehearsal: a GitHub workflow's jobs run on this machine, from the workflow file itself.

The CI example (.github/workflows/vm-tests.yml) is what users copy, so it must work on
its first push. This reads it and runs its jobs as GitHub would: in the order `needs:`
gives, every shard of a matrix at once, each job's `run:` steps in order with the
workflow's own `env` and its expressions (actions.py), `if:` conditions, step and
job outputs through `$GITHUB_OUTPUT`. What only GitHub has is stood in for, and only that:

    a runner          a folder per job: ws/ (the workspace), c/ (its VMLAB_CACHE), tmp/, logs/;
                      the host's images built from packages are linked into c/ (a runner
                      would build them in its first minutes)
    actions/checkout  a git checkout of the repository's working tree (tracked and
                      untracked files, not what git ignores)
    actions/cache     a folder of entries by key, kept between rehearsals (WORK/actions-cache/)
    upload-artifact,  a folder per run (WORK/rN/artifacts/NAME/); a name uploaded twice
    download-artifact is an error, as on GitHub
    sudo              a stand-in (this host runs as root) that resets the environment as
                      sudo's env_reset does, keeping --preserve-env's names

The VM is switched through the workflow's own `VM` variable to one built offline. Each
shard of a matrix must upload vmlab's results (report.json, junit.xml); a run after the
first must build no golden image (the cache hit). Exit code: the worst of the shards,
0 passed, 1 failed, 2 did not finish (a job failed before its results, or was skipped);
130 on Ctrl-C, after the `if: always()` steps ran and no QEMU of the rehearsal is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

import yaml

from vmlab import actions, config
from vmlab.errors import ConfigError

WORKFLOW = Path(".github") / "workflows" / "vm-tests.yml"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "vmlab-ci-rehearsal"
SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]  # GitHub's `shell: bash`
SUDO_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sudo's secure_path
NOT_PASSED_ON = ("VM", "VMLAB_CACHE", "VMLAB_CONFIG", "XDG_CACHE_HOME", "VIRTUAL_ENV", "PYTHONPATH", "CI")
RESULT_FILES = ("report.json", "junit.xml")
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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _put(src: Path, dst: Path, link: bool) -> None:
    """Copy a file or folder; `link`: hard links where the file system allows (files never written again)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True,
                        copy_function=_link_or_copy if link else shutil.copy2)
    else:
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        (_link_or_copy if link else shutil.copy2)(str(src), str(dst))


def checkout(repo: Path, ws: Path) -> None:
    """actions/checkout: the working tree as git sees it (tracked and untracked files, not what it
    ignores), committed in a new repository, so that git answers in the workspace as in a checkout."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=False)
    if listed.returncode != 0:
        raise ConfigError(f"{repo}: not a git checkout, so it cannot stand in for actions/checkout: "
                          f"{listed.stderr.decode(errors='replace').strip()}")
    names = sorted({n for n in listed.stdout.decode().split("\0") if n and os.path.lexists(repo / n)})
    for name in names:
        _put(repo / name, ws / name, link=False)
    git = ["git", "-C", str(ws), "-c", "user.name=vmlab rehearsal", "-c", "user.email=rehearsal@localhost",
           "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-f", "--pathspec-from-file=-", "--pathspec-file-nul"], check=True,
                   input="\0".join(names).encode())
    subprocess.run([*git, "commit", "-q", "--no-verify", "-m", "the rehearsal's checkout"], check=True)


def as_sudo(argv: Sequence[str]) -> NoReturn:
    """`sudo` in a rehearsal step: this host runs as root already, so only the environment
    changes, as sudo's env_reset does it: TERM, LANG, LC_* and --preserve-env's names pass."""
    keep, everything, at = set(), False, 0
    while at < len(argv) and argv[at].startswith("-"):
        option = argv[at]
        at += 1
        if option == "--":
            break
        if option.startswith("--preserve-env="):
            keep.update(option.split("=", 1)[1].split(","))
        elif option in ("-E", "--preserve-env"):
            everything = True
        elif option not in ("-n", "--non-interactive", "-H", "--set-home"):
            sys.exit(f"sudo (the CI rehearsal's stand-in): option {option} is not supported")
    if at == len(argv):
        sys.exit("usage: sudo [--preserve-env=NAME,...] COMMAND")
    env = dict(os.environ) if everything else {
        k: v for k, v in os.environ.items() if k in keep or k in ("TERM", "LANG") or k.startswith("LC_")}
    if not everything:
        env["PATH"] = SUDO_PATH
    env.update(HOME="/root", USER="root", LOGNAME="root", SHELL="/bin/bash", SUDO_USER="root", SUDO_UID="0",
               SUDO_GID="0", SUDO_COMMAND=" ".join(argv[at:]))
    try:
        os.execvpe(argv[at], list(argv[at:]), env)
    except OSError as e:
        sys.exit(f"sudo: {argv[at]}: {e.strerror}")


def built_goldens(vmlab_cache: Path) -> List[str]:
    """The golden images made in this cache, not imported: a cache hit makes none."""
    made = []
    for manifest in sorted(vmlab_cache.glob("golden/*/manifest.json")):
        if "imported_from" not in json.loads(manifest.read_text()):
            made.append(manifest.parent.name)
    return made


def kill_qemus(folder: Path) -> List[int]:
    """Kill every QEMU whose command line names `folder` (its disk or sockets are there)."""
    killed = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(folder) in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed.append(int(pid_dir.name))
            except ProcessLookupError:
                pass
    return killed


class Rehearsal:
    """Runs one workflow file against one repository, run after run, sharing the cache store."""

    def __init__(self, workflow: Path, repo: Path, work: Path, env: Dict[str, str],
                 echo: Callable[[str], None] = print):
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
        self.procs: Dict[int, subprocess.Popen] = {}
        self.cache_store = self.work / "actions-cache"
        self.bin = self.work / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        shim = self.bin / "sudo"
        shim.write_text(f"#!{sys.executable}\nimport sys\nfrom vmlab.ci_rehearsal import as_sudo\n"
                        "as_sudo(sys.argv[1:])\n")
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
        needs = {n: {"result": _result(done[n]), "outputs": {k: v for r in done[n] for k, v in r.outputs.items()}}
                 for n in _needs(spec)}
        statuses = [n["result"] for n in needs.values()]
        functions = {"success": lambda: all(s == "success" for s in statuses) and not self.cancel.is_set(),
                     "failure": lambda: any(s == "failure" for s in statuses), "always": lambda: True,
                     "cancelled": self.cancel.is_set}
        contexts = {"needs": needs, "github": self._github(job_id), "vars": {}, "secrets": {}, "inputs": {},
                    "env": self._workflow_env()}
        where = f"{self.workflow_path}: jobs.{job_id}"
        if not actions.condition(spec.get("if"), contexts, functions):
            why = "its if: is false" if functions["success"]() else "a job it needs did not succeed"
            record = JobRecord(job_id, job_id, {}, str(run_dir / job_id), code=UNFINISHED, status="skipped",
                               problems=[f"skipped: {why}"])
            self.echo(f"[{job_id}] skipped ({why})")
            return [record]
        strategy = spec.get("strategy") or {}
        matrix = actions.field(strategy.get("matrix"), contexts, functions) if "matrix" in strategy else None
        shards = actions.expand_matrix(matrix, where) if matrix is not None else [{}]
        fail_fast = bool(actions.field(strategy.get("fail-fast", True), contexts, functions))
        parallel = int(strategy.get("max-parallel") or len(shards))
        group = threading.Event()  # fail-fast: a failed shard cancels the others
        runners = [_Job(self, job_id, spec, shard, index, len(shards), run_dir, needs, group if fail_fast else None)
                   for index, shard in enumerate(shards)]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            records = list(pool.map(lambda r: r.run(), runners))
        if matrix is not None:
            for record in records:
                check_results(record, run_dir / "artifacts")
        return records

    def _github(self, job_id: str) -> Dict[str, Any]:
        return {"job": job_id, "event_name": "push", "repository": f"rehearsal/{self.repo.name}",
                "ref": "refs/heads/main", "workflow": self.workflow.get("name", self.workflow_path.name),
                "run_number": 1, "actor": "rehearsal"}

    def _workflow_env(self) -> Dict[str, str]:
        return {k: actions.to_text(v) for k, v in (self.workflow.get("env") or {}).items()}

    # --- processes, so that Ctrl-C reaches them and nothing is left ---

    def started(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs[proc.pid] = proc

    def ended(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.pop(proc.pid, None)

    def interrupt(self, *_: Any) -> None:
        """Ctrl-C or SIGTERM: SIGTERM to every running step (vmlab stops its VMs on it), and only
        `always()` steps still run; a second one kills the steps and every QEMU of the rehearsal."""
        self.cancel.set()
        self.interrupts += 1
        with self.lock:
            for proc in self.procs.values():
                _signal_group(proc, signal.SIGTERM if self.interrupts == 1 else signal.SIGKILL)
        if self.interrupts > 1:
            kill_qemus(self.work)


def _needs(spec: Dict[str, Any]) -> List[str]:
    return [spec["needs"]] if isinstance(spec.get("needs"), str) else list(spec.get("needs") or [])


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _result(records: List[JobRecord]) -> str:
    statuses = {r.status for r in records}
    for status in ("cancelled", "failure", "skipped"):
        if status in statuses:
            return status
    return "success"


class _Job:
    """One runner: a job, or one shard of a matrix, run step by step in its own folder."""

    def __init__(self, rehearsal: Rehearsal, job_id: str, spec: Dict[str, Any], shard: Dict[str, Any], index: int,
                 total: int, run_dir: Path, needs: Dict[str, Any], fail_fast: Optional[threading.Event]):
        self.r, self.spec, self.fail_fast = rehearsal, spec, fail_fast
        label = f"{job_id}-{index}" if "strategy" in spec and "matrix" in spec["strategy"] else job_id
        self.folder = run_dir / label
        self.ws, self.tmp, self.logs, self.cache = (self.folder / n for n in ("ws", "tmp", "logs", "c"))
        self.artifacts = run_dir / "artifacts"
        self.record = JobRecord(job_id, label, shard, str(self.folder))
        self.steps: Dict[str, Dict[str, Any]] = {}
        self.failed = False
        self.post: List[Callable[[], None]] = []
        self.contexts: Dict[str, Any] = {
            "matrix": shard, "needs": needs, "strategy": {"job-index": index, "job-total": total,
                                                          "fail-fast": fail_fast is not None},
            "github": dict(rehearsal._github(job_id), workspace=str(self.ws)), "steps": self.steps,
            "runner": {"os": "Linux", "arch": "X64", "name": label, "temp": str(self.tmp)},
            "job": {"status": "success"}, "vars": {}, "secrets": {}, "inputs": {}, "env": {}}
        self.functions: Dict[str, Callable[..., Any]] = {
            "success": lambda: not self.failed and not self._cancelled(), "failure": lambda: self.failed,
            "always": lambda: True, "cancelled": self._cancelled,
            "hashfiles": lambda *patterns: actions.hash_files(self.ws, *patterns)}

    def _cancelled(self) -> bool:
        return self.r.cancel.is_set() or bool(self.fail_fast and self.fail_fast.is_set())

    def say(self, text: str) -> None:
        self.r.echo(f"[{self.record.label}] {text}")

    def run(self) -> JobRecord:
        started = time.monotonic()
        for folder in (self.ws, self.tmp, self.logs):
            folder.mkdir(parents=True)
        timeout = float(self._field(self.spec.get("timeout-minutes", 360))) * 60
        timer = threading.Timer(timeout, self._time_out)
        timer.daemon = True
        timer.start()
        try:
            self._seed_cache()
            self.contexts["env"] = env = dict(self.r._workflow_env(), **self.r.env_override,
                                              VMLAB_CACHE=str(self.cache))
            env.update({k: actions.to_text(self._field(v)) for k, v in (self.spec.get("env") or {}).items()})
            for number, step in enumerate(self.spec.get("steps") or [], 1):
                self._step(number, step, env)
            if not self.failed and not self._cancelled():
                for save in self.post:
                    save()
            self.record.outputs = {k: self._field(v) for k, v in (self.spec.get("outputs") or {}).items()}
        except ConfigError as e:  # the job's own settings ask for what the rehearsal cannot do
            self.failed = True
            self.record.problems.append(str(e))
            self.record.code = UNFINISHED
            self.say(f"cannot go on: {e}")
        finally:
            timer.cancel()
            left = kill_qemus(self.folder)
            if left:
                self.record.problems.append(f"QEMU left running after the job (killed): pids {left}")
            self.record.built_golden = built_goldens(self.cache)
            self.record.seconds = round(time.monotonic() - started, 1)
        self._verdict()
        return self.record

    def _verdict(self) -> None:
        rec = self.record
        rec.status = "cancelled" if self._cancelled() else "failure" if self.failed else "success"
        if self.failed and self.fail_fast:
            self.fail_fast.set()
        if rec.code == PASSED and rec.status != "success":
            failed = [s for s in rec.steps if s.status in ("failure", "cancelled")]
            rec.code = FAILED if failed and failed[0].exit_code == 1 else UNFINISHED
        self.say(f"{rec.status} in {rec.seconds:.0f}s (exit code {rec.code})")

    def _time_out(self) -> None:
        self.record.problems.append(f"the job ran past timeout-minutes: {self.spec.get('timeout-minutes', 360)}")
        self.failed = True
        with self.r.lock:
            for proc in self.r.procs.values():
                if proc.args and str(self.folder) in " ".join(map(str, proc.args)):
                    _signal_group(proc, signal.SIGTERM)

    def _seed_cache(self) -> None:
        """A runner builds the images it needs from packages in its first minutes; here the host's
        own builds (images and install media, by key) are linked in instead. Golden images never are."""
        host_cache = config.default_cache_dir()
        for entry in sorted(host_cache.glob("*-*/*/manifest.json")):
            kind = entry.parent.parent.name
            if kind.endswith(("-image", "-medium")):
                (self.cache / kind).mkdir(parents=True, exist_ok=True)
                os.symlink(entry.parent, self.cache / kind / entry.parent.name)

    def _field(self, value: Any) -> Any:
        return actions.field(value, self.contexts, self.functions)

    # --- steps ---

    def _step(self, number: int, step: Dict[str, Any], job_env: Dict[str, str]) -> None:
        name = step.get("name") or (f"Run {step['run'].splitlines()[0]}" if "run" in step else step.get("uses", "?"))
        env = dict(job_env, **{k: actions.to_text(self._field(v)) for k, v in (step.get("env") or {}).items()})
        self.contexts["env"] = env
        self.contexts["job"]["status"] = "cancelled" if self._cancelled() else "failure" if self.failed else "success"
        record = StepRecord(name=str(self._field(name)), status="skipped")
        self.record.steps.append(record)
        if not actions.condition(step.get("if"), self.contexts, self.functions):
            self.say(f"skipped: {record.name}")
            return
        self.say(f"step {number}: {record.name}")
        started = time.monotonic()
        outputs: Dict[str, Any] = {}
        try:
            if "run" in step:
                record.exit_code = self._run(number, step, env, outputs)
                job_env.update(outputs.pop("\0env", {}))
            elif "uses" in step:
                record.exit_code = self._uses(str(step["uses"]), self._field(step.get("with") or {}), outputs)
            else:
                raise ConfigError(f"{self.r.workflow_path}: a step of job {self.record.job} has neither run: nor uses:")
        except ConfigError as e:  # what the rehearsal cannot do fails the step; always() steps still run
            self.record.problems.append(str(e))
            self.say(f"cannot run this step: {e}")
            record.exit_code = UNFINISHED
        finally:
            record.seconds = round(time.monotonic() - started, 1)
        ok = record.exit_code == 0
        record.status = "success" if ok else "cancelled" if self._cancelled() else "failure"
        if not ok and not step.get("continue-on-error"):
            self.failed = True
        if step.get("id"):
            self.steps[step["id"]] = {"outputs": outputs, "outcome": record.status, "conclusion": record.status}

    def _run(self, number: int, step: Dict[str, Any], env: Dict[str, str], outputs: Dict[str, Any]) -> int:
        shell = step.get("shell", (self.spec.get("defaults") or {}).get("run", {}).get("shell", "bash"))
        if shell not in ("bash", "sh"):
            raise ConfigError(f"{self.r.workflow_path}: shell {shell!r} of job {self.record.job}: the rehearsal runs "
                              "bash and sh only")
        script = self.tmp / f"step-{number}.sh"
        script.write_text(self._field(step["run"]))
        output_file, env_file = self.tmp / f"output-{number}", self.tmp / f"env-{number}"
        output_file.touch()
        env_file.touch()
        full_env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED_ON}
        full_env.update(env, CI="true", GITHUB_ACTIONS="true", GITHUB_WORKSPACE=str(self.ws), RUNNER_TEMP=str(self.tmp),
                        GITHUB_OUTPUT=str(output_file), GITHUB_ENV=str(env_file), GITHUB_JOB=self.record.job,
                        PATH=f"{self.r.bin}:{os.environ.get('PATH', SUDO_PATH)}")
        argv = [*(SHELL if shell == "bash" else ["sh", "-e"]), str(script)]
        cwd = self.ws / self._field(step.get("working-directory", "."))
        with open(self.logs / f"{number:02d}.log", "w") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")
            self.r.started(proc)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    self.say(line.rstrip("\n"))
                code = proc.wait()
            finally:
                self.r.ended(proc)
        outputs.update(actions.read_outputs(output_file))
        outputs["\0env"] = actions.read_outputs(env_file)  # $GITHUB_ENV: for the job's next steps
        if code:
            self.say(f"exit code {code}: {self.logs / f'{number:02d}.log'}")
        return code

    def _uses(self, uses: str, inputs: Dict[str, Any], outputs: Dict[str, Any]) -> int:
        action = uses.split("@", 1)[0]
        if action == "actions/checkout":
            checkout(self.r.repo, self.ws)
        elif action in ("actions/cache", "actions/cache/restore"):
            hit = self._restore(inputs)
            if hit is not None:
                outputs["cache-hit"] = "true" if hit else "false"
            if action == "actions/cache" and not hit:
                self.post.append(lambda: self._save(inputs))
        elif action == "actions/cache/save":
            self._save(inputs)
        elif action == "actions/upload-artifact":
            self._upload(inputs)
        elif action == "actions/download-artifact":
            return self._download(inputs)
        else:
            raise ConfigError(f"{self.r.workflow_path}: the rehearsal has no stand-in for {uses} "
                              "(it has: checkout, cache, upload-artifact, download-artifact)")
        return 0

    def _paths(self, inputs: Dict[str, Any], what: str) -> List[Path]:
        """The `path:` lines, in the workspace or the job's own folder, never elsewhere on this host."""
        paths = []
        for line in str(inputs.get("path") or "").splitlines():
            if line.strip():
                path = (self.ws / line.strip()).resolve()
                if not path.is_relative_to(self.folder):
                    raise ConfigError(f"{self.r.workflow_path}: {what} path {line.strip()} is outside the job's "
                                      f"folder {self.folder} (on a runner it would be a fixed path on its disk: "
                                      "write it with ${{ env.VMLAB_CACHE }} or relative to the workspace)")
                paths.append(path)
        if not paths:
            raise ConfigError(f"{self.r.workflow_path}: {what} without `path:`")
        return paths

    def _entry(self, key: str) -> Path:
        return self.r.cache_store / re.sub(r"[^A-Za-z0-9._-]", "_", key)[:200]

    def _restore(self, inputs: Dict[str, Any]) -> Optional[bool]:
        """True on the exact key, False on a restore-keys prefix, None when nothing was restored."""
        key = str(inputs.get("key") or "")
        paths = self._paths(inputs, "actions/cache")
        entry, exact = self._entry(key), True
        if not (entry / "manifest.json").exists():
            exact = False
            prefixes = [p.strip() for p in str(inputs.get("restore-keys") or "").splitlines() if p.strip()]
            found = [e for p in prefixes for e in sorted(self.r.cache_store.glob(self._entry(p).name + "*"),
                                                         key=lambda e: e.stat().st_mtime, reverse=True)
                     if (e / "manifest.json").exists()]
            if not found:
                self.record.caches.append({"key": key, "hit": False})
                self.say(f"cache miss: {key}")
                return None
            entry = found[0]
        for index, path in enumerate(paths):
            if (entry / str(index)).exists():
                _put(entry / str(index), path, link=False)
        self.record.caches.append({"key": key, "hit": exact, "restored": json.loads(
            (entry / "manifest.json").read_text())["key"]})
        self.say(f"cache {'hit' if exact else 'restored from ' + entry.name}: {key}")
        return exact

    def _save(self, inputs: Dict[str, Any]) -> None:
        key = str(inputs.get("key") or "")
        entry = self._entry(key)
        paths = [p for p in self._paths(inputs, "actions/cache") if p.exists()]
        if (entry / "manifest.json").exists() or not paths:
            self.say(f"cache not saved: {key} " + ("exists" if paths else "(no file at its path)"))
            return
        partial = entry.with_name(entry.name + f".partial-{os.getpid()}-{self.record.label}")
        shutil.rmtree(partial, ignore_errors=True)
        for index, path in enumerate(self._paths(inputs, "actions/cache")):
            if path.exists():
                _put(path, partial / str(index), link=True)
        (partial / "manifest.json").write_text(json.dumps({"key": key, "saved_by": self.record.label}) + "\n")
        try:
            os.rename(partial, entry)
        except OSError:  # another job saved the same key first: entries are immutable, as on GitHub
            shutil.rmtree(partial, ignore_errors=True)
        self.record.caches.append({"key": key, "saved": True})
        self.say(f"cache saved: {key}")

    def _upload(self, inputs: Dict[str, Any]) -> None:
        name = str(inputs.get("name") or "artifact")
        paths = [p for p in self._paths(inputs, "actions/upload-artifact") if p.exists()]
        target = self.artifacts / name
        if not paths:
            if inputs.get("if-no-files-found", "warn") == "error":
                raise ConfigError(f"upload-artifact {name}: no files at {inputs.get('path')}")
            self.say(f"warning: upload-artifact {name}: no files at {inputs.get('path')}; nothing uploaded")
            return
        try:
            target.mkdir(parents=True)  # one name once per run, as on GitHub (v4)
        except FileExistsError:
            raise ConfigError(f"upload-artifact: an artifact named {name!r} was uploaded already in this run; "
                              "every shard must upload under a name of its own") from None
        root = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0] if paths[0].is_dir() else \
            paths[0].parent
        for path in paths:
            _put(path, target / path.relative_to(root) if path != root else target, link=True)
        self.record.artifacts.append(name)
        self.say(f"uploaded artifact {name}")

    def _download(self, inputs: Dict[str, Any]) -> int:
        dest = (self.ws / str(inputs.get("path") or ".")).resolve()
        names = [str(inputs["name"])] if inputs.get("name") else sorted(p.name for p in self.artifacts.iterdir())
        for name in names:
            source = self.artifacts / name
            if not source.is_dir():
                self.say(f"download-artifact: there is no artifact {name!r} in this run")
                return 1
            _put(source, dest if inputs.get("name") else dest / name, link=False)
        return 0


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
        report = json.loads(report_file.read_text())
        entry = {"report": str(report_file), "junit": str(junit) if junit.exists() else None,
                 "passed": bool(report.get("passed")), "suites": [s.get("name") for s in report.get("suites", [])]}
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
    return max(s["exit_code"] for s in summaries)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/rehearse-ci", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository to check out (default: .)")
    parser.add_argument("--workflow", type=Path, help=f"the workflow file (default: REPO/{WORKFLOW})")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"folder for the runs and the cache store (default: {DEFAULT_WORK})")
    parser.add_argument("--vm", default="default", help="the workflow's VM, switched to one built offline "
                                                        "(default: default, the Debian guest)")
    parser.add_argument("--runs", type=int, default=2, help="runs in a row (default 2: the second must hit the "
                                                            "golden image's cache)")
    args = parser.parse_args(argv)
    try:
        return rehearse(args.workflow or args.repo / WORKFLOW, args.repo, args.work, args.vm, args.runs)
    except ConfigError as e:
        print(f"rehearse-ci: error: {e}", file=sys.stderr)
        return UNFINISHED


if __name__ == "__main__":
    sys.exit(main())
