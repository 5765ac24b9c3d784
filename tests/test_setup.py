"""vm.fetch and vm.setup through the CLI, with the DragonFly profile and a local mirror.

The DragonFly mirrors cannot be reached from here, so the mirror is a folder laid
out like one (iso-images/<file>.iso.bz2 and a BSD md5.txt) holding a small
generated "ISO": the download engine itself is tested against a real HTTP server
in test_fetch.py; this checks that the config and the profile drive it.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import subprocess
from pathlib import Path

from conftest import Project
from vmlab.lab import firstrun

ISO = "dfly-x86_64-6.4.2_REL.iso"


def make_mirror(root: Path, payload: bytes) -> Path:
    (root / "iso-images").mkdir(parents=True)
    packed = bz2.compress(payload)
    (root / "iso-images" / f"{ISO}.bz2").write_bytes(packed)
    (root / "iso-images" / "md5.txt").write_text(
        f"MD5 ({ISO}.bz2) = {hashlib.md5(packed).hexdigest()}\nMD5 ({ISO}) = {hashlib.md5(payload).hexdigest()}\n")
    return root


def test_setup_fetches_the_pinned_release_and_creates_a_blank_disk(project: Project, tmp_path: Path) -> None:
    payload = os.urandom(1 << 20) * 3
    mirror = make_mirror(tmp_path / "mirror", payload)
    project.write_config(f"""
        vms:
          dfly: {{profile: dragonfly, disk_size: 12G}}
        profiles:
          dragonfly: {{mirrors: ["http://127.0.0.1:9/unreachable", "{mirror}"]}}
        cache_dir: cache
        """)
    result = project.invoke("vm.setup")
    assert result.returncode == 0, result.stderr
    iso = project.root / "cache" / "isos" / ISO
    assert iso.read_bytes() == payload
    assert "trying the next mirror" in result.stderr
    disk = project.root / "vm" / "dfly" / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == 12 * 2**30
    # The disk is blank: a start installs it first (lab/firstrun.py; the journey test runs one), not a boot of it.
    lab = project.lab()
    vm = lab.vm("dfly")
    assert firstrun.needed(vm)
    listing = project.invoke("vm.cache", "--json")
    assert [i["name"] for i in json.loads(listing.stdout)["isos"]] == [ISO]


def test_fetch_offline_without_the_file_exits_2(project: Project) -> None:
    project.write_config("vms:\n  dfly: {profile: dragonfly}\ncache_dir: cache\n")
    result = project.invoke("vm.fetch", "--offline")
    assert result.returncode == 2
    assert f"{ISO} is not in the cache" in result.stderr and "offline" in result.stderr


def test_fetch_for_a_profile_without_an_iso_says_how_its_image_is_made(project: Project) -> None:
    result = project.invoke("vm.fetch")
    assert result.returncode == 2 and "built from packages: invoke vm.image" in result.stderr
