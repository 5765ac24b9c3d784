"""vmlab: a VM lab for testing privileged BSD code in a QEMU guest."""

__version__ = "0.1.0"
