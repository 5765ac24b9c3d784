"""Guest profiles (vmlab/guests/): a project's own profile.yaml is read once, every key checked,
and a mistake is an error naming the file and the key (exit 2), before anything is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import Project
from vmlab import guests
from vmlab.errors import ConfigError
from vmlab.schema import GUESTS_DIR


def own_debian(project: Project, old: str, new: str) -> Path:
    """vmlab's debian guest copied into the project's guests/ folder, one line of its profile changed."""
    folder = project.root / "guests" / "debian"
    shutil.copytree(GUESTS_DIR / "debian", folder)
    profile = folder / "profile.yaml"
    text = profile.read_text()
    assert old in text
    profile.write_text(text.replace(old, new, 1))
    project.write_config("guests: [guests]\nvms:\n  default: {profile: debian}\n")
    return profile


@pytest.mark.parametrize("old, new, says", [
    ("  builder: build-image.sh", "  bilder: build-image.sh", "image.bilder: unknown key; known: builder, packages"),
    ("  builder: build-image.sh", "  files: [configure-root.sh]", "image.builder: missing"),
    ("  kernel: vmlinuz", "  kernel: [vmlinuz]", "boot.kernel: ['vmlinuz'] is not a string"),
    ("    - rsync", "    - 7", "image.packages: a list of strings"),
    ("ssh_user: root", "ssh_users: root", "ssh_users: unknown key"),
    ("provision:\n  script: provision.sh", "provision: provision.sh", "provision: a mapping of script"),
    ("agent: qemu-ga", "agent: qemu-agent", "agent: 'qemu-agent' is not one vmlab talks to; known: qemu-ga"),
], ids=["a misspelt key", "a missing builder", "a list for a file name", "a number among packages",
        "a misspelt top-level key", "a section that is not a mapping", "an agent vmlab does not know"])
def test_a_mistake_in_a_projects_profile_names_the_file_and_key_and_exits_2(project: Project, old: str, new: str,
                                                                           says: str) -> None:
    """`vm.golden-key` builds nothing: the profile is read, and its mistake said, before any work.
    The old code ignored an unknown key, and stopped at the first use of a missing one with a
    traceback (KeyError: 'builder') from deep in the builder."""
    profile = own_debian(project, old, new)
    result = project.invoke("vm.golden-key", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"vmlab: error: {profile}: {says}"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_release_written_as_a_number_is_refused_before_it_names_the_wrong_file(tmp_path: Path) -> None:
    """YAML reads `release: 6.10` as the number 6.1: the ISO path would name release 6.1."""
    folder = tmp_path / "dragonfly"
    shutil.copytree(GUESTS_DIR / "dragonfly", folder)
    profile = folder / "profile.yaml"
    profile.write_text(profile.read_text().replace('release: "6.4.2"', "release: 6.10"))
    with pytest.raises(ConfigError) as refused:
        guests.load("dragonfly", [tmp_path])
    assert str(refused.value) == f"{profile}: iso.release: 6.1 is not a string (put it in quotes)"


def test_vmlabs_own_profiles_read_into_their_sections() -> None:
    debian, dragonfly, rehearsal = (guests.load(name) for name in ("debian", "dragonfly", "rehearsal"))
    assert debian.image is not None and debian.image.builder == "build-image.sh" and "rsync" in debian.image.packages
    assert (debian.boot.kernel, debian.boot.initrd, debian.iso, debian.install) == ("vmlinuz", "initrd.img", None, None)
    assert debian.agent == "qemu-ga" and "qemu-guest-agent" in debian.image.packages and dragonfly.agent == ""
    assert dragonfly.iso is not None and dragonfly.iso.release == "6.4.2" and len(dragonfly.iso.mirrors) == 3
    assert dragonfly.install is not None and dragonfly.install.recipe == "install.yaml" and dragonfly.install.takes
    assert dragonfly.boot == guests.Boot() and dragonfly.image is None and dragonfly.privileged == "doas -n"
    assert rehearsal.medium is not None
    assert rehearsal.medium.host_tools == ["grub-mkrescue", "/usr/lib/grub/i386-pc", "zstd"]
    assert rehearsal.provision.script == "../debian/provision.sh"
