"""vm.doctor: what is wrong with this host, the config, the cache and each VM, and how to fix it.

Each finding is one line a user can act on: what was checked, what was found,
and, when it is a problem, the command or change that fixes it.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from vmlab import __version__, host
from vmlab.config import default_cache_dir
from vmlab.errors import VmlabError
from vmlab.images import fetch, warm
from vmlab.lab import Lab, images, lifecycle, warming
from vmlab.qemu import accel
from vmlab.schema import GUESTS_DIR

MIN_FREE_DISK = 10 * 2**30


@dataclass(frozen=True)
class Finding:
    topic: str
    detail: str
    ok: bool = True
    fix: str = ""
    prerequisite: bool = False  # a missing tool or resource: exit code 2

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.topic:<12} {self.detail}" + (f"\n     fix: {self.fix}" if self.fix else "")


def examine(lab: Lab) -> List[Finding]:
    return [*_host(), _accelerator(lab), *_space(lab), _memory(lab), *_config_and_cache(lab), *installs(lab),
            *_vms(lab), *warm_states(lab)]


def exit_code(findings: List[Finding]) -> int:
    if any(not f.ok and f.prerequisite for f in findings):
        return 2
    return 0 if all(f.ok for f in findings) else 1


def _host() -> List[Finding]:
    found = []
    for tool, package in host.PACKAGES.items():
        where = host.which(tool)
        found.append(Finding("host", f"{tool}: {where}") if where else
                     Finding("host", f"{tool} is missing", ok=False, prerequisite=True,
                             fix=f"apt-get install {package} (or, as root: vmlab host-setup --install)"))
    if host.which("qemu-system-x86_64"):
        found.append(Finding("qemu", f"version {host.qemu_version()}"))
    return found


def _accelerator(lab: Lab) -> Finding:
    problem = accel.kvm_usable()
    if problem:
        return Finding("accelerator", f"no KVM ({problem}): guests run under TCG, software emulation (slower)")
    try:
        choice = accel.choose("auto", lab.probe_kernel, default_cache_dir())
    except VmlabError as e:
        return Finding("accelerator", f"KVM could not be probed: {e}", ok=False,
                       fix="build a guest image first (invoke vm.image), which brings the probe's kernel")
    if choice.accel == "kvm":
        return Finding("accelerator", f"KVM works: {choice.reason}")
    return Finding("accelerator", f"/dev/kvm is there but KVM does not boot a kernel on this host, so vmlab "
                                  f"uses TCG: {choice.reason}")


def _space(lab: Lab) -> List[Finding]:
    found = []
    for what, path in (("vm/", lab.config.state_dir), ("cache", lab.config.cache_dir)):
        existing = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        # Rounded down: 10 GiB less a page read "10.0 GiB free" on a line that failed for want of 10.
        text = f"{math.floor(free / 2**30 * 10) / 10:.1f} GiB free where {what} lives ({path})"
        found.append(Finding("disk", text) if free >= MIN_FREE_DISK else
                     Finding("disk", text, ok=False, prerequisite=True,
                             fix=f"free space there (vmlab wants {MIN_FREE_DISK >> 30} GiB), or prune the "
                                 "cache: invoke vm.cache --prune"))
    return found


def _memory(lab: Lab) -> Finding:
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    biggest = max(vm.memory_mib for vm in lab.config.vms.values()) * 2**20
    text = f"{available / 2**30:.1f} GiB available; the largest VM wants {biggest / 2**30:.1f} GiB"
    return Finding("memory", text) if available >= biggest else Finding(
        "memory", text, ok=False, fix="stop other VMs (invoke vm.status) or lower 'memory' in vmlab.yaml")


def _config_and_cache(lab: Lab) -> List[Finding]:
    entries = sum(1 for _ in lab.config.cache_dir.glob("*/*/manifest.json")) if lab.config.cache_dir.exists() else 0
    return [Finding("config", f"{lab.config.source}: {len(lab.config.vms)} VM(s), {len(lab.config.suites)} suite(s)"),
            Finding("cache", f"{lab.config.cache_dir}: {entries} image(s); list them: invoke vm.cache")]


def installs(lab: Lab) -> List[Finding]:
    """For each VM installed from a downloaded ISO: the ISO, its sha256, the mirror it came from
    and the recipe's version, which a report of a failed install needs (docs/dragonfly.md)."""
    found = []
    sources = {entry["name"]: entry.get("source") for entry in fetch.cached(lab.config.cache_dir)}
    for vm in (lab.vm(name) for name in lab.config.vms):
        profile = vm.profile
        if not profile.iso or not profile.install:
            continue
        rec = images.install_recipe(vm)
        using = f"recipe {rec.path.name} {rec.version} (vmlab {__version__})"
        try:
            iso = images.fetch_iso(vm, offline=True)
        except VmlabError:
            found.append(Finding(f"vm {vm.name}", f"its ISO is not fetched yet; {using}",
                                 fix=f"invoke vm.fetch --vm {vm.name}"))
            continue
        found.append(Finding(f"vm {vm.name}", f"ISO {iso.path.name} sha256:{iso.sha256} from "
                                              f"{sources.get(iso.path.name) or 'an unknown mirror'}; {using}"))
    return found


