"""The CI example runs as written: its matrix comes from vmlab.yaml, and the whole workflow is
rehearsed here (scripts/rehearse-ci) on real QEMU guests.

What cannot exist here is stood in for by tools/ci_rehearsal/, and only that: GitHub's
runners (a folder per job), actions/checkout (a git checkout of the working tree),
actions/cache and the artifacts (local folders), sudo (this host runs as root). Every
`run:` step is the workflow file's own, run by bash with the real vmlab CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from ci_rehearsal import standins
from conftest import Project

ROOT = Path(__file__).parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "vm-tests.yml"
REHEARSE = ROOT / "scripts" / "rehearse-ci"
WITH_TOOLS = dict(os.environ, PYTHONPATH=str(ROOT / "tools"))  # where scripts/rehearse-ci finds ci_rehearsal


def suites_matrix(project: Project) -> subprocess.CompletedProcess:
    return project.invoke("vm.suites", "--json")


def test_the_matrix_lists_every_suite_and_follows_the_config(project: Project) -> None:
    config = project.write_config("""
        suites:
          unit: {command: make check, timeout: 120}
          mounts: {command: sh mount-suite.sh, privileged: true, timeout: 600.5}
        """)
    listed = suites_matrix(project)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("\n") == 1  # one line: a $GITHUB_OUTPUT value
    assert json.loads(listed.stdout) == {"include": [
        {"suite": "unit", "privileged": False, "timeout": 120},
        {"suite": "mounts", "privileged": True, "timeout": 600.5}]}
    config.write_text(config.read_text().replace("  unit: {command: make check, timeout: 120}\n", ""))
    assert [m["suite"] for m in json.loads(suites_matrix(project).stdout)["include"]] == ["mounts"]
    table = project.invoke("vm.suites")
    assert re.search(r"^mounts\s+yes\s+600.5s\s+sh mount-suite.sh$", table.stdout, re.MULTILINE)
    config.write_text("vms: {default: {profile: debian}}\n")
    empty = suites_matrix(project)
    assert empty.returncode == 2 and empty.stdout == ""
    assert f"{config} has no suites (add them under 'suites:')" in empty.stderr


def test_the_key_step_works_on_a_fresh_runner_for_a_guest_installed_from_an_iso(project: Project) -> None:
    """The workflow's first vmlab call on a runner is vm.golden-key; the ISO's checksum is in the key,
    so it fetches the ISO (verified) rather than fail on an empty cache. A local mirror stands in."""
    mirror = project.root / "mirror" / "isos"
    mirror.mkdir(parents=True)
    iso = bytes(range(256)) * 400
    (mirror / "guest-1.iso").write_bytes(iso)
    (mirror / "md5.txt").write_text(f"MD5 (guest-1.iso) = {hashlib.md5(iso).hexdigest()}\n")
    guest = project.root / "guests" / "isoguest"
    guest.mkdir(parents=True)
    (guest / "profile.yaml").write_text(textwrap.dedent(f"""\
        description: a guest installed from an ISO
        os: linux
        iso: {{release: "1", path: "isos/guest-{{release}}.iso", checksums: isos/md5.txt,
              mirrors: [{mirror.parent}]}}
        install: {{recipe: install.yaml}}
        """))
    (guest / "install.yaml").write_text("description: types nothing\nboot: cdrom\n"
                                        "steps:\n  - {name: wait, expect: never}\n")
    project.write_config("guests: [guests]\nvms: {g: {profile: isoguest}}\ncache_dir: cache\n")
    key = project.invoke("vm.golden-key")
    assert key.returncode == 0, key.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", key.stdout)  # only the key: it goes into $GITHUB_OUTPUT
    assert (project.root / "cache" / "isos" / "guest-1.iso").read_bytes() == iso
    assert project.invoke("vm.golden-key").stdout == key.stdout


def synthetic_repo(root: Path, workflow: str) -> Path:
    """A git repository holding one workflow: the rehearsal's own machinery, without a VM."""
    repo = root / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "w.yml").write_text(textwrap.dedent(workflow))
    (repo / "data.txt").write_text("data\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def one_job(steps: str) -> str:
    """A workflow of one job, `one`, with these steps (YAML, indented by 6)."""
    return "env: {VM: dragonfly}\njobs:\n  one:\n    runs-on: ubuntu-latest\n    steps:\n" + textwrap.indent(
        textwrap.dedent(steps), " " * 6)


def rehearse_argv(repo: Path, work: Path, *args: str, workflow: str = ".github/workflows/w.yml") -> List[str]:
    """scripts/rehearse-ci's program, as a user runs it (with WITH_TOOLS as its environment)."""
    return [sys.executable, "-m", "ci_rehearsal.rehearsal", "--repo", str(repo), "--workflow", str(repo / workflow),
            "--work", str(work), *args]


def rehearse(repo: Path, work: Path, *args: str, workflow: str = ".github/workflows/w.yml",
             timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(rehearse_argv(repo, work, *args, workflow=workflow), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=WITH_TOOLS)


def summary(work: Path) -> List[Dict[str, Any]]:
    return json.loads((work / "rehearsal.json").read_text())["runs"]


SHARDS = """
    env:
      VM: dragonfly
    jobs:
      first:
        runs-on: ubuntu-latest
        outputs:
          matrix: ${{ steps.m.outputs.matrix }}
        steps:
          - uses: actions/checkout@v4
          - id: m
            run: |
              echo 'matrix={"include":[{"suite":"passes"},{"suite":"fails"},{"suite":"breaks"}]}' >> "$GITHUB_OUTPUT"
          - id: cache
            uses: actions/cache@v4
            with: {path: made.txt, key: "made-${{ hashFiles('data.txt') }}"}
          - if: steps.cache.outputs.cache-hit != 'true'
            run: echo "made for VM=$VM" > made.txt
          - uses: actions/upload-artifact@v4
            with: {name: made, path: made.txt}
      test:
        needs: first
        runs-on: ubuntu-latest
        strategy:
          fail-fast: false
          matrix: ${{ fromJSON(needs.first.outputs.matrix) }}
        env:
          OUT: vm/shard-${{ strategy.job-index }}/results
        steps:
          - uses: actions/checkout@v4
          - uses: actions/download-artifact@v4
            with: {name: made}
          - name: a suite
            run: |
              grep -q "VM=default" made.txt
              [ "${{ matrix.suite }}" != breaks ] || exit 2
              mkdir -p "$OUT/run"
              echo '<testsuites><testsuite name="s"><testcase name="t"/></testsuite></testsuites>' \
                > "$OUT/run/junit.xml"
              echo '{"vm": {"name": "default"}, "vmlab": "0", "started_at": "", "results_dir": "", "run_id": "run",
                "passed": ${{ matrix.suite == 'passes' }}, "complete": true, "cut_off": null, "suites": []}' \
                > "$OUT/run/report.json"
              [ "${{ matrix.suite }}" = passes ] || exit 1
          - if: always()
            uses: actions/upload-artifact@v4
            with: {name: "results-${{ matrix.suite }}", path: "${{ env.OUT }}/"}
    """


def test_shards_keep_their_own_results_and_the_exit_code_is_the_worst(tmp_path: Path) -> None:
    """No VM: a synthetic workflow whose shards pass, fail (1) and break before results (2)."""
    repo = synthetic_repo(tmp_path, SHARDS)
    done = rehearse(repo, tmp_path / "work")
    assert done.returncode == 2, done.stdout + done.stderr  # the worst: a shard that did not finish
    first, second = summary(tmp_path / "work")
    for run in (first, second):
        shards = {j["matrix"]["suite"]: j for j in run["jobs"] if j["job"] == "test"}
        assert {s: j["code"] for s, j in shards.items()} == {"passes": 0, "fails": 1, "breaks": 2}
        assert shards["passes"]["results"][0]["passed"] and not shards["fails"]["results"][0]["passed"]
        assert shards["breaks"]["artifacts"] == []  # nothing to upload: the job failed before its results
    artifacts = tmp_path / "work" / "r2" / "artifacts"
    assert json.loads((artifacts / "results-passes" / "run" / "report.json").read_text())["passed"] is True
    assert [c["hit"] for c in second["jobs"][0]["caches"] if "hit" in c] == [True]
    assert [s["status"] for s in second["jobs"][0]["steps"]][3] == "skipped"  # the cache hit: nothing made


def test_sudo_resets_the_environment_as_sudo_does(tmp_path: Path) -> None:
    repo = synthetic_repo(tmp_path, """
        env:
          VM: dragonfly
          SECRET: not-for-root
        jobs:
          one:
            runs-on: ubuntu-latest
            steps:
              - run: |
                  sudo --preserve-env=VMLAB_CACHE sh -c \
                    'echo "cache=$VMLAB_CACHE secret=${SECRET:-none} ci=${CI:-none}"'
              - run: sudo --chroot=/ true
        """)
    done = rehearse(repo, tmp_path / "work", "--runs", "1")
    assert f"cache={tmp_path / 'work' / 'r1' / 'one' / 'c'} secret=none ci=none" in done.stdout
    assert "option --chroot=/ is not supported" in done.stdout
    assert done.returncode == 1


def test_a_path_outside_the_job_folder_and_an_unknown_action_are_refused(tmp_path: Path) -> None:
    repo = synthetic_repo(tmp_path, one_job("""\
        - uses: actions/cache@v4
          with: {path: /var/cache/vmlab/isos, key: isos}
        - if: always()
          uses: docker/login-action@v3
        """))
    done = rehearse(repo, tmp_path / "work", "--runs", "1")
    assert done.returncode == 2
    assert "path /var/cache/vmlab/isos is outside the job's folder" in done.stdout
    assert "the rehearsal has no stand-in for docker/login-action@v3" in done.stdout


def test_a_job_past_its_timeout_minutes_has_its_step_stopped_and_does_not_finish(tmp_path: Path) -> None:
    """`timeout-minutes`, as GitHub enforces it: the running step gets SIGTERM (its process group)
    when the job's time is up, the job fails saying why, and the run does not wait for the step."""
    repo = synthetic_repo(tmp_path, one_job("""\
        - run: trap 'echo got SIGTERM; exit 143' TERM; echo started; sleep 318 & wait
        """).replace("    runs-on: ubuntu-latest\n", "    runs-on: ubuntu-latest\n    timeout-minutes: 0.05\n"))
    done = rehearse(repo, tmp_path / "work", "--runs", "1", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr  # the job did not finish its steps
    assert "[one] got SIGTERM" in done.stdout
    (job,) = summary(tmp_path / "work")[0]["jobs"]
    assert job["status"] == "failure" and job["seconds"] < 60
    assert job["problems"] == ["the job ran past timeout-minutes: 0.05"]
    assert not subprocess.run(["pgrep", "-f", "sleep 318"], capture_output=True).stdout


def test_ctrl_c_stops_the_running_step_runs_the_always_steps_and_exits_130(tmp_path: Path) -> None:
    """The rehearsal's Ctrl-C, as a terminal sends it: the step in progress gets SIGTERM (vmlab
    stops its VMs on it), `if: always()` steps (the workflow's `vmlab destroy`) still run."""
    repo = synthetic_repo(tmp_path, one_job("""\
        - run: trap 'echo got SIGTERM; exit 143' TERM; echo started; sleep 317 & wait
        - run: echo never
        - if: always()
          run: echo cleaned up > "$RUNNER_TEMP/cleaned"
        """))
    proc = subprocess.Popen(rehearse_argv(repo, tmp_path / "work", "--runs", "1"), stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=WITH_TOOLS)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[one] started" in line:
            break
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert "[one] got SIGTERM" in out and "[one] never" not in out
    assert (tmp_path / "work" / "r1" / "one" / "tmp" / "cleaned").read_text() == "cleaned up\n"
    assert not subprocess.run(["pgrep", "-f", "sleep 317"], capture_output=True).stdout


# --- the real workflow, on real guests ---


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache store for the module's two rehearsals (rehearsed_twice).
    The golden image (1 GB, in the store and the artifacts) is deleted at the end; logs stay."""
    folder = tmp_path_factory.mktemp("ci")
    yield folder
    for big in (folder / "real" / "actions-cache", *(folder / "real").glob("r*/artifacts/golden")):
        shutil.rmtree(big, ignore_errors=True)


def with_other_suites(work: Path) -> Path:
    """vmlab's own repository, checked out, with its suites replaced in vmlab.yaml: `mounts`
    removed, one that passes and one that fails added. The golden image's key does not change."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    standins.checkout(ROOT, repo)
    config = repo / "vmlab.yaml"
    text = config.read_text()
    suites = text[text.index("suites:"):text.index("quick: mounts")]
    config.write_text(text.replace(suites, textwrap.dedent("""\
        suites:
          passes: {command: "uname -a > uname.txt && echo ok", timeout: 120}
          fails: {command: "echo failing on purpose; exit 1", privileged: true, timeout: 120}
        """)).replace("quick: mounts", "quick: passes"))
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "other suites"], check=True)
    return repo


@pytest.fixture(scope="module")
def rehearsed_twice(work: Path, vm_ready) -> Tuple[subprocess.CompletedProcess, List[Dict[str, Any]],
                                                   subprocess.CompletedProcess, List[Dict[str, Any]]]:
    """The workflow rehearsed twice on one cache store, once per module. First `scripts/rehearse-ci`
    as a user runs it, on vmlab's own repository from an empty store: it must make the golden image.
    Then on a checkout whose vmlab.yaml has other suites (with_other_suites): its golden job must take
    the image from the store, and its matrix follow the config. (A second run of the same repository
    showed nothing more than this one, and cost a golden job and a shard.)"""
    first = subprocess.run([str(REHEARSE), "--work", str(work / "real"), "--vm", "default", "--runs", "1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    (work / "real.log").write_text(first.stdout + first.stderr)
    first_runs = summary(work / "real") if first.returncode == 0 else []  # read before the next rehearsal
    second = rehearse(with_other_suites(work), work / "real", "--runs", "1", "--vm", "default",
                      workflow=".github/workflows/vm-tests.yml")
    (work / "other-suites.log").write_text(second.stdout + second.stderr)
    return first, first_runs, second, (summary(work / "real") if second.returncode in (0, 1) else [])


def test_the_whole_workflow_rehearsed_twice_the_second_a_cache_hit(rehearsed_twice) -> None:
    """From an empty cache store: run 1 must make the golden image, run 2 must take it from the cache."""
    done, first_runs, again, second_runs = rehearsed_twice
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert second_runs, again.stdout[-6000:] + again.stderr[-3000:]  # it finished: its jobs are on record
    (first,), (second,) = first_runs, second_runs
    suites = list(json.loads(subprocess.run([str(ROOT / ".venv" / "bin" / "vmlab"), "suites", "--json"], cwd=ROOT,
                                            capture_output=True, text=True, check=True).stdout)["include"])
    golden, *shards = first["jobs"]
    assert golden["job"] == "golden" and golden["code"] == 0
    assert [s["matrix"] for s in shards] == suites  # one shard per suite of vmlab.yaml
    for shard in shards:
        assert shard["code"] == 0 and shard["status"] == "success", shard
        (result,) = shard["results"]
        assert result["passed"] and result["suites"] == [shard["matrix"]["suite"]]
        assert Path(result["junit"]).name == "junit.xml" and result["tests"] > 0
    made = next(s for s in golden["steps"] if "from scratch" in s["name"])
    assert made["status"] == "success" and golden["built_golden"]
    assert "rehearsal run 1: exit code 0" in done.stdout
    golden_again = second["jobs"][0]
    assert golden_again["job"] == "golden" and golden_again["code"] == 0, golden_again
    remade = next(s for s in golden_again["steps"] if "from scratch" in s["name"])
    assert remade["status"] == "skipped" and golden_again["built_golden"] == []
    assert any(c.get("hit") and c["key"].startswith("vmlab-golden-") for c in golden_again["caches"])


def test_a_failing_shard_leaves_the_others_results_and_the_matrix_follows_the_config(work: Path,
                                                                                        rehearsed_twice) -> None:
    """The second rehearsal (rehearsed_twice): vmlab's repository with its suites replaced."""
    _, _, done, runs = rehearsed_twice
    assert done.returncode == 1, done.stdout[-6000:] + done.stderr[-3000:]  # the worst shard failed
    (run,) = runs
    shards = {j["matrix"]["suite"]: j for j in run["jobs"] if j["job"] == "test"}
    assert list(shards) == ["passes", "fails"]  # no shard for the removed suite
    assert shards["passes"]["code"] == 0 and shards["fails"]["code"] == 1
    assert shards["passes"]["results"][0]["passed"] and not shards["fails"]["results"][0]["passed"]
    ports = {}
    for suite, shard in shards.items():  # started at once: each its own clone (shard-N) and SSH port
        log = "".join(p.read_text() for p in sorted((Path(shard["folder"]) / "logs").glob("*.log")))
        up = re.search(r"VM (shard-\d+) is up: ssh 127\.0\.0\.1:(\d+)", log)
        assert up and up.group(1) == f"shard-{shard['label'].rsplit('-', 1)[1]}", log[-3000:]
        ports[suite] = up.group(2)
    assert ports["passes"] != ports["fails"]
    artifacts = work / "real" / "r1" / "artifacts"
    assert sorted(p.name for p in artifacts.iterdir()) == ["golden", "results-fails", "results-passes"]
