"""Long silent steps say they are alive: a line at least every HEARTBEAT_EVERY seconds.

The user's complaint (issue 14): `make vm-main` sat 81 s without a line while debootstrap
worked. These run the real builder (a real shell script in a project's own guest profile)
and read what vmlab logs. HEARTBEAT_EVERY is shortened to keep the test short: the only
thing not as shipped.
"""

from __future__ import annotations

import logging
import re
import textwrap
import time
from pathlib import Path

from vmlab import guests, progress
from vmlab.images import builder
from vmlab.images.cache import ArtefactCache


def silent_profile(folder: Path, seconds: float) -> guests.Profile:
    """A guest profile whose builder announces a step, then works `seconds` without a word."""
    here = folder / "guests" / "quiet"
    here.mkdir(parents=True)
    (here / "profile.yaml").write_text(textwrap.dedent("""\
        description: a builder that works in silence
        os: linux
        medium: {builder: build.sh, packages: [none]}
    """))
    (here / "build.sh").write_text(textwrap.dedent(f"""\
        echo "vmlab-step: unpack everything"
        echo "I: Extracting libc6..."
        sleep {seconds}
        echo "vmlab-step: done"
        touch "$OUT/live.iso"
    """))
    return guests.load("quiet", [folder / "guests"])


def test_a_silent_build_step_prints_what_it_is_doing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress, "HEARTBEAT_EVERY", 0.5)
    profile = silent_profile(tmp_path, 2.2)
    cache = ArtefactCache(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="vmlab"):
        out = builder.ensure(cache, profile, "medium", {"mirror": "http://127.0.0.1:9/debian", "suite": "bookworm"})
    assert (out / "live.iso").is_file()
    beats = [m for m in caplog.messages if "so far" in m]
    # about one a half second during the 2.2 s of silence, each naming the step and its last line
    assert 3 <= len(beats) <= 5, caplog.messages
    assert all(re.search(r"unpack everything: \d+ s so far \(I: Extracting libc6\.\.\.\)", m) for m in beats)


def test_no_heartbeat_while_the_step_talks(tmp_path, monkeypatch, caplog):
    """Lines of vmlab's own restart the count: the heartbeat only fills silences."""
    monkeypatch.setattr(progress, "HEARTBEAT_EVERY", 0.6)
    log = logging.getLogger("vmlab.test")
    with caplog.at_level(logging.INFO, logger="vmlab"):
        with progress.Heartbeat(log, lambda t: f"quiet for a while ({t:.1f} s in)"):
            for i in range(8):
                log.info("step %d", i)
                time.sleep(0.2)
    assert not [m for m in caplog.messages if "quiet for a while" in m], caplog.messages