GO_TRIM_DAYS = 5  # Go deletes build cache entries unused for 5 days (cmd/go/internal/cache: trimLimit)


def warm_states(lab: Lab) -> List[Finding]:
    """For each VM with a `warm:` command: how old its warm state is, or why it has none, and
    whether the VM's disk was made from it."""
    found = []
    for vm in (lab.vm(name) for name in lab.config.vms):
        try:
            spec = images.warm_suite_of(vm)
        except VmlabError:
            continue  # a guest profile that cannot be read: _guest says so
        if spec is None:
            continue
        gold = images.golden_of(vm)
        state = images.warm_state(vm, gold) if gold else None
        if state is None:
            made = [s for s in warm.states(lab.config.state_dir) if s.record.get("vm") == vm.name]
            why = ("its golden image is not made yet" if gold is None else
                   "`warm:` changed since the last one was made" if made else "none was made yet")
            found.append(Finding(f"vm {vm.name}", f"warm state: none for `{spec.command}` ({why}); every restore "
                                                  "starts with empty build caches",
                                 fix=f"make vm-golden VM={vm.name} (vmlab golden --vm {vm.name})"))
            continue
        days = (time.time() - state.made_at) / 86400
        stale = (f"; older than {GO_TRIM_DAYS} days: Go deletes build cache entries unused that long, so the "
                 "first Go build after a restore may start cold") if days > GO_TRIM_DAYS else ""
        origin = vm.vmdir.origin()
        disk = "" if origin is None or origin.warm == state.key else \
            f"; VM {vm.name}'s disk was made before it (vmlab reset --vm {vm.name} starts from it)"
        found.append(Finding(f"vm {vm.name}", f"warm state made {warming.age_text(state.made_at)} by "
                                              f"`{state.record.get('command')}` "
                                              f"({state.record.get('seconds', '?')} s), in {state.dir}{stale}{disk}",
                             fix=f"vmlab golden --rewarm --vm {vm.name}" if stale else ""))
    return found


def _vms(lab: Lab) -> List[Finding]:
    found = [_guest(lab, name) for name in lab.config.vms]
    for status in lifecycle.statuses(lab):
        if status.state == "crashed":
            found.append(Finding(f"vm {status.name}", status.detail, ok=False,
                                 fix=f"invoke vm.start --vm {status.name} (it cleans up), or vm.destroy"))
        elif status.state == "running" and status.qemu_status != "running":
            found.append(Finding(f"vm {status.name}", f"QEMU runs but the guest is {status.qemu_status}", ok=False,
                                 fix=f"invoke vm.restore --vm {status.name}, or vm.stop and vm.start"))
        else:
            found.append(Finding(f"vm {status.name}", f"{status.state}"
                                 + (f", ssh 127.0.0.1:{status.ssh_port}" if status.state == "running" else "")))
    return found


def _guest(lab: Lab, name: str) -> Finding:
    """Which folder a VM's guest profile comes from: a project's own replaces vmlab's of that name."""
    vm = lab.vm(name)
    try:
        profile = vm.profile
    except VmlabError as e:
        return Finding(f"vm {name}", f"guest {vm.config.profile!r}: {e}", ok=False, fix="see 'guests:' in vmlab.yaml")
    own = GUESTS_DIR not in profile.dir.parents
    return Finding(f"vm {name}", f"guest {profile.name} from {profile.dir}"
                   + (" (the project's own; it replaces vmlab's of that name)" if own and
                      (GUESTS_DIR / profile.name).is_dir() else " (the project's own)" if own else " (vmlab's)"))
