"""What every task shares: the error wrapper that turns vmlab's errors into one line and
an exit code, logging, and how a task finds its Lab and VM.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from invoke.exceptions import Exit

from vmlab import config as config_mod
from vmlab import results
from vmlab.errors import Terminated, VmlabError
from vmlab.lab import Lab
from vmlab.spelling import AsTyped, as_typed

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
    return Lab(config_mod.load(config))


def vm_name(vm: Optional[str]) -> Optional[str]:
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


def finish_run(report: Dict[str, Any]) -> None:
    """Print the run's summary; exit 1 unless every suite passed."""
    for line in results.summary(report):
        print(line)
    if not report["passed"]:
        raise Exit(code=1)


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows of strings as left-aligned columns, the first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def duration_text(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
