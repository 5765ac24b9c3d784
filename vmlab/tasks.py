"""Invoke tasks: argument parsing and printing only; each is a thin call into Lab.

They are the `vmlab` command's subcommands (cli.py). A project with a tasks.py of its
own mounts them as `vm.*`: `from vmlab.tasks import vm_tasks; ns.add_collection(vm_tasks)`
(or, with no tasks of its own, a one-line tasks.py: `from vmlab.tasks import ns`).
Exit codes: 0 done, 1 failed, 2 could not start (something missing or misconfigured).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from invoke import Collection, Exit, task

from vmlab import config as config_mod
from vmlab import golden as golden_images
from vmlab import results
from vmlab.config import SuiteConfig
from vmlab.errors import Terminated, VmlabError
from vmlab.lab import Lab
from vmlab.schema import known_profiles
from vmlab.spelling import AsTyped, as_typed

VM_HELP = "VM name from vmlab.yaml (default: $VM, else the first VM)"
CONFIG_HELP = "config file (default: $VMLAB_CONFIG, else ./vmlab.yaml, else built-in defaults)"


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="vmlab: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(AsTyped())
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # its transport noise is not for users
    logging.getLogger("qemu").setLevel(logging.CRITICAL)
    # A Ctrl-C inside qemu.qmp's own event loop leaves a task behind whose exception asyncio
    # would report at exit ("Task exception was never retrieved"): vmlab has said what happened.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _lab(config: Optional[str]) -> Lab:
    return Lab(config_mod.load(config))


def _vm(vm: Optional[str]) -> Optional[str]:
    return vm or os.environ.get("VM") or None


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def cli(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn vmlab's errors into a message and an exit code instead of a traceback; SIGTERM
    cleans up as Ctrl-C does (nothing left running), then exits 143 (Ctrl-C: 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except VmlabError as e:
            raise Exit(f"vmlab: error: {as_typed(str(e))}", code=e.exit_code) from None
        except Terminated:
            raise Exit("vmlab: terminated", code=143) from None
        except KeyboardInterrupt:
            raise Exit("vmlab: interrupted", code=130) from None
        except OSError as e:  # the host refused (a full disk, a permission): say so, no traceback
            raise Exit(f"vmlab: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), code=1) \
                from None

    return wrapper


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "clone_of": "make VM NAME a clone of this configured VM (started from its golden image)"})
@cli
def start(c, vm=None, config=None, clone_of=None):
    """Start a VM and wait until SSH answers.

    Builds its image first if needed; a fresh copy of a golden image starts by restoring.
    """
    lab = _lab(config)
    if clone_of:
        if not _vm(vm):
            raise Exit("vmlab: error: --clone-of needs the clone's name: --vm NAME", code=2)
        lab.clone(_vm(vm), clone_of)
    lab.start(_vm(vm))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP,
            "timeout": "seconds to wait for the guest to power off before forcing QEMU to quit"})
@cli
def stop(c, vm=None, config=None, timeout=60.0):
    """Stop a VM: ACPI power-off, then quit, then kill.

    Always removes its sockets and pid file.
    """
    lab = _lab(config)
    how = lab.stop(_vm(vm), soft_timeout=float(timeout))
    print(f"VM {lab.vm(_vm(vm)).name}: {how}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print one JSON object for the VM",
            "all": "with --json: every VM, as {\"vms\": [...]}"})
@cli
def status(c, vm=None, config=None, json_=False, all_=False):
    """Show VMs: state, pid, SSH port, accelerator.

    A table, or one JSON object with --json.
    """
    lab = _lab(config)
    if json_:
        if all_:
            print(json.dumps({"vms": [s.as_dict() for s in lab.statuses()]}, indent=2))
        else:
            print(json.dumps(lab.status(_vm(vm)).as_dict(), indent=2))
        return
    rows = [("NAME", "STATE", "PID", "SSH", "ACCEL", "QEMU", "UP")]
    for s in lab.statuses() if not _vm(vm) else [lab.status(_vm(vm))]:
        up = _duration(time.time() - s.started_at) if s.started_at else "-"
        ssh = f"127.0.0.1:{s.ssh_port}" if s.ssh_port else "-"
        rows.append((s.name, s.state, str(s.pid or "-"), ssh, s.accel or "-", s.qemu_status or "-", up))
    _table(rows)
    for s in lab.statuses():
        if s.state == "crashed":
            print(f"\n{s.name}: {s.detail}")


def _table(rows: list) -> None:
    """Print rows of strings as left-aligned columns, the first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@task(help={"command": "run this one command and exit with its status (default: interactive shell)",
            "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def ssh(c, command=None, vm=None, config=None):
    """Open a shell in the VM, or run one command (-c).

    With -c CMD it exits with the command's status; piped input goes to the command.
    """
    lab = _lab(config)
    if command is None:
        argv = lab.ssh_argv(_vm(vm))
        os.execv(argv[0], argv)
    piped = None if sys.stdin.isatty() else sys.stdin.buffer  # `cat f | invoke vm.ssh -c 'cat > f'`
    result = lab.run(command, _vm(vm), stdout=sys.stdout.buffer, stderr=sys.stderr.buffer, stdin=piped)
    if result.exit_status != 0:
        raise Exit(code=result.exit_status if result.exit_status > 0 else 1)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def console(c, vm=None, config=None):
    """Attach to the serial console (Ctrl-] detaches).

    Everything the guest prints is also in vm/NAME/console.log.
    """
    from vmlab.console import attach  # pexpect: only this task needs it

    lab = _lab(config)
    v = lab.vm(_vm(vm))
    machine = lab.vmdir(v).machine
    if machine.pid() is None:
        raise Exit(f"vmlab: error: VM {v.name} is not running; start it: invoke vm.start", code=2)
    attach(machine.console_socket, v.name)


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Exit(f"vmlab: error: {question} Refusing without --yes (no terminal to ask)", code=1)
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise Exit("vmlab: nothing done", code=1)


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def destroy(c, yes=False, vm=None, config=None):
    """Stop a VM and delete its disk and state folder.

    Cached and golden images are kept.
    """
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    _confirm(yes, f"Destroy VM {v.name} and delete {lab.vmdir(v).dir}?")
    how = lab.destroy(v.name)
    print(f"VM {v.name}: {how}; deleted {lab.vmdir(v).dir}")


SNAP_HELP = "snapshot name (default: clean)"


@task(help={"name": SNAP_HELP, "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def snapshot(c, name="clean", vm=None, config=None):
    """Save the running VM's whole state as a snapshot.

    Disk, RAM and devices; a previous snapshot of that name survives any failure.
    """
    snap = _lab(config).snapshot(_vm(vm), name)
    print(f"saved {snap.name}: {snap.vm_state_bytes >> 20} MiB of RAM state")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "json": "print JSON"})
@cli
def snapshots(c, vm=None, config=None, json_=False):
    """List the VM's snapshots: name, date, size, clock."""
    found = [s.as_dict() for s in _lab(config).list_snapshots(_vm(vm))]
    if json_:
        print(json.dumps({"snapshots": found}, indent=2))
        return
    rows = [("NAME", "DATE", "SIZE", "GUEST CLOCK")] + [
        (s["name"], s["date"], f"{s['size_bytes'] >> 20} MiB", f"{s['guest_clock_seconds']}s") for s in found]
    _table(rows)


@task(name="snapshot-delete", help={"name": "snapshot to delete (required)", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def snapshot_delete(c, name, vm=None, config=None):
    """Delete a named snapshot."""
    _lab(config).snapshot_delete(name, _vm(vm))
    print(f"deleted {name}")


@task(help={"name": SNAP_HELP, "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def restore(c, name="clean", vm=None, config=None):
    """Put the VM back to a snapshot, in seconds.

    Live if it runs, else QEMU starts from the snapshot; SSH answers and the clock is right
    when it returns.
    """
    t = _lab(config).restore(_vm(vm), name)
    loaded = f" (state loaded in {t['load_seconds']}s)" if "load_seconds" in t else " (QEMU started from it)"
    print(f"restored {name} in {t['total_seconds']}s{loaded}")


@task(help={"yes": "do not ask for confirmation", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def reset(c, yes=False, vm=None, config=None):
    """Give the VM a fresh disk from its golden or base image.

    Stops it first; the images themselves are never touched.
    """
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    _confirm(yes, f"Throw away everything on VM {v.name}'s disk?")
    print(f"VM {v.name}: {lab.reset(v.name)}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def suspend(c, vm=None, config=None):
    """Save the VM's running state to disk and stop QEMU."""
    lab = _lab(config)
    lab.suspend(_vm(vm))
    print(as_typed(f"VM {lab.vm(_vm(vm)).name}: suspended; `invoke vm.resume` brings it back"))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def resume(c, vm=None, config=None):
    """Bring a suspended VM back, same SSH port."""
    st = _lab(config).resume(_vm(vm))
    print(f"VM {st.name}: resumed, ssh 127.0.0.1:{st.ssh_port}")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def install(c, vm=None, config=None):
    """Install the guest from its ISO over the serial console.

    The installed disk is a cached checkpoint keyed by the ISO and the recipe.
    """
    print(_lab(config).install(_vm(vm)))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def provision(c, vm=None, config=None):
    """Provision: the config's packages, from the base image.

    Boots from the installed (or built) disk; a failed provision never redoes the install.
    """
    print(f"provisioned ({_lab(config).provision(_vm(vm))})")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def verify(c, vm=None, config=None):
    """Run vmlab's privileged mount suite in the VM.

    Every golden image must pass it.
    """
    _finish(_lab(config).verify(_vm(vm)))


@task(name="golden", help={"from_scratch": "reset the VM and run every phase: fetch, install, provision, verify",
                           "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def golden_task(c, from_scratch=False, vm=None, config=None):
    """Make the VM's golden image: provisioned, verified.

    Verified by the mount suite, with a clean snapshot; cached by its key. The VM is left
    stopped: vm.start then starts it from the golden image by restoring.
    """
    gold = _lab(config).make_golden(_vm(vm), from_scratch=from_scratch)
    print(f"golden image {gold.key}: {gold.dir}")


@task(name="golden-key", help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def golden_key(c, vm=None, config=None):
    """Print the golden image's key (a CI cache key).

    A hash of everything that makes it; nothing is built. An ISO's checksum is part of it, so
    a guest installed from one has its ISO fetched (verified) first: CI's first step on a fresh runner.
    """
    lab = _lab(config)
    if lab.profile(lab.vm(_vm(vm))).iso:
        lab.fetch_iso(_vm(vm))
    print(lab.golden_key(_vm(vm)))


@task(name="golden-export", help={"output": "file to write (default: golden-KEY.tar)", "vm": VM_HELP,
                                  "config": CONFIG_HELP})
@cli
def golden_export(c, output=None, vm=None, config=None):
    """Write the VM's golden image to one file."""
    lab = _lab(config)
    v = lab.vm(_vm(vm))
    gold = lab.golden_of(v)
    if gold is None:
        raise Exit(f"vmlab: error: VM {v.name} has no golden image yet; make it: invoke vm.golden", code=2)
    path = golden_images.export(gold, Path(output or f"golden-{gold.key}.tar"))
    print(f"{path} ({path.stat().st_size >> 20} MiB, golden image {gold.key})")


@task(name="golden-import", help={"input": "a file written by vm.golden-export", "config": CONFIG_HELP})
@cli
def golden_import(c, input, config=None):
    """Load an exported golden image, verifying it."""
    gold = golden_images.import_(_lab(config).cache, Path(input))
    print(f"golden image {gold.key}: {gold.dir}")


RESTORE_HELP = "after a privileged suite fails, restore the 'clean' snapshot (default: restore_on_failure)"


def _finish(report: dict) -> None:
    """Print the run's summary; exit 1 unless every suite passed."""
    for line in results.summary(report):
        print(line)
    if not report["passed"]:
        raise Exit(code=1)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def sync(c, vm=None, config=None):
    """Copy the project into the guest with rsync.

    Incremental, with --delete; .git and vm/ are never sent.
    """
    print(_lab(config).sync(_vm(vm)))


@task(iterable=["suite"], help={"suite": "suite from vmlab.yaml (repeat for several)", "vm": VM_HELP,
                                "config": CONFIG_HELP, "restore_on_failure": RESTORE_HELP})
@cli
def test(c, suite, vm=None, config=None, restore_on_failure=False):
    """Run test suites from vmlab.yaml in the guest.

    Report, JUnit and logs go to vm/NAME/results/RUN/.
    """
    lab = _lab(config)
    if not suite:
        raise Exit(f"vmlab: error: name a suite with --suite; configured: {', '.join(lab.config.suites) or 'none'}",
                   code=2)
    chosen = [lab.config.suite(name) for name in suite]
    _finish(lab.run_suites(chosen, _vm(vm), restore_on_failure or lab.config.restore_on_failure))


def _require_suites(cfg: config_mod.LabConfig) -> None:
    if not cfg.suites:
        raise Exit(f"vmlab: error: {cfg.source} has no suites (add them under 'suites:')", code=2)


@task(name="test-all", help={"vm": VM_HELP, "config": CONFIG_HELP, "restore_on_failure": RESTORE_HELP})
@cli
def test_all(c, vm=None, config=None, restore_on_failure=False):
    """Run every suite in vmlab.yaml, in order."""
    lab = _lab(config)
    _require_suites(lab.config)
    _finish(lab.run_suites(list(lab.config.suites.values()), _vm(vm),
                           restore_on_failure or lab.config.restore_on_failure))


@task(help={"config": CONFIG_HELP, "json": "one line of JSON, {\"include\": [...]}: a CI matrix for fromJSON"})
@cli
def suites(c, config=None, json_=False):
    """List the suites (--json: a CI matrix of them)."""
    cfg = config_mod.load(config)
    _require_suites(cfg)  # an empty matrix would fail on GitHub with a message that names no file
    matrix = config_mod.suite_matrix(cfg)
    if json_:
        print(json.dumps({"include": matrix}))  # one line: a $GITHUB_OUTPUT value
        return
    _table([("NAME", "PRIVILEGED", "TIMEOUT", "COMMAND")] + [
        (m["suite"], "yes" if m["privileged"] else "no", f"{m['timeout']}s", cfg.suites[m["suite"]].command)
        for m in matrix])


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def build(c, vm=None, config=None):
    """Run the configured build command in the guest."""
    lab = _lab(config)
    if not lab.config.build:
        raise Exit(f"vmlab: error: {lab.config.source} has no 'build:' command", code=2)
    _finish(lab.run_suites([SuiteConfig(name="build", command=lab.config.build, timeout=3600)], _vm(vm)))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP, "restore_on_failure": RESTORE_HELP})
@cli
def quick(c, vm=None, config=None, restore_on_failure=False):
    """The edit-test loop: start the VM if it is not running, sync, then the 'quick' suite."""
    lab = _lab(config)
    if not lab.config.quick:
        raise Exit(f"vmlab: error: {lab.config.source} names no 'quick:' suite", code=2)
    lab.up(_vm(vm))
    _finish(lab.run_suites([lab.config.suite(lab.config.quick)], _vm(vm),
                           restore_on_failure or lab.config.restore_on_failure, sync_first=True))


@task(help={"suite": "the suite to run on every change (default: the config's 'quick')",
            "finish": "let a run finish when a change comes, then run again (default: cancel it and start over)",
            "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def watch(c, suite=None, finish=False, vm=None, config=None):
    """Run the quick suite on every save, until Ctrl-C.

    Keeps the SSH connection open and sends only what changed; one result line per run.
    """
    lab = _lab(config)
    name = suite or lab.config.quick
    if not name:
        raise Exit(f"vmlab: error: {lab.config.source} names no 'quick:' suite; name one with --suite", code=2)
    lab.up(_vm(vm))
    logging.getLogger().setLevel(logging.WARNING)  # each run's result line says what it synced
    lab.watch(lab.config.suite(name), _vm(vm), finish=finish)


@task(help={"offline": "use only the cache; never download", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def fetch(c, offline=False, vm=None, config=None):
    """Download the guest's ISO: verified, resumable."""
    got = _lab(config).fetch_iso(_vm(vm), offline=offline)
    print(f"{got.path} (sha256 {got.sha256}, from {got.source})")


@task(help={"offline": "use only the cache; never download", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def setup(c, offline=False, vm=None, config=None):
    """Fetch (or build) the installer and make the disk."""
    for key, value in _lab(config).setup(_vm(vm), offline=offline).items():
        print(f"{key}: {value}")


@task(help={"prune": "delete cached ISOs and partial downloads the config no longer uses",
            "config": CONFIG_HELP, "json": "print JSON"})
@cli
def cache(c, prune=False, config=None, json_=False):
    """List the cache: ISOs, images, golden images.

    --prune deletes ISOs and partial downloads the config no longer uses.
    """
    lab = _lab(config)
    if prune:
        for path in lab.prune_isos():
            print(f"deleted {path}")
    listing = lab.cache_listing()
    if json_:
        print(json.dumps(listing, indent=2, default=str))
        return
    print(f"cache: {lab.cache.root}")
    rows = [("KIND", "NAME", "SIZE / BUILT", "SHA256 / PATH")]
    rows += [("iso", iso["name"], f"{iso.get('size', 0) >> 20} MiB", str(iso.get("sha256"))[:16])
             for iso in listing["isos"]]
    rows += [(kind, entry["key"], entry["built_at"], entry["path"])
             for kind, entries in listing["artefacts"].items() for entry in entries]
    if len(rows) > 1:
        _table(rows)


@task(help={"config": CONFIG_HELP})
@cli
def doctor(c, config=None):
    """Check host, config, cache and VMs; say the fix."""
    from vmlab import doctor as checks  # imports the lab: keep `invoke --list` quick

    findings = checks.examine(_lab(config))
    for finding in findings:
        print(as_typed(finding.line()))
    code = checks.exit_code(findings)
    if code:
        raise Exit(f"vmlab: {sum(not f.ok for f in findings)} problem(s) found; each has its fix above", code=code)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def demo(c, vm=None, config=None):
    """Boot the VM afresh, prove SSH and the console."""
    for line in _lab(config).demo(_vm(vm)):
        print(line)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def image(c, vm=None, config=None):
    """Build (or find) the image a new VM disk starts from."""
    lab = _lab(config)
    started = time.monotonic()
    folder = lab.base(_vm(vm))
    print(f"{folder} ({time.monotonic() - started:.1f}s)")


@task(help={"guest": f"the guest to test on: {', '.join(known_profiles())} (default: dragonfly; "
                     "debian is built offline)",
            "yes": "replace files that exist without asking"})
@cli
def init(c, guest="dragonfly", yes=False):
    """Set this project up: vmlab.yaml, the vm-* Make targets.

    Also puts vm/ in .gitignore. Never overwrites a file without asking; run twice, it changes nothing.
    """
    from vmlab import guests
    from vmlab import init as project_setup

    profile = guests.load(guest)  # an unknown guest is refused, naming the known ones

    def confirm(question: str) -> bool:
        if yes:
            return True
        return sys.stdin.isatty() and input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    done = project_setup.init(Path.cwd(), guest, profile.os, confirm)
    for line in done or ["nothing to do: this project is set up already"]:
        print(f"vmlab: {line}")
    loop = "vmlab quick" if any(line.startswith("did not include") for line in done) else "make vm-quick"
    print(f"next: `{loop}` (the first run makes or fetches the guest, then boots it); `vmlab --list` lists "
          "every task")


@task(name="host-setup", help={"install": "install the missing packages with apt-get (needs root)"})
@cli
def host_setup(c, install=False):
    """Check the host's Debian packages (--install adds them)."""
    from vmlab import host

    missing = host.missing_packages()
    if not missing:
        print("vmlab: every Debian package vmlab needs is installed")
        return
    if not install:
        raise Exit(f"vmlab: missing Debian packages: {' '.join(missing)}\n"
                   f"fix: apt-get install {' '.join(missing)}  (or, as root: vmlab host-setup --install)", code=2)
    host.install_packages(missing)
    print(f"vmlab: installed {' '.join(missing)}")


TASKS = (start, stop, status, ssh, console, destroy, reset, snapshot, snapshots, snapshot_delete, restore, suspend,
         resume, install, provision, verify, golden_task, golden_key, golden_export, golden_import, sync, test,
         test_all, suites, build, quick, watch, fetch, setup, cache, doctor, demo, image, init, host_setup)
vm_tasks = Collection("vm", *TASKS)  # mounted in a project's own tasks.py: invoke vm.quick
ns = Collection(vm_tasks)  # a one-line tasks.py: `from vmlab.tasks import ns`
program_tasks = Collection(*TASKS)  # the `vmlab` command: vmlab quick
