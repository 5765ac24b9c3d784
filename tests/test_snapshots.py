"""Snapshots and restore on a real guest: what a restore undoes, what it keeps, and its faults."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import INVOKE, Project, alive, cache_without_golden_images, kill_vms, prerequisite_missing
from vmlab.lab import snapshotting


def guest(project: Project, command: str, vm: str = "default") -> subprocess.CompletedProcess:
    return project.invoke("vm.ssh", "--vm", vm, "-c", command)


def answer(project: Project, command: str, vm: str = "default") -> str:
    """What `command` prints in the guest. It must print something: exit status 1 from vm.ssh
    is also what vmlab returns when SSH fails, so "absent" is read from words, not from a status."""
    result = guest(project, command, vm)
    assert result.returncode == 0 and result.stdout.strip(), result.stdout + result.stderr
    return result.stdout.strip()


def file_in_guest(project: Project, path: str, vm: str = "default") -> str:
    return answer(project, f"test -e {path} && echo present || echo absent", vm)


def process_in_guest(project: Project, pattern: str) -> str:
    """'running' or 'gone'; `pattern` is written so that it does not match this command's own shell."""
    return answer(project, f"pgrep -f '{pattern}' >/dev/null && echo running || echo gone")


def qemus_of(project: Project) -> int:
    """QEMU processes whose command line names the project folder, counted by pgrep."""
    found = subprocess.run(["pgrep", "-c", "-f", f"qemu-system.*{project.root}"], capture_output=True, text=True)
    return int(found.stdout)


def qemu_status(project: Project, vm: str = "default") -> str:
    return json.loads(project.invoke("vm.status", "--json", "--vm", vm).stdout).get("qemu_status") or "-"


@pytest.fixture(scope="module")
def running(shared_project: Project, vm_ready) -> Project:
    """A running VM with a "clean" snapshot of its own, shared by this module's tests. Of the golden
    image's shape, so it starts by restoring that image's 'clean' (seconds), not by a boot."""
    shared_project.write_config("vms:\n  default: {}\n")
    assert shared_project.invoke("vm.start").returncode == 0
    saved = shared_project.invoke("vm.snapshot")
    assert saved.returncode == 0, saved.stderr
    return shared_project


def test_restore_undoes_files_and_processes_and_sets_the_clock(running: Project) -> None:
    assert guest(running, "echo dirty > /root/dirty; nohup sleep 4321 >/dev/null 2>&1 &").returncode == 0
    time.sleep(3)  # so the guest clock would visibly lag the host's if nobody set it
    restored = running.invoke("vm.restore")
    assert restored.returncode == 0, restored.stderr
    assert file_in_guest(running, "/root/dirty") == "absent"
    assert process_in_guest(running, "sleep [4]321") == "gone"
    clock = guest(running, "date +%s.%N")
    assert abs(float(clock.stdout) - time.time()) < 2.0


def guest_clock_lag(project: Project) -> float:
    """How far the guest's clock is behind the host's (negative: ahead), read over the shared SSH
    connection between two readings of the host's clock (a multiplexed command: ~0.1 s)."""
    lab = project.lab()
    conn = lab.vm().connection()
    out = io.BytesIO()
    before = time.time()
    assert conn.stream("date +%s.%N", output=out, timeout=60) == 0
    after = time.time()
    guest_time = float(out.getvalue())
    if before <= guest_time <= after:
        return 0.0
    return before - guest_time if guest_time < before else after - guest_time


