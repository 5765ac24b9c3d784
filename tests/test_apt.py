"""Which Debian mirror the host's apt uses (the offline test guest is built from it).

apt's configuration is written to a folder of the test's own in both formats apt reads;
the mirror names are made up (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlab.errors import PrerequisiteMissing
from vmlab.images.apt import host_debian_mirror


def apt_dir(tmp_path: Path, sources_list: str = "", **sources_d: str) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in sources_d.items():
        (tmp_path / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


def test_one_line_format_with_options_and_comments(tmp_path: Path) -> None:
    folder = apt_dir(tmp_path, "# deb http://commented.test/debian bookworm main\n"
                               "deb-src http://src.test/debian bookworm main\n"
                               "deb http://other.test/debian bullseye main\n"
                               "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.test/debian/ "
                               "bookworm main contrib  # the one\n")
    assert host_debian_mirror(folder, "bookworm") == ("http://mirror.test/debian", "bookworm")


def test_deb822_sources_skip_disabled_stanzas(tmp_path: Path) -> None:
    folder = apt_dir(tmp_path, debian_sources="Types: deb\nURIs: http://off.test/debian\nSuites: bookworm\n"
                                              "Components: main\nEnabled: no\n\n"
                                              "# the one in use\nTypes: deb deb-src\n"
                                              "URIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n"
                                              "Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n")
    assert host_debian_mirror(folder, "bookworm") == ("http://mirror.test/debian", "bookworm")


def test_no_source_with_main_for_the_release_says_how_to_set_one(tmp_path: Path) -> None:
    folder = apt_dir(tmp_path, "deb http://mirror.test/debian bookworm contrib\n",
                     extra_list="deb http://mirror.test/debian trixie main\n")
    with pytest.raises(PrerequisiteMissing, match="no Debian mirror for release bookworm with 'main'") as missing:
        host_debian_mirror(folder, "bookworm")
    assert missing.value.exit_code == 2 and "profiles: {debian: {mirror: URL, suite: NAME}}" in str(missing.value)
