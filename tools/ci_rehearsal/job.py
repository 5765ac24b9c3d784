"""One runner: a job, or one shard of a matrix, run step by step in its own folder, with the
workflow's expressions evaluated over GitHub's contexts."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

from ci_rehearsal import expressions
from ci_rehearsal.records import FAILED, PASSED, UNFINISHED, JobRecord, StepRecord
from ci_rehearsal.standins import SUDO_PATH, ActionStandIns, built_goldens, kill_qemus
from vmlab import config
from vmlab.errors import ConfigError

SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]  # GitHub's `shell: bash`
NOT_PASSED_ON = ("VM", "VMLAB_CACHE", "VMLAB_CONFIG", "XDG_CACHE_HOME", "VIRTUAL_ENV", "PYTHONPATH", "CI")


class Conductor(Protocol):
    """What a runner needs of the rehearsal that runs it (rehearsal.Rehearsal): the repository,
    the workflow and its env, the cache store, the folder first on every step's PATH, and the
    steps' processes (Ctrl-C and time-outs reach them through it)."""

    repo: Path
    workflow_path: Path
    cache_store: Path
    bin: Path
    env_override: Dict[str, str]
    cancel: threading.Event
    echo: Callable[[str], None]

    def github_context(self, job_id: str) -> Dict[str, Any]: ...

    def workflow_env(self) -> Dict[str, str]: ...

    def started(self, proc: subprocess.Popen[str]) -> None: ...

    def ended(self, proc: subprocess.Popen[str]) -> None: ...

    def signal_steps(self, signum: int, within: Optional[Path] = None) -> None: ...


class Job(ActionStandIns):
    """One runner: a job, or one shard of a matrix, run step by step in its own folder."""

    def __init__(self, rehearsal: Conductor, job_id: str, spec: Dict[str, Any], shard: Dict[str, Any], index: int,
                 total: int, run_dir: Path, needs: Dict[str, Any], fail_fast: Optional[threading.Event]):
        self.r, self.spec, self.fail_fast = rehearsal, spec, fail_fast
        label = f"{job_id}-{index}" if "strategy" in spec and "matrix" in spec["strategy"] else job_id
        self.folder = run_dir / label
        self.ws, self.tmp, self.logs, self.cache = (self.folder / n for n in ("ws", "tmp", "logs", "c"))
        self.artifacts = run_dir / "artifacts"
        self.repo, self.workflow_path, self.cache_store = rehearsal.repo, rehearsal.workflow_path, rehearsal.cache_store
        self.record = JobRecord(job_id, label, shard, str(self.folder))
        self.steps: Dict[str, Dict[str, Any]] = {}
        self.failed = False
        self.post: List[Callable[[], None]] = []
        self.contexts: Dict[str, Any] = {
            "matrix": shard, "needs": needs, "strategy": {"job-index": index, "job-total": total,
                                                          "fail-fast": fail_fast is not None},
            "github": dict(rehearsal.github_context(job_id), workspace=str(self.ws)), "steps": self.steps,
            "runner": {"os": "Linux", "arch": "X64", "name": label, "temp": str(self.tmp)},
            "job": {"status": "success"}, "vars": {}, "secrets": {}, "inputs": {}, "env": {}}
        self.functions: Dict[str, Callable[..., Any]] = {
            "success": lambda: not self.failed and not self._cancelled(), "failure": lambda: self.failed,
            "always": lambda: True, "cancelled": self._cancelled,
            "hashfiles": lambda *patterns: expressions.hash_files(self.ws, *patterns)}

    def _cancelled(self) -> bool:
        return self.r.cancel.is_set() or bool(self.fail_fast and self.fail_fast.is_set())

    def say(self, text: str) -> None:
        self.r.echo(f"[{self.record.label}] {text}")

    def add_post_step(self, step: Callable[[], None]) -> None:
        """actions/cache saves in the job's post steps, after the other steps passed."""
        self.post.append(step)

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
            self.contexts["env"] = env = dict(self.r.workflow_env(), **self.r.env_override,
                                              VMLAB_CACHE=str(self.cache))
            env.update({k: expressions.to_text(self._field(v)) for k, v in (self.spec.get("env") or {}).items()})
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
        self.r.signal_steps(signal.SIGTERM, within=self.folder)

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
        return expressions.field(value, self.contexts, self.functions)

    # --- steps ---

    def _step(self, number: int, step: Dict[str, Any], job_env: Dict[str, str]) -> None:
        name = step.get("name") or (f"Run {step['run'].splitlines()[0]}" if "run" in step else step.get("uses", "?"))
        env = dict(job_env, **{k: expressions.to_text(self._field(v)) for k, v in (step.get("env") or {}).items()})
        self.contexts["env"] = env
        self.contexts["job"]["status"] = "cancelled" if self._cancelled() else "failure" if self.failed else "success"
        record = StepRecord(name=str(self._field(name)), status="skipped")
        self.record.steps.append(record)
        if not expressions.condition(step.get("if"), self.contexts, self.functions):
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
                raise ConfigError(f"{self.workflow_path}: a step of job {self.record.job} has neither run: nor uses:")
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
            raise ConfigError(f"{self.workflow_path}: shell {shell!r} of job {self.record.job}: the rehearsal runs "
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
        outputs.update(expressions.read_outputs(output_file))
        outputs["\0env"] = expressions.read_outputs(env_file)  # $GITHUB_ENV: for the job's next steps
        if code:
            self.say(f"exit code {code}: {self.logs / f'{number:02d}.log'}")
        return code
