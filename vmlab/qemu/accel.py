"""Choosing the accelerator: KVM only once it has been seen to boot a kernel, else TCG.

On some hosts /dev/kvm opens fine and SeaBIOS runs, yet a Linux kernel hangs
right after the boot loader. So `auto` proves KVM by booting a real kernel to
its root-mount panic under KVM and, at the same time, under TCG. KVM must get
there; if TCG gets there first and KVM still has not after a grace period, KVM
is declared broken: a KVM that boots a kernel no faster than software emulation
is either broken or of no use. The probe costs one TCG kernel boot (about 5 s)
and a quarter of it, and its verdict is kept until the host reboots. The verdict
is the host's, not a project's: it is kept in the user's cache folder
(VMLAB_CACHE, else ~/.cache/vmlab), whatever cache_dir a project sets, so no
project probes again what another found.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from vmlab import host, records
from vmlab.errors import PrerequisiteMissing

log = logging.getLogger(__name__)

KVM_DEVICE = Path(os.environ.get("VMLAB_KVM_DEVICE", "/dev/kvm"))
PANIC = "Kernel panic"  # the kernel reached the end of its init without a root disk
PROBE_LIMIT = 90.0  # seconds; the TCG boot normally takes ~5
# How long KVM may trail TCG to the panic, for scheduling noise: KVM runs the guest's code on
# the CPU where TCG translates it, so a KVM that works gets there several times sooner.
GRACE_SHARE, GRACE_MIN = 0.25, 1.0


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str  # one line for the user

    def qemu_args(self) -> list[str]:
        return ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg"]


def kvm_usable() -> Optional[str]:
    """None if /dev/kvm can be opened read-write, else why not."""
    if not KVM_DEVICE.exists():
        return f"{KVM_DEVICE} does not exist"
    try:
        os.close(os.open(KVM_DEVICE, os.O_RDWR))
    except OSError as e:
        return f"{KVM_DEVICE} cannot be opened: {e.strerror}"
    return None


def refuse_unusable(requested: str) -> None:
    """`accel: kvm` with a /dev/kvm this user cannot use: PrerequisiteMissing. Checked before a
    VM is prepared (an image built, a disk made), not only when QEMU's command line is."""
    if requested == "kvm":
        problem = kvm_usable()
        if problem:
            raise PrerequisiteMissing(f"accel: kvm is configured but {problem}; "
                                      "use accel: auto or tcg, or give this user access to the device")


def choose(requested: str, probe_kernel: Callable[[], Optional[Path]], verdict_dir: Path) -> AccelChoice:
    """The accelerator to use for `requested` (auto|kvm|tcg). `probe_kernel` gives a Linux kernel
    at hand to prove KVM with, or None: then KVM is unproven and TCG is used, and nothing is kept.
    A verdict is kept in `verdict_dir` (vmlab's commands: the user's cache folder)."""
    if requested == "tcg":
        return AccelChoice("tcg", "accel: tcg is configured")
    refuse_unusable(requested)
    if requested == "kvm":
        return AccelChoice("kvm", "accel: kvm is configured")
    problem = kvm_usable()
    if problem:
        return AccelChoice("tcg", f"KVM is not available ({problem})")
    verdict_file = verdict_dir / "accel-verdict.json"
    remembered = _remembered(verdict_file)
    if remembered:
        return remembered
    kernel = probe_kernel()
    if kernel is None:
        return AccelChoice("tcg", "KVM is unproven: there is no Linux kernel at hand to prove it with (a cached "
                                  "Debian image brings one: invoke vm.image --vm <a debian VM>); using TCG "
                                  "(software emulation, slower). accel: kvm uses KVM unproven")
    log.info("proving KVM works: booting a kernel under KVM and TCG side by side (once per host boot)")
    choice = probe(kernel)
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    records.write(verdict_file, dict(asdict(choice), boot_id=host.boot_id(), qemu=host.qemu_version(),
                                     probed_at=time.time()))
    return choice


def _remembered(path: Path) -> Optional[AccelChoice]:
    data = records.read(path)
    if not data or data.get("boot_id") != host.boot_id() or data.get("qemu") != host.qemu_version():
        return None
    when = time.strftime("%H:%M", time.localtime(data.get("probed_at", 0)))
    return AccelChoice(data["accel"], f"{data['reason']} (probed at {when}, kept until the host reboots)")


def probe(kernel: Path, limit: float = PROBE_LIMIT) -> AccelChoice:
    """Boot `kernel` under KVM and TCG at once; KVM wins only by reaching the panic banner."""
    with tempfile.TemporaryDirectory(prefix="vmlab-probe-") as tmp:
        runs = {a: _start_probe(a, kernel, Path(tmp) / f"{a}.log") for a in ("kvm", "tcg")}
        started = time.monotonic()
        tcg_done: Optional[float] = None
        try:
            while time.monotonic() - started < limit:
                elapsed = time.monotonic() - started
                if _booted(runs["kvm"], Path(tmp) / "kvm.log"):
                    return AccelChoice("kvm", f"KVM booted a test kernel in {elapsed:.1f}s")
                if tcg_done is None and _booted(runs["tcg"], Path(tmp) / "tcg.log"):
                    tcg_done = elapsed
                if tcg_done is not None and elapsed > tcg_done + max(GRACE_MIN, GRACE_SHARE * tcg_done):
                    return AccelChoice("tcg", f"KVM did not boot a kernel that TCG booted in {tcg_done:.1f}s; "
                                              "using TCG (software emulation, slower)")
                if runs["kvm"].poll() is not None and runs["tcg"].poll() is not None and tcg_done is None:
                    return AccelChoice("tcg", f"KVM is unproven: the probe kernel {kernel} booted under "
                                              "neither KVM nor TCG; using TCG")
                time.sleep(0.1)
            return AccelChoice("tcg", f"KVM did not boot a test kernel within {limit:.0f}s; using TCG")
        finally:
            for proc in runs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait()


def _start_probe(accel: str, kernel: Path, console: Path) -> "subprocess.Popen[bytes]":
    """QEMU with the accelerator's arguments as a VM gets them (KVM: -cpu host, which some hosts'
    KVM refuses outright), booting `kernel` to its panic."""
    return subprocess.Popen(
        [host.which("qemu-system-x86_64") or "qemu-system-x86_64", *AccelChoice(accel, "").qemu_args(), "-m", "256",
         "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
         "-append", "console=ttyS0 panic=-1 quiet", "-serial", f"file:{console}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _booted(proc: "subprocess.Popen[bytes]", console: Path) -> bool:
    """The guest rebooted after panicking: QEMU exited 0 (-no-reboot) with the banner on its console."""
    if proc.poll() != 0:
        return False
    try:
        return PANIC in console.read_text(errors="replace")
    except OSError:
        return False
