"""The edit-test loop on a real guest: sync, suites, results, exit codes (tests/sample-project)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import INVOKE, Project
from vmlab.errors import HostKeyMismatch
from vmlab.lab import snapshotting
from vmlab.remote import keys
from vmlab.remote.ssh import GuestSSH
from vmlab.runs import suites

SAMPLE = Path(__file__).parent / "sample-project"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(shared_project: Project, vm_ready) -> Project:
    """A copy of the sample project with its VM running, the project synced into it and
    that state saved as the 'clean' snapshot, shared by this module's tests.

    `vm.test` does not sync and every suite starts with `cd sample`, and restores go back to
    'clean': each test finds both here, whichever tests ran before it (they run in a random order).
    """
    shutil.copytree(SAMPLE, shared_project.root, dirs_exist_ok=True, symlinks=True)
    started = shared_project.invoke("vm.start")
    assert started.returncode == 0, started.stderr
    synced = shared_project.invoke("vm.sync")
    assert synced.returncode == 0, synced.stderr
    saved = shared_project.invoke("vm.snapshot")
    assert saved.returncode == 0, saved.stderr
    return shared_project


@pytest.fixture
def show(sample: Project) -> Path:
    """A config whose quick suite shows the synced input and writes nothing in the guest's copy."""
    config = sample.root / "show.yaml"
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    settings["suites"]["show"] = {"command": "cat data/input.txt; ls data"}
    config.write_text(yaml.safe_dump({**settings, "quick": "show"}))
    return config


def report_of(result_stdout: str) -> dict:
    folder = next(line.split("results: ", 1)[1] for line in result_stdout.splitlines() if "results: " in line)
    return json.loads((Path(folder) / "report.json").read_text())


def junit_cases(report: dict) -> dict:
    root = ET.parse(Path(report["results_dir"]) / "junit.xml").getroot()
    return {case.get("name"): case for case in root.iter("testcase")}


def in_guest(project: Project, command: str) -> str:
    result = project.invoke("vm.ssh", "-c", command)
    return result.stdout


def test_quick_syncs_runs_the_quick_suite_and_records_it(sample: Project) -> None:
    result = sample.invoke("vm.quick")
    assert result.returncode == 0, result.stderr
    assert "greeting: ok; input: ok" in result.stdout  # the suite's output, live
    assert "PASSED" in result.stdout
    report = report_of(result.stdout)
    assert report["passed"] and report["vm"]["name"] == "default"
    assert report["guest"] == {"os": "Linux", "kernel": in_guest(sample, "uname -r").strip()}
    assert report["vmlab"] and report["qemu"][0].isdigit()
    (unit,) = report["suites"]
    assert (unit["name"], unit["status"], unit["passed"], unit["failed"], unit["exit_code"]) == \
        ("unit", "passed", 2, 0, 0)
    assert Path(unit["log"]).read_text().startswith("greeting: ok")
    assert set(junit_cases(report)) == {"greeting from the environment", "input file synced"}


def test_a_failing_suite_exits_1_and_says_why(sample: Project) -> None:
    result = sample.invoke("vm.test", "--suite", "broken")
    assert result.returncode == 1
    report = report_of(result.stdout)
    (broken,) = report["suites"]
    assert (broken["status"], broken["exit_code"], broken["failed"]) == ("failed", 3, 1)
    failure = junit_cases(report)["broken"].find("failure")
    assert failure is not None and failure.get("message") == "exit code 3"
    assert "expected 4, got 5" in failure.text


def test_a_hung_suite_is_killed_at_its_timeout_and_the_guest_stays_usable(sample: Project) -> None:
    result = sample.invoke("vm.test", "--suite", "hangs", "--suite", "unit")
    assert result.returncode == 1
    hangs, unit = report_of(result.stdout)["suites"]
    assert hangs["status"] == "timed out" and hangs["duration_seconds"] < 5 + 15
    assert "killed after 5s" in hangs["note"]
    assert unit["status"] == "passed"  # the next suite ran in the same guest
    assert in_guest(sample, "pgrep -x sleep || echo none").strip() == "none"  # killed in the guest too


