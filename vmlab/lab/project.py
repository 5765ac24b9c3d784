"""What a lab's VMs share, project-wide: its config, the image cache, its own SSH keys.

One is made per command (`Lab` is one, which also turns VM names into VMs); every VM of
the command holds it (vmlab/lab/vm.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vmlab.config import LabConfig
from vmlab.images.cache import ArtefactCache
from vmlab.remote import keys


class Project:
    """A project's config (`vmlab.yaml`), the shared image cache, and the lab's keys (`vm/keys/`)."""

    def __init__(self, config: LabConfig):
        self.config = config
        self.cache = ArtefactCache(config.cache_dir)

    def keys(self) -> keys.LabKeys:
        """The lab's own SSH keys (vm/keys/), made on first use."""
        return keys.ensure(self.config.state_dir / "keys", comment=f"vmlab@{self.config.project_dir.name}")

    def probe_kernel(self, folder: Optional[Path] = None) -> Optional[Path]:
        """A Linux kernel to prove KVM with, from what is at hand: the guest's own, any cached
        image's, or the host's. None if there is none (a BSD guest on a fresh host): nothing
        is built just to probe."""
        candidates = [*([folder / "vmlinuz"] if folder else []), *sorted(self.cache.root.glob("*/*/vmlinuz")),
                      *sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)]
        for candidate in candidates:
            try:
                with open(candidate, "rb"):
                    return candidate
            except OSError:
                continue  # missing, or a host kernel only root may read
        return None
