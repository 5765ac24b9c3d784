"""The seed CD: a small ISO that carries a VM's keys and settings into the guest.

The guest reads it at boot (label VMLAB_SEED), so one cached image serves every
lab: the lab's authorized key and pinned host key arrive on the seed, never in
the image. The same medium carries install scripts for guests installed from an
ISO (a DragonFly `pfi.conf` must sit on one of acd0 cd0 acd1 cd1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

from vmlab import host
from vmlab.atomic import private_file
from vmlab.remote.keys import LabKeys

LABEL = "VMLAB_SEED"


def build(iso: Path, files: Dict[str, Union[str, bytes]]) -> Path:
    """Write `files` (name -> content) to a fresh ISO at `iso`, mode 0600 (it holds a private key)."""
    with tempfile.TemporaryDirectory(prefix="vmlab-seed-") as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            if name.endswith(".sh"):
                path.chmod(0o755)
        with private_file(iso) as out:  # xorriso writes the ISO to its stdout: this private file
            host.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", LABEL, "-J", "-R", "-o", "-", tmp],
                     f"building the seed ISO {iso}", stdout=out)
    return iso


def for_vm(iso: Path, keys: LabKeys, hostname: str, scripts: Optional[Dict[str, bytes]] = None) -> Path:
    """The seed a guest applies at boot (the key it trusts, the host key it presents, its
    name) and, for an install, the scripts of the recipe."""
    return build(iso, {
        **(scripts or {}),
        "authorized_keys": keys.client_public() + "\n",
        "ssh_host_ed25519_key": keys.host.read_bytes(),
        "ssh_host_ed25519_key.pub": keys.host.with_suffix(".pub").read_bytes(),
        "hostname": hostname + "\n",
    })
