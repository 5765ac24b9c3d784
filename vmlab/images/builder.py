"""What vmlab builds on the host from Debian packages (debootstrap), cached by its inputs.

Two guest profiles use it: `debian` builds its disk image (a section `image:` in
its profile.yaml), `rehearsal` builds its install ISO (a section `medium:`).
The inputs are the mirror (from this host's apt configuration unless the config
names one), the suite, the package list and the bytes of the builder and the
files it copies; change any of them and the next use builds anew, otherwise the
cached result is used as-is and never written to.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict

from vmlab import host
from vmlab.errors import ImageBuildError
from vmlab.guests import Profile
from vmlab.images import apt
from vmlab.images.cache import ArtefactCache, key_of
from vmlab.progress import Heartbeat

log = logging.getLogger(__name__)

BUILD_TOOLS = ("debootstrap", "mkfs.ext4", "qemu-img", "xorriso")


def kind(profile: Profile, section: str) -> str:
    return f"{profile.name}-{section}"


def inputs(profile: Profile, section: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that decides what is built, apart from the files' bytes."""
    mirror, suite = options.get("mirror"), options.get("suite")
    if not (mirror and suite):
        host_mirror, host_suite = apt.host_debian_mirror()
        mirror, suite = mirror or host_mirror, suite or host_suite
    return {"profile": profile.name, "section": section, "mirror": mirror, "suite": suite,
            "packages": sorted(profile.section(section).packages), "format": 2}


def key(profile: Profile, section: str, options: Dict[str, Any]) -> str:
    return key_of(inputs(profile, section, options), profile.build_files(section))


def ensure(cache: ArtefactCache, profile: Profile, section: str, options: Dict[str, Any]) -> Path:
    """The folder the builder filled, built first if it is not cached."""
    facts = inputs(profile, section, options)
    k = key_of(facts, profile.build_files(section))
    if cache.has(kind(profile, section), k):
        return cache.path(kind(profile, section), k)
    what = f"the {profile.name} {section}"
    host.require(BUILD_TOOLS + tuple(profile.section(section).host_tools), f"building {what}")
    host.require_root(f"building {what}")
    return cache.get_or_build(kind(profile, section), k, facts,
                              lambda out: _build(cache, profile, section, facts, k, out), f"{what} {k}")


def _build(cache: ArtefactCache, profile: Profile, section: str, facts: Dict[str, Any], k: str, out: Path) -> None:
    log_path = cache.root / "logs" / f"{kind(profile, section)}-{k}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the %s %s (%s from %s); log: %s", profile.name, section, facts["suite"], facts["mirror"],
             log_path)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache.root))
    env = dict(os.environ, MIRROR=facts["mirror"], SUITE=facts["suite"], PACKAGES=",".join(facts["packages"]),
               OUT=str(out), WORK=str(work), HERE=str(profile.dir), DEB_CACHE=str(cache.root / "debs"),
               PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin", LC_ALL="C")
    tail: "deque[str]" = deque(maxlen=25)
    try:
        with open(log_path, "w") as logfile:
            # A process group of its own: on Ctrl-C or SIGTERM vmlab stops the whole build (debootstrap
            # and all) before it unmounts and deletes its folder, whichever process got the signal.
            proc = subprocess.Popen(["sh", str(profile.dir / profile.section(section).builder)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, process_group=0)
            assert proc.stdout is not None
            step, step_started = "starting", time.monotonic()

            def still(_: float) -> str:
                last = tail[-1].strip() if tail else ""
                return (f"  ... {step}: {time.monotonic() - step_started:.0f} s so far"
                        + (f" ({last[:90]})" if last and not last.startswith("vmlab-step:") else ""))

            try:
                with Heartbeat(log, still):
                    for line in proc.stdout:
                        logfile.write(line)
                        tail.append(line.rstrip())
                        if line.startswith("vmlab-step:"):
                            step, step_started = line.split(":", 1)[1].strip(), time.monotonic()
                            log.info("  %s", step)
                    rc = proc.wait()
            except BaseException:
                _stop_group(proc)
                raise
        if rc != 0:
            raise ImageBuildError(f"building the {profile.name} {section} failed (exit {rc})", log=log_path,
                                  detail="\n".join(tail))
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _stop_group(proc: "subprocess.Popen[str]") -> None:
    """TERM the build's process group, KILL it after 10 s; wait for its leader."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _unmount_below(folder: Path) -> None:
    """debootstrap mounts /proc and /sys in its target; an interrupted run must not leave them."""
    prefix = str(folder.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
