"""Tasks of the edit-test loop and CI: sync, the suites (one, all, quick, on every save),
the build command, the suite matrix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from invoke.context import Context
from invoke.tasks import task

from vmlab.errors import ConfigError
from vmlab.tasks.common import CONFIG_HELP, RAW_HELP, VM_HELP, cli, finish_run, lab_of, print_table, raw_output, vm_name

if TYPE_CHECKING:
    from vmlab.config import LabConfig

RESTORE_HELP = "after a privileged suite fails, restore the 'clean' snapshot (default: restore_on_failure)"


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def sync(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Copy the project into the guest with rsync.

    Incremental, with --delete; .git and vm/ are never sent.
    """
    from vmlab.lab import loop

    with lab_of(config).vm(vm_name(vm)) as v:
        print(loop.sync(v))


@task(iterable=["suite"], help={"suite": "suite from vmlab.yaml (repeat for several)", "vm": VM_HELP,
                                "config": CONFIG_HELP, "restore_on_failure": RESTORE_HELP, "raw": RAW_HELP})
@cli
def test(c: Context, suite: List[str], vm: Optional[str] = None, config: Optional[str] = None,
         restore_on_failure: bool = False, raw: bool = False) -> int:
    """Run test suites from vmlab.yaml in the guest.

    Report, JUnit and logs go to vm/NAME/results/RUN/.
    """
    from vmlab.lab import loop

    lab = lab_of(config)
    if not suite:
        raise ConfigError(f"name a suite with --suite; configured: {', '.join(lab.config.suites) or 'none'}")
    chosen = [lab.config.suite(name) for name in suite]
    return finish_run(loop.run_suites(lab.vm(vm_name(vm)), chosen, restore_on_failure or lab.config.restore_on_failure,
                              raw=raw_output(raw)))


def _no_quick(cfg: LabConfig) -> ConfigError:
    return ConfigError(f"{cfg.source} names no 'quick:' suite", hint="name one with --suite")


def _require_suites(cfg: LabConfig) -> None:
    if not cfg.suites:
        raise ConfigError(f"{cfg.source} has no suites (add them under 'suites:')")


@task(name="test-all", help={"vm": VM_HELP, "config": CONFIG_HELP, "restore_on_failure": RESTORE_HELP,
                             "raw": RAW_HELP})
@cli
def test_all(c: Context, vm: Optional[str] = None, config: Optional[str] = None,
             restore_on_failure: bool = False, raw: bool = False) -> int:
    """Run every suite in vmlab.yaml, in order."""
    from vmlab.lab import loop

    lab = lab_of(config)
    _require_suites(lab.config)
    return finish_run(loop.run_suites(lab.vm(vm_name(vm)), list(lab.config.suites.values()),
                              restore_on_failure or lab.config.restore_on_failure, raw=raw_output(raw)))


@task(help={"config": CONFIG_HELP, "json": "one line of JSON, {\"include\": [...]}: a CI matrix for fromJSON",
            "make": "each suite as the make target that runs it (what `make vm-help` lists)"})
@cli
def suites(c: Context, config: Optional[str] = None, json_: bool = False, make: bool = False) -> None:
    """List the suites (--json: a CI matrix; --make: targets)."""
    from vmlab import config as config_mod

    cfg = config_mod.load(config)
    if make:
        from vmlab.init import suite_target

        for s in cfg.suites.values():
            target = suite_target(s.name, cfg.project_dir)
            what = s.command if len(s.command) <= 60 else s.command[:59] + "…"
            taken = f" (vm-test-{s.name} is another target)" if target.startswith("vm-test ") else ""
            print(f"  make {target:<20} Run suite {s.name}: {what}{' (as root)' if s.privileged else ''}{taken}")
        if not cfg.suites:
            where = cfg.source if Path(cfg.source).is_file() else config_mod.CONFIG_NAME
            print(f"  make {'vm-test-NAME':<20} Run suite NAME (none yet: add them under 'suites:' in {where})")
        return
    _require_suites(cfg)  # an empty matrix would fail on GitHub with a message that names no file
    matrix = config_mod.suite_matrix(cfg)
    if json_:
        print(json.dumps({"include": matrix}))  # one line: a $GITHUB_OUTPUT value
        return
    print_table([("NAME", "PRIVILEGED", "TIMEOUT", "COMMAND")] + [
        (m["suite"], "yes" if m["privileged"] else "no", f"{m['timeout']}s", cfg.suites[m["suite"]].command)
        for m in matrix])


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def build(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> int:
    """Run the configured build command in the guest."""
    from vmlab.config import SuiteConfig
    from vmlab.lab import loop

    lab = lab_of(config)
    if not lab.config.build:
        raise ConfigError(f"{lab.config.source} has no 'build:' command")
    return finish_run(loop.run_suites(lab.vm(vm_name(vm)), [SuiteConfig(name="build", command=lab.config.build,
                                                                         timeout=3600)]))


@task(help={"suite": "the suite to run (default: the config's 'quick'); `make vm-test-NAME` runs this",
            "vm": VM_HELP, "config": CONFIG_HELP, "restore_on_failure": RESTORE_HELP, "raw": RAW_HELP})
@cli
def quick(c: Context, suite: Optional[str] = None, vm: Optional[str] = None, config: Optional[str] = None,
          restore_on_failure: bool = False, raw: bool = False) -> int:
    """The edit-test loop: start if needed, sync, run 'quick'.

    --suite NAME runs another suite so (make vm-test-NAME). Only what changed is sent.
    """
    from vmlab.lab import firstrun, loop

    lab = lab_of(config)
    name = suite or lab.config.quick
    if not name:
        raise _no_quick(lab.config)
    chosen = lab.config.suite(name)  # an unknown name is refused, naming the suites, before the VM starts
    with lab.vm(vm_name(vm)) as v:
        firstrun.up(v)
    return finish_run(loop.run_suites(v, [chosen], restore_on_failure or lab.config.restore_on_failure,
                                      sync_first=True, raw=raw_output(raw)))


@task(help={"suite": "the suite to run on every change (default: the config's 'quick')",
            "finish": "let a run finish when a change comes, then run again (default: cancel it and start over)",
            "vm": VM_HELP, "config": CONFIG_HELP, "raw": RAW_HELP})
@cli
def watch(c: Context, suite: Optional[str] = None, finish: bool = False, vm: Optional[str] = None,
          config: Optional[str] = None, raw: bool = False) -> None:
    """Run the quick suite on every save, until Ctrl-C.

    Keeps the SSH connection open and sends only what changed; one result line per run.
    """
    from vmlab.lab import firstrun
    from vmlab.watch import Watch

    lab = lab_of(config)
    name = suite or lab.config.quick
    if not name:
        raise _no_quick(lab.config)
    with lab.vm(vm_name(vm)) as v:
        firstrun.up(v)
    logging.getLogger().setLevel(logging.WARNING)  # each run's result line says what it synced
    Watch(v, lab.config.suite(name), finish=finish, raw=raw_output(raw)).run()