def test_a_suite_is_judged_by_its_junit_too(sample: Project) -> None:
    """suites.run reads the JUnit a suite writes: a failing case there fails the suite even
    when it exits 0; so does a missing or unreadable JUnit file, named in the suite's note."""
    config = sample.root / "junit.yaml"
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    failure = ('<testsuite tests="2"><testcase name="a"/><testcase name="b"><failure message="b broke"/></testcase>'
               '</testsuite>')
    settings["suites"] = {
        "exits-0-with-a-failure": {"command": f"mkdir -p out && echo '{failure}' > out/f.xml", "junit": "out/f.xml"},
        "writes-no-junit": {"command": "rm -f out/never.xml", "junit": "out/never.xml"},
        "writes-garbage": {"command": "mkdir -p out && echo 'not xml <' > out/g.xml", "junit": "out/g.xml"},
        "unit-told-wrong": {**settings["suites"]["unit"], "env": {"GREETING": "bye"}},
    }
    settings.pop("quick")
    config.write_text(yaml.safe_dump(settings))
    result = sample.invoke("vm.test-all", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    by_name = {s["name"]: s for s in report_of(result.stdout)["suites"]}
    lied = by_name["exits-0-with-a-failure"]
    assert (lied["exit_code"], lied["status"], lied["passed"], lied["failed"]) == (0, "failed", 1, 1)
    assert "exit 0, but 1 of its 2 tests failed" in lied["note"]
    # exit 0 with the JUnit file it promised missing or unreadable: nothing shown to pass, so failed
    assert (by_name["writes-no-junit"]["exit_code"], by_name["writes-no-junit"]["status"]) == (0, "failed")
    assert "exit 0, but it wrote no JUnit file at sample/out/never.xml" in by_name["writes-no-junit"]["note"]
    assert (by_name["writes-garbage"]["exit_code"], by_name["writes-garbage"]["status"]) == (0, "failed")
    assert "its JUnit file is not valid XML" in by_name["writes-garbage"]["note"]
    told_wrong = by_name["unit-told-wrong"]  # the sample's own suite reports its failing check in JUnit
    assert (told_wrong["status"], told_wrong["passed"], told_wrong["failed"]) == ("failed", 1, 1)
    assert [f["name"] for f in told_wrong["failing"]] == ["greeting from the environment"], told_wrong


def test_sync_mirrors_the_project_deletes_keeps_links_and_leaves_out_excluded(sample: Project) -> None:
    (sample.root / ".git").mkdir(exist_ok=True)
    (sample.root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (sample.root / "notes.tmp").write_text("scratch")
    (sample.root / "data" / "extra.txt").write_text("temporary")
    assert sample.invoke("vm.sync").returncode == 0
    listing = in_guest(sample, "cd sample && ls -A . data; readlink data/link.txt")
    assert "extra.txt" in listing and "link.txt" in listing and listing.rstrip().endswith("input.txt")
    assert ".git" not in listing and "notes.tmp" not in listing and "vm" not in listing.split()
    (sample.root / "data" / "extra.txt").unlink()
    again = sample.invoke("vm.sync")
    assert again.returncode == 0
    assert re.search(r"^0 of \d+ files sent", again.stdout, re.M), again.stdout  # nothing changed but a deletion
    assert in_guest(sample, "test -e sample/data/extra.txt && echo present || echo gone").strip() == "gone"


def test_quick_skips_rsync_only_while_neither_copy_changed(sample: Project, show: Path) -> None:
    """The loop's fast path (vmlab.sync.gate.SyncGate) skips rsync when nothing changed; a suite
    must still never see a copy that differs from the host's: not after a host edit, an
    edit or a stray file in the guest, nor a restore to a snapshot from before a sync."""
    config = show
    data = sample.root / "data" / "input.txt"
    original = data.read_text()

    def quick(expect_sync: bool) -> str:
        result = sample.invoke("vm.quick", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        assert ("vmlab: synced" in result.stderr) == expect_sync, result.stderr
        assert ("vmlab: in sync" in result.stderr) != expect_sync, result.stderr
        assert "vmlab-sync:" not in result.stdout  # the handshake is not the suite's output
        return result.stdout

    quick(expect_sync=True)
    assert original in quick(expect_sync=False)
    in_guest(sample, "echo edited-in-the-guest > sample/data/input.txt; touch sample/data/stray; "
                     "mkdir sample/cache.tmp")
    shown = quick(expect_sync=True)
    assert original in shown and "edited-in-the-guest" not in shown and "stray" not in shown
    in_guest(sample, "date > sample/cache.tmp/output")  # in an excluded folder: rsync leaves it alone
    quick(expect_sync=False)
    assert sample.invoke("vm.snapshot", "--name", "before-edit").returncode == 0
    try:
        data.write_text("edited on the host\n")
        assert "edited on the host" in quick(expect_sync=True)
        assert sample.invoke("vm.restore", "--name", "before-edit").returncode == 0  # the guest's copy: old
        assert "edited on the host" in quick(expect_sync=True)
        assert "edited on the host" in quick(expect_sync=False)
    finally:
        data.write_text(original)
        sample.invoke("vm.snapshot-delete", "--name", "before-edit")


def test_quick_sends_only_the_changed_files_and_deletions_without_rsync(sample: Project, show: Path) -> None:
    """With the guest's copy as last sent, the host knows what changed (its tree, kept in
    vm/NAME/synced.json): one edited file goes as a tar on the suite's own session and a
    deleted file is deleted, with no rsync scan; nothing changed sends nothing."""
    data = sample.root / "data" / "input.txt"
    original = data.read_text()
    doomed = sample.root / "data" / "doomed.txt"
    doomed.write_text("to be deleted\n")

    def quick() -> subprocess.CompletedProcess:
        result = sample.invoke("vm.quick", "--config", str(show))
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    try:
        quick()  # whatever the earlier tests left: in sync from here
        assert "vmlab: in sync" in quick().stderr  # nothing changed: no scan, nothing sent
        data.write_text("edited once\n")
        doomed.unlink()
        edited = quick()
        assert "1 changed file sent" in edited.stderr and "1 deleted" in edited.stderr, edited.stderr
        assert "no rsync scan" in edited.stderr and "files sent" not in edited.stderr  # rsync's own line
        assert "edited once" in edited.stdout and "doomed.txt" not in edited.stdout
        assert in_guest(sample, "cat sample/data/input.txt; test -e sample/data/doomed.txt || echo gone") == \
            "edited once\ngone\n"
        assert "vmlab: in sync" in quick().stderr  # the applied files do not look like guest edits
        tricky = "it's \"quoted\" $HOME `id` \\ %s ünï\n\n"
        data.write_text(tricky)  # an edit alone: written by the guest's shell, quoting and all
        inline = quick()
        assert "1 changed file sent" in inline.stderr and tricky in inline.stdout, inline.stdout
        assert "vmlab: in sync" in quick().stderr
    finally:
        data.write_text(original)
        doomed.unlink(missing_ok=True)



def test_a_suite_exiting_96_after_an_edit_was_sent_failed_with_its_own_code(sample: Project, show: Path) -> None:
    """The sync reports on its own status lines, never through the suite's exit code: 96 and
    97 were the codes the session used to say its sync failed, and `vmlab quick` after a
    one-file edit with a suite exiting 96 said "did not run: the changed files could not be
    written" (exit 2). Now it is the suite failing (exit 1) with exit code 96."""
    settings = yaml.safe_load(show.read_text())
    settings["suites"]["show"]["command"] = "cat data/input.txt; exit 96"
    config = sample.root / "exits-96.yaml"
    config.write_text(yaml.safe_dump(settings))
    data = sample.root / "data" / "input.txt"
    original = data.read_text()
    try:
        sample.invoke("vm.quick", "--config", str(config))  # whatever the earlier tests left: in sync from here
        data.write_text("edited before a suite that exits 96\n")
        result = sample.invoke("vm.quick", "--config", str(config))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "1 changed file sent" in result.stderr and "edited before a suite" in result.stdout, result.stderr
        (suite,) = report_of(result.stdout)["suites"]
        assert (suite["status"], suite["exit_code"]) == ("failed", 96), suite
    finally:
        data.write_text(original)
        config.unlink()


def test_only_the_changed_files_reach_the_guest(sample: Project, show: Path) -> None:
    """"Only what changed is sent", counted in the guest, not from vmlab's own log line: the
    files the turn wrote in the guest's copy are those whose ctime is after a mark the guest
    made before it (unpacking or printf sets it; an untouched file keeps its own). An edit
    alone goes as printf lines, an edit and a new file as a tar: either way, only those."""
    data, new = sample.root / "data" / "input.txt", sample.root / "data" / "new.txt"
    original = data.read_text()

    def quick() -> str:
        result = sample.invoke("vm.quick", "--config", str(show))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stderr

    def written_by(turn: Callable[[], None]) -> list:
        in_guest(sample, "touch /tmp/vmlab-mark")
        time.sleep(0.05)  # a few of the guest's clock ticks: what the turn writes is newer than the mark
        turn()
        said = quick()
        assert "no rsync scan" in said or "in sync" in said, said  # the fast path, not rsync
        return sorted(in_guest(sample, "cd sample && find . -type f -cnewer /tmp/vmlab-mark").split())

    try:
        quick()  # whatever the earlier tests left: in sync from here
        assert written_by(lambda: None) == []
        assert written_by(lambda: data.write_text("edited once\n")) == ["./data/input.txt"]
        assert written_by(lambda: (data.write_text("edited twice\n"), new.write_text("new\n"))) == \
            ["./data/input.txt", "./data/new.txt"]
        assert int(in_guest(sample, "cd sample && find . -type f | wc -l")) > 2  # there were others to send
    finally:
        data.write_text(original)
        new.unlink(missing_ok=True)
        quick()


def test_quick_never_sends_what_the_excludes_leave_out(sample: Project, show: Path) -> None:
    """An anchored exclude (`/venv/`, as `vmlab init` writes `/.venv/`) and a literal path
    (`docs/build`) are left out by the turn that sends only what changed, as rsync leaves
    them out: that turn used to send them once a file in them changed (a user's pip install
    put 149 files of .venv in the guest), and writes there in the guest made every turn an
    rsync. A pattern with a wildcard in a path (`gen/*.out`) is rsync's to apply: such a
    turn runs rsync."""
    settings = yaml.safe_load(show.read_text())
    settings["sync"]["excludes"] += ["/venv/", "docs/build"]
    config = sample.root / "excludes.yaml"
    config.write_text(yaml.safe_dump(settings))
    made = [sample.root / "venv", sample.root / "docs", sample.root / "gen", sample.root / "data" / "new.txt"]

    def quick() -> str:
        result = sample.invoke("vm.quick", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stderr

    def guest_has(*names: str) -> list:
        listed = in_guest(sample, "cd sample && for f in " + " ".join(names) + "; do [ -e $f ] && echo $f; done")
        return listed.split()

    try:
        for name in ("venv/lib.py", "docs/build/page.html", "docs/keep.md"):
            (sample.root / name).parent.mkdir(parents=True, exist_ok=True)
            (sample.root / name).write_text("first\n")
        quick()
        assert quick().count("in sync")
        for name in ("venv/lib.py", "docs/build/page.html"):
            (sample.root / name).write_text("changed\n")
        (sample.root / "data" / "new.txt").write_text("new\n")
        sent = quick()
        assert "1 changed file sent" in sent and "no rsync scan" in sent, sent
        assert guest_has("venv", "docs/build", "docs/keep.md", "data/new.txt") == ["docs/keep.md", "data/new.txt"]
        in_guest(sample, "mkdir -p sample/venv sample/x/docs/build")  # new names in the copy: a sync
        quick()
        in_guest(sample, "date > sample/venv/built && date > sample/x/docs/build/page.html")  # a build's output
        assert "in sync" in quick()  # rsync leaves those alone: no reason to run it
        settings["sync"]["excludes"] += ["gen/*.out"]
        config.write_text(yaml.safe_dump(settings))
        (sample.root / "gen").mkdir()
        (sample.root / "gen" / "a.out").write_text("built\n")
        (sample.root / "gen" / "keep.txt").write_text("kept\n")
        by_rsync = quick()
        assert "no rsync scan" not in by_rsync and "files sent" in by_rsync, by_rsync  # rsync's own line
        assert guest_has("gen/a.out", "gen/keep.txt") == ["gen/keep.txt"]
    finally:
        for path in made:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        config.unlink()
        in_guest(sample, "rm -rf sample/venv sample/x")


def test_a_chatty_login_shell_is_shown_and_named_when_it_breaks_rsync(sample: Project, show: Path) -> None:
    """A ~/.bashrc that prints: vmlab's sync check (and the changed files it sends) pass its
    output through, and when rsync is needed it cannot work through it: exit 2 (the suite
    never ran), saying why."""
    assert sample.invoke("vm.quick", "--config", str(show)).returncode == 0  # in sync from here
    in_guest(sample, "cp /root/.bashrc /root/.bashrc.saved && echo 'echo hello-from-bashrc' >> /root/.bashrc")
    added = sample.root / "data" / "added.txt"
    try:
        result = sample.invoke("vm.quick", "--config", str(show))
        assert result.returncode == 0 and "vmlab: in sync" in result.stderr, result.stdout + result.stderr
        assert "hello-from-bashrc" in result.stdout and "input" in result.stdout
        added.write_text("a host edit: sent on the suite's own session, through the chatty shell\n")
        delta = sample.invoke("vm.quick", "--config", str(show))
        assert delta.returncode == 0 and "1 changed file sent" in delta.stderr, delta.stdout + delta.stderr
        in_guest(sample, "touch sample/data/stray")  # a guest edit: this turn needs rsync
        broken = sample.invoke("vm.quick", "--config", str(show))
        assert broken.returncode == 2, broken.stdout + broken.stderr
        assert "suite show did not run" in broken.stderr and "~/.bashrc" in broken.stderr
    finally:
        added.unlink(missing_ok=True)
        in_guest(sample, "mv /root/.bashrc.saved /root/.bashrc")


def test_build_runs_the_configured_command(sample: Project) -> None:
    assert sample.invoke("vm.sync").returncode == 0
    result = sample.invoke("vm.build")
    assert result.returncode == 0 and "built out/lines: 2" in result.stdout


def test_privileged_suite_gets_root_through_sudo_for_a_non_root_user(sample: Project) -> None:
    """The same VM, logged into as the image's `lab` user through a second config file."""
    config = sample.root / "as-lab.yaml"
    config.write_text((sample.root / "vmlab.yaml").read_text().replace("  default: {}", "  default: {ssh_user: lab}"))
    assert sample.invoke("vm.sync", "--config", str(config)).returncode == 0
    result = sample.invoke("vm.test", "--suite", "mounts", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mounted, used and unmounted a tmpfs as root" in result.stdout
    assert sample.invoke("vm.ssh", "--config", str(config), "-c", "id -un").stdout.strip() == "lab"


def test_restore_on_failure_puts_the_vm_back_to_clean(sample: Project) -> None:
    result = sample.invoke("vm.test", "--suite", "dirty-fail", "--restore-on-failure")
    assert result.returncode == 1
    assert "restoring VM default to 'clean'" in result.stderr
    assert in_guest(sample, "test -e /root/left-by-dirty-fail && echo dirty || echo clean").strip() == "clean"
    kept = sample.invoke("vm.test", "--suite", "dirty-fail")  # without the flag, the mess stays
    assert kept.returncode == 1
    assert in_guest(sample, "test -e /root/left-by-dirty-fail && echo dirty || echo clean").strip() == "dirty"


def config_with(sample: Project, name: str, **changes) -> Path:
    """A second config file for the sample project, its settings changed as given."""
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    settings.update(changes)
    path = sample.root / name
    path.write_text(yaml.safe_dump(settings))
    return path


def test_restore_on_failure_set_in_the_config_and_only_for_privileged_suites(sample: Project) -> None:
    config = config_with(sample, "restoring.yaml", restore_on_failure=True)
    dirty = sample.invoke("vm.test", "--suite", "dirty-fail", "--config", str(config))
    assert dirty.returncode == 1 and "restoring VM default to 'clean'" in dirty.stderr, dirty.stderr
    assert in_guest(sample, "test -e /root/left-by-dirty-fail && echo dirty || echo clean").strip() == "clean"
    broken = sample.invoke("vm.test", "--suite", "broken", "--config", str(config))  # not privileged
    assert broken.returncode == 1 and "restoring" not in broken.stderr, broken.stderr


def test_a_suite_runs_in_its_workdir(sample: Project) -> None:
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    config = config_with(sample, "workdir.yaml", suites={
        **settings["suites"], "in-data": {"command": "test -f input.txt && pwd", "workdir": "data"}})
    result = sample.invoke("vm.test", "--suite", "in-data", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].endswith("/sample/data")


@pytest.mark.parametrize("command, plain", [
    ("go test -run=TestMount ./...", True), ("make check", True), ("sh checks/unit.sh", True),
    ("cat data/*.txt", False), ("echo $HOME", False), ("ls ~", False), ("a && b", False), ("a; b", False),
    ("echo 'quoted'", False), ("GREETING=hi printenv GREETING", False), ("cd data", False), ("exit 3", False),
    ("%1", False), ("", False)])
def test_which_commands_skip_the_shell(command: str, plain: bool) -> None:
    assert suites.plain_command(command) is plain


def test_a_plain_command_runs_as_a_shell_would_run_it(sample: Project) -> None:
    """A one-program command is exec'd without `sh -c` (suites.plain_command): it must still
    get its environment and work folder, and what only a shell can run must still run."""
    config = config_with(sample, "plain.yaml", suites={
        "plain": {"command": "printenv GREETING", "env": {"GREETING": "hi there"}, "workdir": "data"},
        "plain-in-workdir": {"command": "ls input.txt", "workdir": "data"},
        "builtin": {"command": "exit 3"},
        "assignment": {"command": "GREETING=set-here printenv GREETING"},
        "missing": {"command": "no-such-program --flag"},
    }, quick="plain")
    result = sample.invoke("vm.test-all", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    by_name = {s["name"]: s for s in report_of(result.stdout)["suites"]}
    assert by_name["plain"]["status"] == "passed" and "hi there" in Path(by_name["plain"]["log"]).read_text()
    assert by_name["plain-in-workdir"]["status"] == "passed"
    assert (by_name["builtin"]["status"], by_name["builtin"]["exit_code"]) == ("failed", 3)
    assert by_name["assignment"]["status"] == "passed"
    assert "set-here" in Path(by_name["assignment"]["log"]).read_text()
    assert (by_name["missing"]["status"], by_name["missing"]["exit_code"]) == ("failed", 127)


def test_ssh_dying_mid_run_is_exit_2_with_the_results_so_far(sample: Project) -> None:
    """The guest's sshd session under the run is killed by the second suite: the first suite's
    result is kept, the one cut off and the one never started are said so, exit 2 (did not finish)."""
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    config = config_with(sample, "dies.yaml", suites={
        **settings["suites"], "kills-ssh": {"command": "echo going; sleep 1; pkill -KILL -f 'sshd: root'; sleep 30"}})
    result = sample.invoke("vm.test", "--suite", "unit", "--suite", "kills-ssh", "--suite", "broken",
                           "--config", str(config), timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "SSH stopped answering" in result.stderr and "Results so far: " in result.stderr
    folder = Path(re.search(r"Results so far: (\S+)", result.stderr).group(1))
    report = json.loads((folder / "report.json").read_text())
    assert not report["complete"] and "SSH stopped answering" in report["cut_off"]
    assert [(s["name"], s["status"]) for s in report["suites"]] == [
        ("unit", "passed"), ("kills-ssh", "error"), ("broken", "not run")]
    assert in_guest(sample, "echo back").strip() == "back"  # the next command connects again


def test_library_session_survives_a_restore_and_fetches_files(sample: Project, tmp_path: Path) -> None:
    """The session outlives a restore of the RAM under it: the file written before the restore
    is gone afterwards (the restore happened), and the session is on a new connection."""
    lab = sample.lab()
    with lab.vm().ssh() as session:
        assert session.run("echo before > /root/fetch-me").ok
        assert session.fetch("/root/fetch-me", tmp_path / "before").read_text() == "before\n"
        connection = session._client.get_transport()  # type: ignore[union-attr]
        snapshotting.restore(lab.vm())  # kills the session's connection in the guest
        after = session.run("echo still here")  # reconnects once
        assert after.ok and after.stdout == "still here\n"
        assert session._client.get_transport() is not connection  # type: ignore[union-attr]
        assert session.run("test -e /root/fetch-me && echo present || echo absent").stdout == "absent\n"
        with pytest.raises(FileNotFoundError, match="no file /root/fetch-me"):
            session.fetch("/root/fetch-me", tmp_path / "after")
        fetched = session.fetch("/etc/hostname", tmp_path / "hostname")
        assert fetched.read_text() == "default\n"
        with pytest.raises(FileNotFoundError, match="no file /nonexistent"):
            session.fetch("/nonexistent", tmp_path / "nothing")
        assert not (tmp_path / "nothing").exists() and not (tmp_path / "nothing.partial").exists()


def test_ssh_command_gets_piped_input_and_never_waits_for_absent_input(sample: Project) -> None:
    piped = sample.invoke("vm.ssh", "-c", "cat > /root/piped && wc -c < /root/piped", input="hello\n" * 1000)
    assert piped.returncode == 0 and piped.stdout.strip() == "6000"
    reads_nothing = sample.invoke("vm.ssh", "-c", "cat; echo done", timeout=60)  # stdin is /dev/null here
    assert reads_nothing.returncode == 0 and reads_nothing.stdout == "done\n"


def test_the_mount_suite_passes_and_leaves_the_mount_table_as_it_was(sample: Project) -> None:
    before = in_guest(sample, "mount | sort")
    result = sample.invoke("vm.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    (mounts,) = report_of(result.stdout)["suites"]
    assert (mounts["name"], mounts["status"], mounts["passed"], mounts["failed"]) == ("mounts", "passed", 10, 0)
    assert in_guest(sample, "mount | sort") == before
    assert "no-mount-left" in set(junit_cases(report_of(result.stdout)))


def ctrl_c_vm_test(project: Project, suite: str, config: Path, once: Callable[[subprocess.Popen], None]) -> None:
    """`vm.test --suite SUITE` interrupted as a terminal's Ctrl-C does (SIGINT to its process
    group) `once` says it is time; it must end with exit 130, saying it was interrupted."""
    run = subprocess.Popen([INVOKE, "vm.test", "--suite", suite, "--config", str(config)], cwd=project.root,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        once(run)
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 130 and "interrupted" in err, err


def test_ctrl_c_during_the_mount_suite_leaves_no_mount_in_the_guest(sample: Project) -> None:
    """Ctrl-C on the host (SIGINT to the command's process group, as a terminal sends it)
    closes the SSH session under the running suite; the suite must still tear down."""
    shutil.copy(REPO / "vmlab" / "scripts" / "mount-suite.sh", sample.root / "mount-suite.sh")
    config = sample.root / "mount-suite.yaml"
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    settings["suites"]["mount-suite"] = {"command": "sh mount-suite.sh", "privileged": True}
    config.write_text(yaml.safe_dump(settings))
    assert sample.invoke("vm.sync", "--config", str(config)).returncode == 0
    before = in_guest(sample, "mount | sort")

    def mounted(run: subprocess.Popen) -> None:
        assert run.stdout is not None
        for line in run.stdout:
            if line.startswith("ok - setup-workers"):  # every worker's mounts are in place
                break

    ctrl_c_vm_test(sample, "mount-suite", config, once=mounted)
    deadline = time.monotonic() + 60  # the guest tears down on its own after the session closed
    while in_guest(sample, "mount | sort") != before and time.monotonic() < deadline:
        time.sleep(2)
    assert in_guest(sample, "mount | sort") == before
    assert in_guest(sample, "test -e /var/tmp/vmlab-mount-suite && echo left || echo gone").strip() == "gone"


@pytest.mark.parametrize("user, privileged, command", [
    ("root", False, "sleep 613"),  # a plain command: exec'd by `timeout`, no shell between
    ("lab", True, "sh -c 'exec sleep 613'"),  # through sudo: only root can stop it
])
def test_ctrl_c_stops_the_suite_in_the_guest_too(sample: Project, user: str, privileged: bool, command: str) -> None:
    """Closing the SSH session does not stop what it ran (no terminal, so no hangup): after
    Ctrl-C on `vm.test` the suite must not go on running in the guest."""
    settings = yaml.safe_load((sample.root / "vmlab.yaml").read_text())
    settings["vms"]["default"] = {"ssh_user": user}
    settings["suites"]["sleeper"] = {"command": command, "privileged": privileged}
    config = sample.root / f"sleeper-{user}.yaml"
    config.write_text(yaml.safe_dump(settings))
    running = "ps -eo args= | grep -cx 'sleep 613'"

    def started(run: subprocess.Popen) -> None:
        deadline = time.monotonic() + 60
        while in_guest(sample, running).strip() != "1" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert in_guest(sample, running).strip() == "1", "the suite never started"

    ctrl_c_vm_test(sample, "sleeper", config, once=started)
    assert in_guest(sample, running).strip() == "0"


def test_a_guest_presenting_another_host_key_is_refused(sample: Project, tmp_path: Path) -> None:
    """The lab pins the guest's host key; here the pin is replaced by another key, as if the
    disk had been swapped. Neither vmlab nor the user's ~/.ssh/known_hosts is consulted otherwise."""
    lab = sample.lab()
    machine = lab.vm().machine
    pinned = lab.keys()  # the debian guest's disk is an overlay on an image: it trusts the lab's own keys
    other = keys.ensure(tmp_path / "other-lab", comment="another lab")
    impostor = keys.LabKeys(tmp_path / "mixed")
    impostor.dir.mkdir()
    for name in ("id_ed25519", "id_ed25519.pub"):
        shutil.copy(pinned.dir / name, impostor.dir / name)
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "known_hosts"):
        shutil.copy(other.dir / name, impostor.dir / name)
    with pytest.raises(HostKeyMismatch, match="not the key pinned for this lab") as refused:
        GuestSSH(machine.state()["ssh_port"], "root", impostor).connect()
    assert "vm.destroy" in str(refused.value)  # says what to do


def test_suites_on_a_stopped_vm_exit_2_saying_so(project: Project, vm_ready) -> None:
    """A project of its own whose VM is not running (never started: the same state as after
    vm.stop, from the same pid check), so the module's shared VM keeps running for the others.
    vm.test (what CI runs, after its own vm.start) says the VM is down; vm.quick, the loop,
    starts it instead (test_adoption shows that)."""
    shutil.copytree(SAMPLE, project.root, dirs_exist_ok=True, symlinks=True)
    result = project.invoke("vm.test", "--suite", "unit")
    assert result.returncode == 2
    assert "VM default is not running (stopped); start it: invoke vm.start" in result.stderr
    (report,) = [json.loads(p.read_text()) for p in (project.root / "vm" / "default").glob("results/*/report.json")]
    assert not report["passed"] and not report["complete"]
    assert [(s["name"], s["status"]) for s in report["suites"]] == [("unit", "not run")]
    unknown = project.invoke("vm.test", "--suite", "nosuch")
    assert unknown.returncode == 2 and "no suite named 'nosuch'" in unknown.stderr
    assert "unit" in unknown.stderr  # names the suites there are
