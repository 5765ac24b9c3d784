"""The error hierarchy: every failure a user can act on is a VmlabError.

Each error carries what the user needs to fix it (the file and key, the command
and its output, the log to read). `exit_code` is what the command line returns:
1 for a failure, 2 when the work could not even start because something it
needs is missing or wrong.
"""

from __future__ import annotations


class VmlabError(Exception):
    """Root of vmlab's errors; the message is what the user reads."""

    exit_code = 1


class PrerequisiteMissing(VmlabError):
    """A tool, device, image or file the command needs is not there."""

    exit_code = 2


class NotCached(PrerequisiteMissing):
    """A file that may not be downloaded by this call is not in the cache; the caller says how to get it."""


class ConfigError(VmlabError):
    """vmlab.yaml (or a command-line value) is invalid; nothing was started."""

    exit_code = 2


class ImageBuildError(VmlabError):
    """Building a guest image failed; the message names the log."""


class DownloadError(VmlabError):
    """A download failed or its file is damaged; the message names the URL."""


class ChecksumMismatch(DownloadError):
    """A file's checksum is not the one expected; it was deleted, never cached."""


class MachineError(VmlabError):
    """QEMU failed to start, died, or could not be stopped."""


class SnapshotError(VmlabError):
    """Saving, restoring or deleting a snapshot failed; the VM was left running if it was."""


class ConsoleError(VmlabError):
    """A serial-console step failed; the message names the step and shows the console's last lines."""


class RecipeError(VmlabError):
    """A recipe file is invalid; the message names the file, the step and the key."""

    exit_code = 2


class ProvisionError(VmlabError):
    """Provisioning or verifying a guest failed; the message has the end of its output."""


class NoSuchSnapshot(SnapshotError):
    """A snapshot name that the disk does not have (nothing was changed)."""


class GuestUnreachable(VmlabError):
    """The guest never answered over SSH within its deadline."""


class SyncError(VmlabError):
    """rsync of the project into the guest failed; the message has rsync's own words."""


class RunIncomplete(VmlabError):
    """A test run could not finish: the VM is not up or SSH stopped answering (exit code 2)."""

    exit_code = 2


class HostKeyMismatch(VmlabError):
    """The guest presented an SSH host key other than the one pinned for this lab."""


class CommandFailed(VmlabError):
    """A host command vmlab ran failed; the message has the command, its exit status and the end of its output."""


class Busy(VmlabError):
    """Another vmlab command holds the lock this one needs."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it cleans up exactly as after Ctrl-C."""


class Cancelled(Exception):
    """A run stopped on purpose by vmlab itself (vm.watch: a newer save came); not an error."""
