"""An install's console, recorded with its times, played back against a recipe.

vmlab keeps every install's console with times (vm/<name>/install/console.timed.jsonl, and in a
failed install's diagnostic bundle: install-console.timed.jsonl): what it read and what it typed.
tests/dragonfly_sim.py --replay plays such a record back on a console socket, at its own pace,
waiting where vmlab typed. A record from a real DragonFly, sent with a failure report, becomes a
test that way (docs/dragonfly.md, "A failed first install"); here the records come from the
simulator (no DragonFly can run here), recorded through vmlab's own Console.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dragonfly_sim import simulator
from test_dragonfly_recipe import DRAGONFLY, SCALE, altered, play, profile_recipe
from vmlab.errors import ConsoleError
from vmlab.install import recipe
from vmlab.install.console import Console


def replay(folder: Path, record: Path, rec: recipe.Recipe) -> None:
    """Run `rec` against the record played back."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "replay.sock"
    with simulator(sock, "--replay", str(record)):
        with Console(sock, fails=rec.fails, time_scale=SCALE) as con:
            rec.run(con, {})


def test_a_recorded_install_is_kept_with_its_times_and_replays_to_its_end(tmp_path: Path) -> None:
    play(tmp_path / "recorded", profile_recipe())
    record = tmp_path / "recorded" / "console.timed.jsonl"
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    times = [e["t"] for e in entries]
    assert times == sorted(times) and times[-1] > 0
    assert {"9", "set console=comconsole\r", "boot\r"} <= {e["in"] for e in entries if "in" in e}  # what it typed
    printed = "".join(e.get("out", "") for e in entries)
    assert "Starting pfi..." in printed and "vmlab-install: exit 0" in printed
    assert entries[-1] == {"t": entries[-1]["t"], "closed": "yes"}  # the machine powered off
    replay(tmp_path / "replayed", record, profile_recipe())  # every step passes again, to the power-off


def test_the_record_of_pfi_and_its_kernel_line_fails_the_old_pattern_and_passes_the_new(tmp_path: Path) -> None:
    """Issue 23's certain failure 2 as a regression test: a record of rc.d/pfi with the kernel's Rock
    Ridge line between its fragments fails the recipe that waited for them adjacent."""
    play(tmp_path / "recorded", profile_recipe())
    record = tmp_path / "recorded" / "console.timed.jsonl"
    old = altered(tmp_path, DRAGONFLY / "install.yaml", "expect: ' found!'",
                  "expect: 'pfi\\.conf on /dev/\\w+\\.\\.\\. /dev/\\w+ ok\\.\\.\\. found!'")
    with pytest.raises(ConsoleError) as failure:
        replay(tmp_path / "old", record, old)
    assert "step 'PFI finds the seed CD'" in str(failure.value)
    replay(tmp_path / "new", record, profile_recipe())


def test_a_recorded_failure_replays_to_the_same_failure(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError) as recorded:
        play(tmp_path / "recorded", profile_recipe(), "--fault", "panic")
    with pytest.raises(ConsoleError) as replayed:
        replay(tmp_path / "replayed", tmp_path / "recorded" / "console.timed.jsonl", profile_recipe())
    first, again = str(recorded.value).splitlines()[0], str(replayed.value).splitlines()[0]
    assert "step 'install.sh, run by PFI': the guest kernel panicked" in first
    assert again.split(";")[0] == first.split(";")[0]  # the same step, for the same reason
