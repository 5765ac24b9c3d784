"""How messages name vmlab's commands: as the user typed them.

Messages are written once, naming tasks as Invoke spells them (`invoke vm.start`, or
`vm.destroy` alone). Under the `vmlab` command (vmlab/cli.py), a user who has never
typed `invoke` reads `vmlab start` and `vmlab destroy` instead.
"""

from __future__ import annotations

import logging
import re

_TASK = re.compile(r"(?:\binvoke |(?<![\w./-]))vm\.([a-z][a-z-]*)")
_program = "invoke"


def use_program(name: str) -> None:
    """Called once by the `vmlab` command; the default is Invoke's spelling."""
    global _program
    _program = name


def as_typed(text: str) -> str:
    """`text` with every task named as the running program takes it."""
    return _TASK.sub(r"vmlab \1", text) if _program == "vmlab" else text


class AsTyped(logging.Filter):
    """Rewrites log lines' task names, so that progress hints read as the user types commands."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _program == "vmlab":
            record.msg, record.args = as_typed(record.getMessage()), None
        return True
