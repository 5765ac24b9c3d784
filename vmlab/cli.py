"""The `vmlab` command: Invoke's own CLI over vmlab's tasks, shipped as a program of its own.

So `vmlab --list`, `vmlab quick`, `vmlab --help restore` and shell completion
(`vmlab --print-completion-script bash`) behave as Invoke users expect, from any
project folder, with no tasks.py (Invoke: "Reusing Invoke's CLI module as a
distinct binary"). Projects with a tasks.py of their own mount the same tasks as
the collection `vm` instead: `from vmlab.tasks import vm_tasks`.
"""

from __future__ import annotations

from invoke.program import Program

from vmlab import __version__, spelling
from vmlab.tasks import program_tasks
from vmlab.tasks.common import reader_gone

program = Program(namespace=program_tasks, version=__version__, name="vmlab", binary="vmlab")


def main() -> None:
    spelling.use_program("vmlab")
    try:
        program.run()
    except BrokenPipeError:  # `vmlab --list | head`, in Invoke's own output
        reader_gone()
