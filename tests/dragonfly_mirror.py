"""A DragonFly mirror and QEMU, as tests that drive the DragonFly guest through the CLI need them.

No DragonFly mirror can be reached from here and QEMU cannot run DragonFly here: the
mirror is tests/httpserver.py on 127.0.0.1, laid out like DragonFly's (iso-images/ with
the .iso.bz2 and a BSD-style md5.txt) and serving a made-up "ISO"; QEMU is
tests/fake_qemu.py, first in PATH under QEMU's name, playing the DragonFly simulator.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import sys
from pathlib import Path
from typing import Dict

ISO = "dfly-x86_64-6.4.2_REL.iso"
TESTS = Path(__file__).parent


def mirror_files(size: int) -> Dict[str, bytes]:
    """A mirror's files for an "ISO" of `size` random bytes (random: it does not compress)."""
    payload = os.urandom(size)
    packed = bz2.compress(payload)
    md5 = f"MD5 ({ISO}.bz2) = {hashlib.md5(packed).hexdigest()}\nMD5 ({ISO}) = {hashlib.md5(payload).hexdigest()}\n"
    return {f"/iso-images/{ISO}.bz2": packed, "/iso-images/md5.txt": md5.encode()}


def config_for(mirror_url: str) -> str:
    """vmlab.yaml for a DragonFly VM `dfly` fetching from the mirror, with a cache of its own."""
    return f"""
        vms:
          dfly: {{profile: dragonfly, accel: tcg, disk_size: 4G}}
        profiles:
          dragonfly: {{mirrors: ["{mirror_url}"]}}
        cache_dir: cache
        """


def fake_qemu_env(folder: Path) -> Dict[str, str]:
    """PATH with tests/fake_qemu.py first as qemu-system-x86_64 (its script in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    qemu = folder / "qemu-system-x86_64"
    qemu.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(TESTS)!r})\n"
                    "from fake_qemu import main\nsys.exit(main(sys.argv[1:]))\n")
    qemu.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}", "DFLY_SIM_TICK": "0.02"}
