"""vmlab/records.py: a record that is missing, damaged or not an object reads as empty (its facts
are found again), and one is written whole or not at all."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vmlab import records


@pytest.mark.parametrize("content", [None, b"", b'{"pid": 12', b"\xff\xfe", b"[1, 2]", b'"text"'],
                         ids=["missing", "empty", "cut short", "not UTF-8", "a list", "a string"])
def test_a_record_that_is_not_a_json_object_reads_as_empty(tmp_path: Path, content: bytes,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert records.read(path) == {}
    assert not caplog.records  # a VM's own records are silent: their facts are found again


def test_an_unreadable_record_is_said_when_the_caller_asks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pins.json and a download's sidecar: a damaged one is worth a line (the file is verified again)."""
    path = tmp_path / "pins.json"
    path.write_text('{"dfly.iso": ')
    with caplog.at_level(logging.WARNING):
        assert records.read(path, warn=True) == {}
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"ignoring unreadable {path}"]
    records.read(tmp_path / "none.json", warn=True)  # missing is not damaged: nothing said
    assert len(caplog.records) == 1


def test_a_record_is_written_whole_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    records.write(path, {"b": 1, "a": {"sha256": "00"}}, indent=2, sort_keys=True)
    assert path.read_text() == '{\n  "a": {\n    "sha256": "00"\n  },\n  "b": 1\n}\n'  # pins.json as it was
    assert records.read(path) == {"a": {"sha256": "00"}, "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["pins.json"]  # no temporary file left beside it
