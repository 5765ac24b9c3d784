"""Invoke tasks: argument parsing and printing only; each asks Lab for the VM and calls a room with it.

They are the `vmlab` command's subcommands (cli.py). A project with a tasks.py of its
own mounts them as `vm.*`: `from vmlab.tasks import vm_tasks; ns.add_collection(vm_tasks)`
(or, with no tasks of its own, a one-line tasks.py: `from vmlab.tasks import ns`).
Exit codes: 0 done, 1 failed, 2 could not start (something missing or misconfigured).

One module per kind of task: machine (a VM's life), snapshot, image (what a VM starts
from), loop (sync and suites), project (init, host-setup, doctor); common holds what
they share (the error wrapper, finding the Lab and VM). They import the lab in the task's body,
not at the top: `vmlab --help` and `--list` then load only Invoke and the tasks, and each
command only what it uses (issue 25: every command's start-up counts).
"""

from __future__ import annotations

from invoke.collection import Collection

from vmlab.tasks.image import (
         cache,
         fetch,
         golden_export,
         golden_import,
         golden_key,
         golden_task,
         image,
         install,
         provision,
         setup,
         verify,
)
from vmlab.tasks.loop import build, quick, suites, sync, test, test_all, watch
from vmlab.tasks.machine import console, demo, destroy, reset, resume, ssh, start, status, stop, suspend
from vmlab.tasks.project import doctor, host_setup, init
from vmlab.tasks.snapshot import restore, snapshot, snapshot_delete, snapshots

TASKS = (start, stop, status, ssh, console, destroy, reset, snapshot, snapshots, snapshot_delete, restore, suspend,
         resume, install, provision, verify, golden_task, golden_key, golden_export, golden_import, sync, test,
         test_all, suites, build, quick, watch, fetch, setup, cache, doctor, demo, image, init, host_setup)
vm_tasks = Collection("vm", *TASKS)  # mounted in a project's own tasks.py: invoke vm.quick
ns = Collection(vm_tasks)  # a one-line tasks.py: `from vmlab.tasks import ns`
program_tasks = Collection(*TASKS)  # the `vmlab` command: vmlab quick