def test_a_busy_guest_restored_again_and_again_has_its_clock_entropy_and_port_right(running: Project) -> None:
    """The after-restore step (clock, randomness, name), which a snapshot's save needs too, over a
    guest whose two vCPUs are busy in the snapshot: the clock is set when the guest asks for it,
    so a slow handshake does not put it behind; every restore's randomness differs; the SSH port
    stays the one it had. (The module's VM has 768 MiB, not the default 1 GiB.)"""
    port = json.loads(running.invoke("vm.status", "--json").stdout)["ssh_port"]
    assert guest(running, "for i in 1 2; do nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & done").returncode == 0
    assert running.invoke("vm.snapshot", "--name", "busy").returncode == 0
    assert abs(guest_clock_lag(running)) < 0.5  # the guest stood still while QEMU saved it (1-2 s), and was set right
    seen = set()
    for _ in range(3):
        time.sleep(2)  # the guest's clock would lag by this much and more if nobody set it
        restored = running.invoke("vm.restore", "--name", "busy")
        assert restored.returncode == 0, restored.stderr
        assert abs(guest_clock_lag(running)) < 0.5
        seen.add(answer(running, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"))
        assert json.loads(running.invoke("vm.status", "--json").stdout)["ssh_port"] == port
    assert len(seen) == 3  # the random pool did not repeat
    assert running.invoke("vm.restore").returncode == 0
    assert process_in_guest(running, "while [:]") == "gone"
    assert running.invoke("vm.snapshot-delete", "--name", "busy").returncode == 0


def test_a_snapshot_that_takes_seconds_to_save_leaves_the_guests_clock_right(running: Project) -> None:
    """QEMU stops the guest while it saves, and the guest's clock stands still meanwhile: a
    snapshot whose RAM is full of random data (which does not compress) takes seconds to
    save, and the guest would come back that far behind the host, so a file synced then has
    a time in the guest's future (tar said so in a suite's output, under load)."""
    assert guest(running, "head -c 300M /dev/urandom > /dev/shm/fill").returncode == 0
    try:
        saved = running.invoke("vm.snapshot", "--name", "full")
        assert saved.returncode == 0, saved.stderr
        assert abs(guest_clock_lag(running)) < 0.5
    finally:
        running.invoke("vm.snapshot-delete", "--name", "full")
        guest(running, "rm -f /dev/shm/fill")


def test_a_guest_whose_agent_does_not_answer_is_set_right_over_ssh(running: Project) -> None:
    """The Debian guest runs QEMU's guest agent, through which a restore sets it right (clock,
    randomness, name). A snapshot taken with the agent stopped restores all the same, over SSH,
    and the restore says why; back at "clean", the agent answers again and no warning is given."""
    assert guest(running, "systemctl stop qemu-guest-agent").returncode == 0
    assert running.invoke("vm.snapshot", "--name", "noagent").returncode == 0
    time.sleep(2)  # the guest's clock would lag by this much if nobody set it
    restored = running.invoke("vm.restore", "--name", "noagent")
    assert restored.returncode == 0, restored.stderr
    assert "the guest agent did not answer" in restored.stderr and "over SSH instead" in restored.stderr
    assert abs(guest_clock_lag(running)) < 0.5
    time.sleep(2)
    back = running.invoke("vm.restore")
    assert back.returncode == 0, back.stderr
    assert "agent did not answer" not in back.stderr
    assert abs(guest_clock_lag(running)) < 0.5
    assert answer(running, "systemctl is-active qemu-guest-agent") == "active"
    assert running.invoke("vm.snapshot-delete", "--name", "noagent").returncode == 0


def test_each_of_many_snapshots_restores_its_own_state(running: Project) -> None:
    names = [f"s{i}" for i in range(5)]
    for name in names:
        assert guest(running, f"echo {name} > /root/which").returncode == 0
        assert running.invoke("vm.snapshot", "--name", name).returncode == 0
    for name in ("s3", "s0", "s4", "s1"):
        assert running.invoke("vm.restore", "--name", name).returncode == 0
        assert answer(running, "cat /root/which") == name
        assert abs(guest_clock_lag(running)) < 0.5
    for name in names:
        assert running.invoke("vm.snapshot-delete", "--name", name).returncode == 0
    assert running.invoke("vm.restore").returncode == 0


def test_a_stopped_vm_whose_memory_changed_is_told_which_size_its_snapshot_needs(running: Project) -> None:
    """Restoring a stopped VM starts a QEMU of the config's RAM size; a snapshot of another size
    cannot load into it, and the error says both sizes and the key (QEMU's own: "Error -22")."""
    assert running.invoke("vm.stop").returncode == 0
    config = running.root / "vmlab.yaml"
    kept = config.read_text()
    config.write_text("defaults: {memory: 768}\n")
    try:
        refused = running.invoke("vm.restore")
        assert refused.returncode == 1, refused.stderr
        assert "snapshot 'clean' holds 1024 MiB of RAM, and the VM has 768 MiB now (`memory:` in vmlab.yaml)" \
            in refused.stderr, refused.stderr
        assert qemus_of(running) == 0
    finally:
        config.write_text(kept)
    restored = running.invoke("vm.restore")
    assert restored.returncode == 0, restored.stderr
    assert abs(guest_clock_lag(running)) < 0.5


def test_twenty_restores_do_not_grow_processes_files_or_disk(running: Project) -> None:
    lab = running.lab()
    machine = lab.vm().machine
    pid = machine.pid()
    snapshotting.restore(lab.vm())

    def measure() -> tuple:
        qemus = subprocess.run(["pgrep", "-c", "-f", f"qemu-system.*{running.root}"], capture_output=True,
                               text=True).stdout
        return int(qemus), len(os.listdir(f"/proc/{pid}/fd")), machine.disk.stat().st_blocks * 512, masters()

    def masters() -> int:
        """SSH control masters of this VM: a restore opens one (the next command uses it) and closes the last."""
        conn = lab.vm().connection()
        assert conn.run("true").ok  # the next command: it uses (or waits for) the one the restore opens
        return len([p for p in conn._processes() if b"[mux]" in Path(f"/proc/{p}/cmdline").read_bytes()])

    before = measure()
    for _ in range(20):
        snapshotting.restore(lab.vm())
    after = measure()
    assert machine.pid() == pid  # live restores: the same QEMU all along
    assert after[0] == before[0] == 1, f"QEMU processes: {before[0]} before, {after[0]} after"
    assert after[3] == before[3] == 1, f"SSH control masters: {before[3]} before, {after[3]} after"
    # user networking keeps a socket per recent SSH connection for a moment: a few either
    # way is that; a leak would be one (or more) per restore, 20 here
    assert after[1] <= before[1] + 3, f"QEMU's open files: {before[1]} before, {after[1]} after 20 restores"
    assert after[2] - before[2] < 32 * 2**20, f"the disk grew by {(after[2] - before[2]) >> 20} MiB"
    assert lab.vm().run("true").ok


def test_restore_to_a_missing_name_changes_nothing(running: Project) -> None:
    assert guest(running, "echo kept > /root/marker; nohup sleep 7777 >/dev/null 2>&1 &").returncode == 0
    pid = json.loads(running.invoke("vm.status", "--json").stdout)["pid"]
    snapshots = json.loads(running.invoke("vm.snapshots", "--json").stdout)
    result = running.invoke("vm.restore", "--name", "nosuch")
    assert result.returncode == 1
    assert "no snapshot named 'nosuch'" in result.stderr and "snapshots: clean" in result.stderr
    assert file_in_guest(running, "/root/marker") == "present"  # not restored to anything
    assert process_in_guest(running, "sleep [7]777") == "running"  # not rebooted
    assert json.loads(running.invoke("vm.status", "--json").stdout)["pid"] == pid and alive(pid)  # the same QEMU
    assert json.loads(running.invoke("vm.snapshots", "--json").stdout) == snapshots
    guest(running, "rm -f /root/marker; pkill -f 'sleep [7]777'")


def test_two_restores_at_once_one_is_refused(running: Project) -> None:
    procs = [subprocess.Popen([INVOKE, "vm.restore"], cwd=running.root, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    assert any("is busy: another vmlab command" in err for _, err in results)
    assert qemu_status(running) == "running"


def test_restore_after_qemu_was_killed_starts_it_from_the_snapshot(running: Project) -> None:
    assert guest(running, "echo dirty > /root/dirty").returncode == 0
    os.kill(running.lab().vm().vmdir.status().pid, signal.SIGKILL)
    restored = running.invoke("vm.restore")
    assert restored.returncode == 0, restored.stderr
    assert "QEMU had died" in restored.stderr
    assert file_in_guest(running, "/root/dirty") == "absent"  # SSH answers, and the file is gone
    assert qemu_status(running) == "running"


def test_suspend_holds_no_qemu_and_resume_keeps_port_and_processes(running: Project) -> None:
    assert guest(running, "nohup sleep 9876 >/dev/null 2>&1 &").returncode == 0
    before = json.loads(running.invoke("vm.status", "--json").stdout)
    boot_id = answer(running, "cat /proc/sys/kernel/random/boot_id")
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", boot_id)
    assert running.invoke("vm.suspend").returncode == 0
    suspended = json.loads(running.invoke("vm.status", "--json").stdout)
    assert suspended["state"] == "suspended" and suspended["pid"] is None
    assert not alive(before["pid"]) and qemus_of(running) == 0  # seen by the host, not by vmlab's records
    resumed = running.invoke("vm.resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(running.invoke("vm.status", "--json").stdout)["ssh_port"] == before["ssh_port"]
    assert process_in_guest(running, "sleep [9]876") == "running"
    assert answer(running, "cat /proc/sys/kernel/random/boot_id") == boot_id  # the same kernel, not a boot
    assert [s["name"] for s in json.loads(running.invoke("vm.snapshots", "--json").stdout)["snapshots"]] == ["clean"]


@pytest.fixture
def small_disk(tmp_path: Path, vm_ready):
    """A project on its own 1 GiB tmpfs, so that its disk can really fill up."""
    if os.geteuid() != 0:
        prerequisite_missing("mounting a small tmpfs needs root")  # skipped, and the run exits 2
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1G", "vmlab-test", str(root)], check=True)
    try:
        yield Project(root)
    finally:
        kill_vms(root)
        for _ in range(50):  # a killed QEMU closes its files a moment after it stops running
            if subprocess.run(["umount", str(root)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"could not unmount the test's tmpfs {root}")


def test_snapshot_on_a_full_disk_fails_and_keeps_the_old_one(small_disk: Project, tmp_path: Path) -> None:
    """The VM boots from its base image (a cache with no golden image): a copy of a golden image
    holds the golden 'clean', whose space in the qcow2 the first snapshot frees when it replaces
    it, and the second would reuse that space and never meet the full disk.

    A guest that writes while the disk is full is stopped by QEMU (run state io-error); a restore,
    once there is room again, lets it run. (Before, the restore left it stopped and waited 300 s
    for an SSH that could not answer: a guest's own timer writing at the wrong moment failed CI.)"""
    cache = cache_without_golden_images(tmp_path / "cache")
    small_disk.write_config(f"cache_dir: {cache}\ndefaults: {{memory: 512}}\n")
    assert small_disk.invoke("vm.start").returncode == 0
    assert small_disk.invoke("vm.snapshot").returncode == 0
    first = json.loads(small_disk.invoke("vm.snapshots", "--json").stdout)["snapshots"]
    filler = small_disk.root / "filler"
    free = os.statvfs(small_disk.root).f_bavail * os.statvfs(small_disk.root).f_frsize
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - 8 * 2**20))  # leave 8 MiB: far less than the RAM state needs
    failed = small_disk.invoke("vm.snapshot")
    assert failed.returncode == 1
    assert "could not save snapshot 'clean'" in failed.stderr and "the previous 'clean' is kept" in failed.stderr
    writer = small_disk.invoke("vm.ssh", "-c", "nohup dd if=/dev/urandom of=/var/tmp/fill bs=1M count=128 "
                                               "oflag=direct </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + 60
    while (status := qemu_status(small_disk)) != "io-error":
        # (once, under a loaded CI run, the guest was not stopped within 60 s: say what was seen)
        assert time.monotonic() < deadline, (f"QEMU did not stop the guest on a write to a full disk: it is "
                                             f"{status!r}; the ssh starting dd: exit {writer.returncode}, "
                                             f"{writer.stderr[-1000:]!r}; {os.statvfs(small_disk.root).f_bavail} "
                                             "blocks free")
        time.sleep(1)
    filler.unlink()
    assert json.loads(small_disk.invoke("vm.snapshots", "--json").stdout)["snapshots"] == first
    restored = small_disk.invoke("vm.restore")
    assert restored.returncode == 0, restored.stderr
    assert "QEMU had stopped the guest (io-error: a write to its disk failed" in restored.stderr
    assert qemu_status(small_disk) == "running"
