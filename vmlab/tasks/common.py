"""What every task shares: the wrapper through which every task ends (vmlab's errors as a
message and an exit code), logging, and how a task finds its Lab and VM.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Sequence

from vmlab.errors import Terminated, VmlabError
from vmlab.spelling import AsTyped, as_typed

if TYPE_CHECKING:
    from vmlab.lab import GuestVM, Lab
    from vmlab.runs.results import RunReport

VM_HELP = "VM name from vmlab.yaml (default: $VM, else the first VM)"


CONFIG_HELP = "config file (default: $VMLAB_CONFIG, else ./vmlab.yaml, else built-in defaults)"
RAW_HELP = ("show the suite's output as it comes, not a line per test or package read from its format "
            "(default: $VMLAB_RAW=1)")


def raw_output(flag: bool) -> bool:
    """--raw, else VMLAB_RAW (1, true or yes): the suites' output as it comes."""
    return flag or os.environ.get("VMLAB_RAW", "").strip().lower() in ("1", "true", "yes")


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="vmlab: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(AsTyped())
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # its transport noise is not for users
    logging.getLogger("qemu").setLevel(logging.CRITICAL)
    # A Ctrl-C inside qemu.qmp's own event loop leaves a task behind whose exception asyncio
    # would report at exit ("Task exception was never retrieved"): vmlab has said what happened.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def lab_of(config: Optional[str]) -> Lab:
    from vmlab import config as config_mod
    from vmlab.lab import Lab

    return Lab(config_mod.load(config))


def vm_of(config: Optional[str], vm: Optional[str], starts: bool = False) -> GuestVM:
    """The VM a task is about (--vm, else $VM, else the first); `starts`: see Lab.vm."""
    return lab_of(config).vm(vm_name(vm), starts=starts)


def vm_name(vm: Optional[str]) -> Optional[str]:
    return vm or os.environ.get("VM") or None


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def cli(fn: Callable[..., Optional[int]]) -> Callable[..., None]:
    """The one way a task ends, other than done (exit 0): vmlab's errors become their text, with
    the commands they name as the user types them (spelling.py), and their exit code; a task
    that returns a number exits with it (a suite run that failed: 1, after its summary). SIGTERM
    cleans up as Ctrl-C does (nothing left running), then exits 143 (Ctrl-C: 130).

    It ends the program with SystemExit itself rather than with Invoke's Exit: what the user
    reads is then printed here, the one place, whether a task runs under `vmlab`, under
    `invoke` or from a project's own task that calls it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        _setup_logging()
        signal.signal(signal.SIGTERM, _terminate)
        try:
            status = fn(*args, **kwargs)
        except VmlabError as e:
            _end(e.exit_code, f"vmlab: error: {as_typed(str(e))}")
        except Terminated:
            _end(143, "vmlab: terminated")
        except KeyboardInterrupt:
            _end(130, "vmlab: interrupted")
        except BrokenPipeError:
            reader_gone()
        except OSError as e:  # the host refused (a full disk, a permission): say so, no traceback
            _end(1, f"vmlab: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        if status:
            _end(status)

    return wrapper


def reader_gone() -> NoReturn:
    """The reader of our output has gone (`vmlab status | head`): exit 1 quietly, as a program
    writing into a closed pipe does; no traceback now, nor when Python flushes stdout at exit
    (what Python's signal module documents for SIGPIPE)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


def _end(code: int, message: str = "") -> NoReturn:
    if message:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def finish_run(report: RunReport) -> int:
    """Print the run's summary; the task's exit status: 1 unless every suite passed."""
    from vmlab.runs import results

    for line in results.summary(report):
        print(line)
    return 0 if report.passed else 1


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows of strings as left-aligned columns, the first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def duration_text(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
