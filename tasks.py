"""Invoke tasks for this project: vmlab's `vm.*` tasks (see `invoke --list`)."""

from vmlab.tasks import ns  # noqa: F401
