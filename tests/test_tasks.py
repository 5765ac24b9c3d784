"""Tasks and exits no other test runs, through the real `invoke` as a user types it.

Exit codes: 0 done, 1 failed, 2 a prerequisite is missing (the message names it and what
to do). The VM tests run a real QEMU guest started from the cached golden image.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from conftest import INVOKE, VMLAB, Project, alive
from vmlab import config, guests
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache
from vmlab.lab import images
from vmlab.qemu.qmp import Monitor


def qemus_of(root: Path) -> int:
    return int(subprocess.run(["pgrep", "-c", "-f", f"qemu-system.*{root}"], capture_output=True, text=True).stdout)


# --- error exits: nothing is running, and nothing is started ---

NO_SUITES = "vms:\n  default: {}\n"


@pytest.mark.parametrize("argv, code, says", [
    (["vm.test"], 2, "name a suite with --suite; configured: none"),
    (["vm.test-all"], 2, "has no suites (add them under 'suites:')"),
    (["vm.build"], 2, "has no 'build:' command"),
    (["vm.quick"], 2, "names no 'quick:' suite"),
    (["vm.resume"], 2, "VM default is not suspended (stopped)"),
    (["vm.snapshot", "--name", "Bad/Name"], 2, "snapshot name 'Bad/Name': use lowercase letters"),
    (["vm.start", "--clone-of", "default"], 2, "--clone-of needs the clone's name: --vm NAME"),
    (["vm.start", "--vm", "default", "--clone-of", "default"], 2, "'default' cannot be a clone: it is a configured VM"),
    (["vm.start", "--vm", "c1", "--clone-of", "nosuch"], 2, "there is no VM named 'nosuch'; configured VMs: default"),
    (["vm.reset"], 1, "Throw away everything on VM default's disk? Refusing without --yes (no terminal to ask)"),
    (["vm.destroy"], 1, "Refusing without --yes (no terminal to ask)"),
    (["vm.snapshot-delete", "--name", "clean"], 1, "VM default has no disk, so no snapshot 'clean'"),
    (["vm.install"], 2, "guest profile 'debian' is not installed from an ISO (its image is built from packages: "
                        "invoke vm.image)"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_task_that_cannot_run_says_why_with_its_exit_code(project: Project, argv: list, code: int,
                                                           says: str) -> None:
    project.write_config(NO_SUITES)
    result = project.invoke(*argv, timeout=120)
    assert (result.returncode, result.stdout) == (code, ""), result.stdout + result.stderr
    assert result.stderr.startswith("vmlab: error: ") and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert qemus_of(project.root) == 0 and not list(project.root.glob("vm/*/disk.qcow2"))


@pytest.mark.parametrize("argv", [["--list"], ["--help", "restore"], ["status"]], ids=" ".join)
def test_a_reader_that_leaves_early_gets_no_traceback(project: Project, argv: list) -> None:
    """`vmlab --list | head -3`: head exits once it has its lines, and the rest of vmlab's output
    meets a closed pipe. Here the pipe is closed before vmlab starts, so the first write meets it:
    vmlab stops quietly (exit 1), as a program writing into a pipe does, with no Python traceback."""
    project.write_config(NO_SUITES)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run([VMLAB, *argv], cwd=project.root, stdout=writer, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(writer)
    assert done.returncode == 1 and done.stderr == "", done.stderr


@pytest.mark.parametrize("program", ["invoke", "vmlab"])
@pytest.mark.parametrize("argv", [["console"], ["ssh"], ["ssh", "-c", "true"], ["snapshot"], ["suspend"], ["sync"],
                                  ["test", "--suite", "unit"], ["test-all"], ["build"], ["restore"]],
                         ids=" ".join)
def test_every_command_that_needs_the_vm_running_names_the_start_command_as_the_user_types_it(
        project: Project, program: str, argv: list) -> None:
    """A VM never started (stopped, no disk). The one wording, from the one place that prints
    errors, names the start command as the program the user ran spells it: under `vmlab`,
    vm.console used to say "start it: invoke vm.start" where `vmlab ssh -c true` said "vmlab start"."""
    project.write_config(NO_SUITES + "suites:\n  unit: {command: 'true'}\nbuild: make\n")
    if program == "vmlab":
        result, start, snapshot = project.invoke(*argv, program=VMLAB), "vmlab start", "vmlab snapshot"
    else:
        result, start, snapshot = project.invoke(f"vm.{argv[0]}", *argv[1:]), "invoke vm.start", "invoke vm.snapshot"
    assert (result.returncode, result.stdout) == (2, ""), result.stdout + result.stderr
    if argv == ["restore"]:  # nothing to restore: start it, then save a snapshot
        says = f"VM default has no disk yet, so no snapshot to restore; start it: {start}, then save one: {snapshot}"
    else:
        says = f"VM default is not running (stopped); start it: {start}"
    assert result.stderr.startswith(f"vmlab: error: {says}\n"), result.stderr
    assert program == "invoke" or "invoke" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Diagnostics" not in result.stderr
    assert qemus_of(project.root) == 0 and not list(project.root.glob("vm/*/disk.qcow2"))


def test_clone_of_a_vm_without_a_golden_image_exits_2_saying_how_to_make_one(project: Project) -> None:
    project.write_config("defaults: {memory: 999}\nvms:\n  default: {}\n")  # no golden image has this shape
    result = project.invoke("vm.start", "--vm", "c1", "--clone-of", "default")
    assert result.returncode == 2, result.stderr
    assert "VM default has no golden image to clone: invoke vm.golden --vm default" in result.stderr
    assert not (project.root / "vm" / "c1").exists()


def test_golden_export_before_any_golden_image_exits_2(project: Project) -> None:
    project.write_config("defaults: {memory: 999}\n")
    result = project.invoke("vm.golden-export", "--output", str(project.root / "out.tar"))
    assert result.returncode == 2, result.stderr
    assert "golden" in result.stderr and "invoke vm.golden" in result.stderr
    assert not (project.root / "out.tar").exists()


# --- tasks that need no VM ---

def test_golden_key_prints_the_key_alone_and_it_follows_the_config(project: Project) -> None:
    """CI caches by this output: one line, the key, nothing else on stdout."""
    project.write_config("defaults: {memory: 1G}\n")
    first = project.invoke("vm.golden-key")
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", first.stdout)
    assert first.stdout.strip() == images.golden_key(project.lab().vm())
    project.write_config("defaults: {memory: 2G}\n")
    assert project.invoke("vm.golden-key").stdout not in ("", first.stdout)


def test_cache_prune_deletes_the_isos_the_config_no_longer_uses(project: Project) -> None:
    """ISOs are made-up files here (a download is test_fetch's business); the release the
    config names is kept, with its partial download, and an older release goes."""
    cache = project.root / "cache"
    isos = cache / "isos"
    isos.mkdir(parents=True)
    current, old = "dfly-x86_64-6.4.2_REL.iso", "dfly-x86_64-6.2.1_REL.iso"
    for name in (current, old, f"{old}.bz2.partial", f"{old}.bz2.partial.json", f"{current}.bz2.partial"):
        (isos / name).write_bytes(b"x" * 4096)
    project.write_config(f"vms:\n  d: {{profile: dragonfly}}\ncache_dir: {cache}\n")
    listed = project.invoke("vm.cache")
    assert listed.returncode == 0 and old in listed.stdout and current in listed.stdout
    pruned = project.invoke("vm.cache", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    deleted = {Path(line.split("deleted ", 1)[1]).name for line in pruned.stdout.splitlines()
               if line.startswith("deleted ")}
    assert deleted == {old, f"{old}.bz2.partial", f"{old}.bz2.partial.json"}
    assert {p.name for p in isos.iterdir()} >= {current, f"{current}.bz2.partial"}
    assert not (isos / old).exists()
    project.write_config(f"vms:\n  d: {{profile: dragonfly}}\nprofiles:\n  dragonfly: {{release: 6.2.1}}\n"
                         f"cache_dir: {cache}\n")  # now the config names another release
    assert project.invoke("vm.cache", "--prune").returncode == 0
    assert not (isos / current).exists()


def test_image_prints_the_cached_image_it_starts_from(project: Project, vm_ready) -> None:
    project.write_config("vms:\n  default: {}\n")
    result = project.invoke("vm.image")
    assert result.returncode == 0, result.stderr
    expected = builder.ensure(ArtefactCache(config.default_cache_dir()), guests.load("debian"), "image", {})
    folder, took = re.fullmatch(r"(\S+) \((\d+\.\d)s\)\n", result.stdout).groups()
    assert Path(folder) == expected and (expected / "vmlinuz").exists()
    assert float(took) < 5  # cached: found, not built


# --- tasks on a running VM ---

@pytest.fixture(scope="module")
def up(shared_project: Project, vm_ready) -> Project:
    """A running VM shared by this module's VM tests (a fresh copy of the golden image, restored)."""
    shared_project.write_config("vms:\n  default: {}\n")
    started = shared_project.invoke("vm.start")
    assert started.returncode == 0, started.stderr
    return shared_project


def attach(project: Project) -> pexpect.spawn:
    """`invoke vm.console` on a terminal (a pty), as a user runs it."""
    console = pexpect.spawn(INVOKE, ["vm.console"], cwd=str(project.root), encoding="utf-8", timeout=60,
                            dimensions=(24, 200))
    console.expect_exact("[attached to the serial console of VM default; Ctrl-] detaches]")
    return console


def test_console_relays_both_ways_and_ctrl_bracket_detaches(up: Project) -> None:
    console = attach(up)
    try:
        console.send("\r")  # getty prints its prompt again: what we typed reached the guest
        console.expect(r"login: ")
        console.sendcontrol("]")
        console.expect_exact("[detached from VM default]")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0
    assert json.loads(up.invoke("vm.status", "--json").stdout)["state"] == "running"  # detaching stops nothing


def test_console_says_when_qemu_stops_under_it(project: Project, vm_ready) -> None:
    project.write_config("vms:\n  default: {}\n")
    assert project.invoke("vm.start").returncode == 0
    console = attach(project)
    try:
        stopped = project.invoke("vm.stop", "--timeout", "0")  # no power-off: QEMU quits at once
        assert stopped.returncode == 0 and stopped.stdout.strip() == "VM default: quit QEMU", stopped.stdout
        console.expect_exact("[the console closed: QEMU stopped]")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0 and qemus_of(project.root) == 0


def test_status_json_all_lists_every_vm(up: Project) -> None:
    result = up.invoke("vm.status", "--json", "--all")
    assert result.returncode == 0, result.stderr
    (default,) = json.loads(result.stdout)["vms"]
    assert default["name"] == "default" and default["state"] == "running" and alive(default["pid"])


def test_snapshot_delete_deletes_the_snapshot_and_only_it(up: Project) -> None:
    def names() -> list:
        return [s["name"] for s in json.loads(up.invoke("vm.snapshots", "--json").stdout)["snapshots"]]

    for name in ("keep-me", "drop-me"):
        assert up.invoke("vm.snapshot", "--name", name).returncode == 0
    try:
        assert {"keep-me", "drop-me"} <= set(names())
        deleted = up.invoke("vm.snapshot-delete", "--name", "drop-me")
        assert deleted.returncode == 0, deleted.stderr
        assert "drop-me" not in names() and "keep-me" in names()
        again = up.invoke("vm.restore", "--name", "drop-me")
        assert again.returncode == 1 and "no snapshot named 'drop-me'" in again.stderr
    finally:
        up.invoke("vm.snapshot-delete", "--name", "keep-me")
        up.invoke("vm.snapshot-delete", "--name", "drop-me")


def test_start_of_a_suspended_vm_resumes_it(up: Project) -> None:
    assert up.invoke("vm.ssh", "-c", "nohup sleep 6543 >/dev/null 2>&1 &").returncode == 0
    assert up.invoke("vm.suspend").returncode == 0
    started = up.invoke("vm.start")
    assert started.returncode == 0, started.stderr
    check = up.invoke("vm.ssh", "-c", "pgrep -f 'sleep [6]543' >/dev/null && echo running || echo gone")
    assert check.stdout.strip() == "running"  # the guest went on, it did not boot
    up.invoke("vm.ssh", "-c", "pkill -f 'sleep [6]543'")


@pytest.mark.parametrize("settings", ["vms:\n  default: {}\n",  # a fresh copy of the golden image: restored
                                      "defaults: {memory: 900}\n"],  # no golden image of this size: a boot
                         ids=["restored", "booted"])
def test_demo_boots_proves_ssh_and_the_console_and_stops(project: Project, vm_ready, settings: str) -> None:
    """`make vm-demo`. A restored guest printed its login prompt before the snapshot: the
    demo failed on it until it pressed Enter on the console, as a user would."""
    project.write_config(settings)
    began = time.monotonic()
    result = project.invoke("vm.demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"started in [\d.]+s under (tcg|kvm) \(pid \d+\)", lines[0]), lines
    port = re.fullmatch(r"SSH on 127\.0\.0\.1:(\d+): default Linux \S+ root", lines[1]).group(1)
    assert int(port) > 1024
    assert lines[2].startswith("serial console (") and "login:" in lines[2]
    assert lines[3].startswith("stopped: ")
    assert json.loads(project.invoke("vm.status", "--json").stdout)["state"] == "stopped"
    assert qemus_of(project.root) == 0
    assert time.monotonic() - began < 600


def test_the_lab_keys_and_the_seed_iso_are_private_whatever_the_umask(project: Project) -> None:
    """README: vm/keys/ is mode 0700 and its keys 0600; the seed ISO (it carries the guest's
    private host key) is 0600. Under umask 000, the worst case, through the lab and the real xorriso."""
    from vmlab.install import seed

    project.write_config("vms:\n  default: {}\n")
    saved = os.umask(0)
    try:
        labkeys = project.lab().keys()
        iso = seed.build(project.root / "seed.iso", {"meta": "x", "run.sh": "true\n"})
    finally:
        os.umask(saved)
    assert labkeys.dir == project.root / "vm" / "keys"
    assert stat.S_IMODE(labkeys.dir.stat().st_mode) == 0o700
    private = [p for p in labkeys.dir.iterdir() if p.is_file() and not p.name.endswith((".pub", ".lock"))
               and p.name != "known_hosts"]
    assert {p.name for p in private} >= {"id_ed25519", "ssh_host_ed25519_key"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in private), [oct(p.stat().st_mode) for p in private]
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600


def test_reset_and_destroy_ask_on_a_terminal_and_no_does_nothing(project: Project) -> None:
    project.write_config("vms:\n  default: {}\n")
    assert project.invoke("vm.setup").returncode == 0
    disk = project.root / "vm" / "default" / "disk.qcow2"
    for task, question in (("vm.reset", "Throw away everything on VM default's disk?"),
                           ("vm.destroy", "Destroy VM default and delete ")):
        asked = pexpect.spawn(INVOKE, [task], cwd=str(project.root), encoding="utf-8", timeout=60)
        asked.expect_exact(question)
        asked.expect_exact("[y/N] ")
        asked.sendline("n")
        asked.expect_exact("vmlab: nothing done")
        asked.expect(pexpect.EOF)
        asked.close()
        assert asked.exitstatus == 1 and disk.exists()
    asked = pexpect.spawn(INVOKE, ["vm.destroy"], cwd=str(project.root), encoding="utf-8", timeout=60)
    asked.expect_exact("[y/N] ")
    asked.sendline("y")
    asked.expect(pexpect.EOF)
    asked.close()
    assert asked.exitstatus == 0 and not (project.root / "vm" / "default").exists()


def test_make_targets_pass_vm_and_snapshot_through_and_make_exits_2_on_any_failure(project: Project) -> None:
    """A project's Makefile that includes vmlab.mk, as `vmlab init` writes it."""
    repo = Path(__file__).resolve().parents[1]
    (project.root / "Makefile").write_text(f"include {repo / 'vmlab' / 'vmlab.mk'}\n")
    project.write_config("vms:\n  default: {}\n  other: {}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VM", "VM_CMD", "MAKEFLAGS")}

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", f"VMLAB={Path(INVOKE).parent / 'vmlab'}", *args], cwd=project.root,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    resumed = make("vm-resume", "VM=other")
    assert resumed.returncode == 2 and "VM other is not suspended" in resumed.stderr, resumed.stderr
    named = make("vm-snapshot", "VM_SNAPSHOT=Bad/Name")
    assert named.returncode == 2 and "snapshot name 'Bad/Name'" in named.stderr, named.stderr
    refused = make("vm-destroy")  # vmlab exits 1 (no terminal to ask); make reports 2
    assert refused.returncode == 2 and "Refusing without --yes" in refused.stderr, refused.stderr
    status = make("vm-status")
    assert status.returncode == 0 and re.search(r"^other\s+stopped", status.stdout, re.M), status.stdout


def test_ssh_without_a_command_is_an_interactive_shell_that_leaves_known_hosts_alone(up: Project) -> None:
    """`invoke vm.ssh` on a terminal: OpenSSH with the lab's own keys and pinned host key, so the
    user's ~/.ssh/known_hosts (OpenSSH finds it through the passwd entry) is neither read nor written."""
    known = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"

    def snapshot() -> tuple:
        return (known.read_bytes(), known.stat().st_mtime_ns) if known.exists() else None

    before = snapshot()
    shell = pexpect.spawn(INVOKE, ["vm.ssh"], cwd=str(up.root), encoding="utf-8", timeout=60)
    try:
        shell.sendline("echo in-the-guest-$(hostname)-$(id -un)")
        shell.expect_exact("in-the-guest-default-root")
        shell.sendline("exit 7")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 7  # the shell's own status
    assert snapshot() == before
    assert "continue connecting" not in (shell.before or "")  # no question about the host key


def test_a_project_too_deep_for_a_unix_socket_is_told_to_move(tmp_path: Path, vm_ready) -> None:
    """QEMU's sockets live in vm/NAME/; a unix socket path has at most 107 bytes."""
    root = tmp_path / ("deep-" * 12) / "project"
    root.mkdir(parents=True)
    project = Project(root)
    project.write_config("vms:\n  default: {}\n")
    result = project.invoke("vm.start")
    assert result.returncode == 1, result.stderr
    assert "is too long for a unix socket (107 bytes at most); move the project to a shorter path" in result.stderr
    assert qemus_of(root) == 0


def test_stop_quits_a_guest_that_ignores_the_power_button_and_kills_a_qemu_that_does_not_answer(
        project: Project, vm_ready) -> None:
    """A paused guest cannot react to ACPI (paused through QMP); a QEMU stopped with SIGSTOP
    answers no QMP command: vm.stop gets past both and says which way it took."""
    project.write_config("vms:\n  default: {}\n")
    lab = project.lab()
    machine = lab.vm().machine
    assert project.invoke("vm.start").returncode == 0
    with Monitor(machine.qmp_socket) as mon:
        mon.command("stop")
    pid = machine.pid()
    quit_ = project.invoke("vm.stop", "--timeout", "5")
    assert quit_.returncode == 0 and quit_.stdout == "VM default: quit QEMU (the guest did not power off)\n"
    assert not alive(pid)

    assert project.invoke("vm.reset", "--yes").returncode == 0  # a fresh golden copy: its start restores, not boots
    assert project.invoke("vm.start").returncode == 0
    pid = machine.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        killed = project.invoke("vm.stop", "--timeout", "1", timeout=120)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert killed.returncode == 0 and killed.stdout == "VM default: killed QEMU\n", killed.stdout + killed.stderr
    assert not alive(pid) and json.loads(project.invoke("vm.status", "--json").stdout)["state"] == "stopped"


def test_setup_offline_without_the_iso_exits_2_and_downloads_nothing(project: Project) -> None:
    project.write_config("vms:\n  d: {profile: dragonfly}\nprofiles:\n  dragonfly: {mirrors: ['http://127.0.0.1:9']}\n"
                         "cache_dir: cache\n")  # a mirror nobody answers on, were it asked
    result = project.invoke("vm.setup", "--offline")
    assert result.returncode == 2, result.stderr
    assert "dfly-x86_64-6.4.2_REL.iso is not in the cache" in result.stderr
    assert "offline mode forbids downloading it; run once without --offline to fetch it" in result.stderr
    assert not list((project.root / "cache").glob("isos/*.partial")) and not (project.root / "vm" / "d").exists()
