"""The error hierarchy: every failure a user can act on is a VmlabError.

An error is made of declared parts, each set where it is raised (as QEMU's machine and
qemu.qmp errors carry theirs, not only a text):

    message      what happened, in one line: what a progress line or a report's `cut_off` quotes
    hint         what to do about it, naming the command as Invoke spells it (`invoke vm.start`;
                 the `vmlab` command shows `vmlab start`: spelling.py)
    detail       lines to read under it: a command's output, the console's last lines
    log          the file that holds the whole story
    diagnostics  the diagnostic bundle the lab collected when it failed after QEMU started

`str(error)` joins them in that order; the command line (tasks/common.py's `cli`) is the one
place that prints it, with the command names as the user types them, and exits with
`exit_code`: 1 for a failure, 2 when the work could not even start because something it
needs is missing or wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

DIAGNOSTICS = "Diagnostics (console, QEMU log and state, dmesg, mounts)"  # the line that names a bundle


class VmlabError(Exception):
    """Root of vmlab's errors; str() is what the user reads (see the module's docstring)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", detail: str = "", log: Optional[Path] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        self.log = log
        self.diagnostics: Optional[Path] = None  # set by the lab once it collected a bundle (lab.with_diagnostics)
        self.no_diagnostics = ""  # why no bundle could be made (a full disk): the failure is told all the same

    def more(self) -> List[str]:
        """Lines a kind of error adds after its detail (its own declared parts)."""
        return []

    def __str__(self) -> str:
        lines = ["; ".join(part for part in (self.message, self.hint, f"log: {self.log}" if self.log else "") if part),
                 self.detail, *self.more()]
        if self.diagnostics:
            lines.append(f"{DIAGNOSTICS}: {self.diagnostics}")
        elif self.no_diagnostics:
            lines.append(f"(no diagnostic bundle: {self.no_diagnostics})")
        return "\n".join(line for line in lines if line)


class PrerequisiteMissing(VmlabError):
    """A tool, device, image or file the command needs is not there."""

    exit_code = 2


class NotCached(PrerequisiteMissing):
    """A file that may not be downloaded by this call is not in the cache; its hint says how to get it."""


class NotRunning(PrerequisiteMissing):
    """A command that needs the VM running found it stopped, crashed or suspended; one wording
    for every command (console, ssh, snapshot, suspend, sync, the suites)."""

    def __init__(self, vm: str, state: str) -> None:
        super().__init__(f"VM {vm} is not running ({state})", hint="start it: invoke vm.start")
        self.vm = vm
        self.state = state


class ConfigError(VmlabError):
    """vmlab.yaml (or a command-line value) is invalid; nothing was started."""

    exit_code = 2


class ImageBuildError(VmlabError):
    """Building a guest image failed; its `log` is the build's."""


class DownloadError(VmlabError):
    """A download failed or its file is damaged; the message names the URL."""


class ChecksumMismatch(DownloadError):
    """A file's checksum is not the one expected; it was deleted, never cached."""


class MachineError(VmlabError):
    """QEMU failed to start, died, or could not be stopped."""


class SnapshotError(VmlabError):
    """Saving, restoring or deleting a snapshot failed; the VM was left running if it was."""


class ConsoleError(VmlabError):
    """A serial-console step failed; the message names the step, the detail shows the console's last lines."""


class RecipeError(VmlabError):
    """A recipe file is invalid; the message names the file, the step and the key."""

    exit_code = 2


class ProvisionError(VmlabError):
    """Provisioning or verifying a guest failed; the detail has the end of its output."""


class NoSuchSnapshot(SnapshotError):
    """A snapshot name that the disk does not have (nothing was changed)."""


class GuestUnreachable(VmlabError):
    """The guest never answered over SSH within its deadline."""


class SyncError(VmlabError):
    """rsync of the project into the guest failed; the message has rsync's own words."""


class RunIncomplete(VmlabError):
    """A test run could not finish: SSH stopped answering or the sync failed (exit code 2);
    `results` is the run's folder, with what it finished."""

    exit_code = 2

    def __init__(self, message: str, *, results: Optional[Path] = None, hint: str = "", detail: str = "") -> None:
        super().__init__(message, hint=hint, detail=detail)
        self.results = results

    def more(self) -> List[str]:
        return [f"Results so far: {self.results}"] if self.results else []


class HostKeyMismatch(VmlabError):
    """The guest presented an SSH host key other than the one pinned for this lab."""


class CommandFailed(VmlabError):
    """A host command vmlab ran failed; the message has the command and its exit status, the detail the end of its
    output."""


class Busy(VmlabError):
    """Another vmlab command holds the lock this one needs."""


class NotConfirmed(VmlabError):
    """A command that throws work away was not confirmed: no --yes, and no terminal to ask on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it cleans up exactly as after Ctrl-C."""


class Cancelled(Exception):
    """A run stopped on purpose by vmlab itself (vm.watch: a newer save came); not an error."""
