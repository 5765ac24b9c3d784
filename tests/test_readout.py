"""A suite's output as a person reads it (vmlab/runs/readout.py): a line per package or test, a failing
test's own output under its line, and gotestsum's `DONE` summary; the raw stream with --raw.

The formats' output is the real output of the real tools, kept in tests/runner-output/ (its
README says how each was made), fed in chunks as SSH delivers it. Then the real runners this
machine has (go test -json, perl's Test::More under prove, pytest) run as suites over OpenSSH
against a real sshd on 127.0.0.1 standing in for the guest's (tests/sshd_fixtures.py), and one
of them waits, mid-run, until its first test's line has been shown. tests/test_suite_targets.py
shows the same through `make` and `vmlab watch` on the real Debian guest.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import pytest

from conftest import prerequisite_missing
from vmlab import host
from vmlab.config import SuiteConfig
from vmlab.remote.openssh import SharedConnection
from vmlab.runs import formats, results, suites
from vmlab.runs.readout import LONGEST_LINE, Readout, duration, summary

OUTPUT = Path(__file__).parent / "runner-output"
GO_MODULE = Path(__file__).parent / "go-module"
GOCAP = "example.com/gocap/"


def chunks(data: bytes, size: int) -> List[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def shown(format_: Optional[str], pieces: Iterable[bytes], result: Optional[results.SuiteResult] = None,
          raw: bool = False, suite: str = "unit") -> str:
    """What the terminal shows of output that comes in `pieces` (each written and flushed, as
    openssh's run does with each chunk it reads), and of the suite's end."""
    out = io.BytesIO()
    readout = Readout(SuiteConfig(name=suite, command="x", format=format_), out, raw=raw)
    for piece in pieces:
        readout.write(piece)
        readout.flush()
    readout.finish(result or results.SuiteResult(suite, "failed", 1, 1.5, None))
    return out.getvalue().decode(errors="surrogateescape")


def under(text: str, line: str) -> List[str]:
    """The lines shown under `line` (indented; `line` may be followed by a time), up to the next that is not."""
    lines = text.splitlines()
    start = next(i for i, shown in enumerate(lines) if shown == line or shown.startswith(line + " (")) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


# --- go test ---


@pytest.mark.parametrize("size", [64, 1 << 20], ids=["small-chunks", "one-chunk"])
def test_go_test_json_is_a_line_per_package_and_a_failing_test_with_its_own_output(size: int) -> None:
    text = shown("go-test", chunks((OUTPUT / "go-test-json.txt").read_bytes(), size))
    lines = text.splitlines()
    assert under(text, f"✖  {GOCAP}ok TestFatal") == ['    ok_test.go:8: fatal: want "a", got "b"']
    assert under(text, f"✖  {GOCAP}ok TestTable/two/deep") == ["    ok_test.go:13: in 2, want 3"]
    assert under(text, f"∅  {GOCAP}ok TestSkipSub/skipped") == ["    ok_test.go:17: not today"]  # why it skipped
    assert f"✖  {GOCAP}ok (3ms)" in lines and f"∅  {GOCAP}nofiles (no test files)" in lines
    assert under(text, f"✖  {GOCAP}panics TestPanics")[0] == "    panic: assignment to entry in nil map [recovered]"
    assert under(text, f"✖  {GOCAP}hangs TestSlow")[0] == "    panic: test timed out after 2s"  # running at the timeout
    assert under(text, f"✖  {GOCAP}mainfail TestMain") == ["    setup: the database is not there"]
    assert "    broken/b.go:3:23: cannot use \"not an int\" (untyped string constant) as int value in return " \
           "statement" in under(text, f"✖  {GOCAP}broken [build failed]")
    assert f"✖  {GOCAP}parallel TestPar/b (0.01s)" in lines
    # a package's line comes after its tests', as it ends; passing tests and go's own framing are not shown
    assert lines.index(f"✖  {GOCAP}ok TestFatal") < lines.index(f"✖  {GOCAP}ok (3ms)")
    assert not any(word in text for word in ('{"Time"', "TestPass", "=== RUN", "--- FAIL", "logged by a passing"))
    assert lines[-2:] == ["", "DONE 18 tests, 1 skipped, 8 failures, 1 error in 1.500s"]


def test_go_test_json_of_go_1_24_shows_a_build_failure_and_a_passing_package() -> None:
    text = shown("go-test", [(OUTPUT / "go-test-json-go1.24-build.txt").read_bytes()])
    assert under(text, f"✖  {GOCAP}broken [build failed]") == [
        f"    # {GOCAP}broken [{GOCAP}broken.test]",
        '    broken/b.go:3:23: cannot use "not an int" (untyped string constant) as int value in return statement']
    assert f"✖  {GOCAP}broken (build failed)" in text.splitlines() and f"✓  {GOCAP}ok (2ms)" in text.splitlines()


def test_go_test_v_names_the_package_once_it_ends_and_keeps_output_that_follows_a_failure() -> None:
    text = shown("go-test", chunks((OUTPUT / "go-test-v.txt").read_bytes(), 100))
    lines = text.splitlines()
    assert under(text, "✖  TestFatal") == ['    ok_test.go:8: fatal: want "a", got "b"']
    assert under(text, "✖  TestPanics")[0] == "    panic: assignment to entry in nil map [recovered]"  # after ---FAIL
    assert lines.index("✖  TestFatal") < lines.index(f"✖  {GOCAP}ok (2ms)")
    assert f"∅  {GOCAP}nofiles (no test files)" in lines
    assert lines.count("setup: the database is not there") == 1  # said outside any test: shown as it came,
    assert under(text, f"✖  {GOCAP}mainfail TestMain") == []  # not again under the failure it explains


def test_package_times_are_written_as_go_writes_them() -> None:
    assert [duration(s) for s in (0.003, 0.1234, 1.2, 2.0055, 64.5)] == ["3ms", "123ms", "1.2s", "2.006s", "1m4.5s"]
    assert summary([], 0.25) == "DONE 0 tests in 0.250s"
    one = formats.TestCase("a", "p", formats.FAILED)
    assert summary([one], 1) == "DONE 1 test, 1 failure in 1.000s"


# --- TAP ---


def test_tap_is_a_line_per_test_with_its_time_and_a_failures_diagnostics_under_it() -> None:
    text = shown("tap", [(OUTPUT / "tap-node.txt").read_bytes()])
    lines = text.splitlines()
    assert lines[:2] == ["✓  mounts a tmpfs (0.00s)", "    ✓  sees its own files (0.00s)"]  # a subtest: indented
    failed = under(text, "    ✖  cannot see the others (0.00s)")
    assert "        error: |-" in failed and "          worker 2 saw worker 1" in failed  # its YAML, under it
    assert "        duration_ms: 0.981537" in failed
    assert under(text, "∅  reads procfs (0.00s)") == ["    SKIP: no procfs here"]
    assert under(text, "∅  cleans up twice (0.00s)") == ["    TODO: not written yet"]
    assert "# pass 2" in lines  # the producer's own summary, not TAP: shown as it came
    assert lines[-1] == "DONE 6 tests, 2 skipped, 2 failures in 1.500s"
    assert "TAP version" not in text and "# Subtest" not in text and "1..4" not in text


def test_tap_from_test_more_and_prove_shows_the_failed_tests_diagnostics_and_proves_words() -> None:
    text = shown("tap", chunks(b"1..2\nok 1 - mounts\nnot ok 2 - counts the workers\n"
                               b"#   Failed test 'counts the workers'\n#          got: '4'\n", 20))
    assert under(text, "✖  counts the workers") == ["    #   Failed test 'counts the workers'",
                                                   "    #          got: '4'"]
    proved = shown("tap", [(OUTPUT / "tap-prove-v.txt").read_bytes()])
    lines = proved.splitlines()
    assert ["✓  t/basic.t mounts a tmpfs", "✖  t/basic.t counts the workers"] == lines[lines.index(
        "✓  t/basic.t mounts a tmpfs"):][:2]  # prove names each file's tests after it
    assert "Dubious, test returned 255 (wstat 65280, 0xff00)" in lines and "Result: FAIL" in lines


def test_a_line_is_shown_when_the_chunk_that_completes_it_is_read() -> None:
    """Nothing waits for the next chunk or the end: a display that keeps up with the stream."""
    out = io.BytesIO()
    readout = Readout(SuiteConfig(name="unit", command="x", format="tap"), out)
    readout.write(b"1..3\nok 1 - first\nnot ok 2 - sec")
    readout.flush()
    assert out.getvalue().decode() == "✓  first\n"  # the second's line has not ended yet
    readout.write(b"ond\n#   got: 4\n")
    readout.flush()
    assert out.getvalue().decode().splitlines()[1:] == ["✖  second", "    #   got: 4"]
    readout.write(b"#   expected: 5\n")  # its diagnostics go on under it, as they come
    readout.flush()
    assert out.getvalue().decode().splitlines()[-1] == "    #   expected: 5"
    go = io.BytesIO()
    readout = Readout(SuiteConfig(name="unit", command="x", format="go-test"), go)
    lines = (OUTPUT / "go-test-json.txt").read_bytes().splitlines(keepends=True)
    ended = next(i for i, line in enumerate(lines) if b'"Action":"fail"' in line and b"TestFatal" in line)
    readout.write(b"".join(lines[:ended + 1]))
    readout.flush()
    assert go.getvalue().decode().splitlines()[-2:] == [f"✖  {GOCAP}ok TestFatal",
                                                        '    ok_test.go:8: fatal: want "a", got "b"']


# --- pytest and JUnit: read from the file when the suite ends ---


@pytest.mark.parametrize("format_", ["pytest", "junit"])
def test_a_junit_files_tests_follow_the_output_which_passes_as_it_came(format_: str) -> None:
    console = b"tests/test_mounts.py .F.E.F.\n\xff not utf-8\n= 2 failed, 4 passed, 1 skipped, 1 error in 0.03s =\n"
    cases = formats.junit((OUTPUT / "pytest-junit.xml").read_bytes()).cases
    text = shown(format_, chunks(console, 7), results.SuiteResult("unit", "failed", 1, 0.5, None, cases=cases))
    assert text.encode(errors="surrogateescape").startswith(console)  # byte for byte, as it came
    after = text[len(console.decode(errors="surrogateescape")):]
    lines = after.splitlines()
    failed = under(after, "✖  tests.test_mounts test_counts_the_workers")
    assert "    E       AssertionError: wrong number of workers" in failed
    assert "    E       RuntimeError: the database is not there" in under(after, "✖  tests.test_mounts "
                                                                                   "test_uses_the_database")
    assert under(after, "∅  tests.test_mounts test_reads_procfs") == ["    no procfs here"]
    assert lines.index("✖  tests.test_mounts test_even[1]") < lines.index("✖  tests.test_mounts")
    assert "✓  tests.test_mounts.TestTeardown" in lines  # a line per classname
    assert "test_mounts_a_tmpfs" not in after  # passing tests are in their classname's line
    assert lines[-1] == "DONE 7 tests, 1 skipped, 2 failures, 1 error in 0.500s"


# --- output that is not its format, and --raw ---


@pytest.mark.parametrize("format_", ["go-test", "tap"])
def test_output_not_in_the_declared_format_still_shows_every_line(format_: str) -> None:
    output = (b"make: Entering directory '/src'\ncc -o prog prog.c\n\xfe\xff raw bytes\n"
              b"prog.c:3: error: expected ';'\nno newline at the end")
    text = shown(format_, chunks(output, 9))
    assert text.encode(errors="surrogateescape").startswith(output + b"\n")
    assert text.splitlines()[-1] == "DONE 0 tests in 1.500s"


def test_a_line_that_does_not_end_is_shown_once_it_is_longer_than_any_tests_line() -> None:
    out = io.BytesIO()
    readout = Readout(SuiteConfig(name="unit", command="x", format="go-test"), out)
    for piece in chunks(b"\r building..." * (LONGEST_LINE // 10), 65536):  # a progress bar: \r, never \n
        readout.write(piece)
        readout.flush()
    assert len(out.getvalue()) > LONGEST_LINE - 65536 and out.getvalue().startswith(b"\r building...")


def test_lines_around_go_tests_that_are_not_go_tests_are_shown_where_they_came() -> None:
    events = (OUTPUT / "go-test-json-go1.24-build.txt").read_text().splitlines(keepends=True)
    output = ["go: downloading nothing\n", *events[3:], "coverage written\n"]
    lines = shown("go-test", [line.encode() for line in output]).splitlines()
    assert lines[0] == "go: downloading nothing" and lines[lines.index(f"✓  {GOCAP}ok (2ms)") + 1] == "coverage written"


@pytest.mark.parametrize("format_", ["go-test", "tap", "pytest", None])
def test_raw_shows_the_stream_as_it_comes_and_nothing_else(format_: Optional[str]) -> None:
    output = (OUTPUT / ("tap-node.txt" if format_ == "tap" else "go-test-json.txt")).read_bytes()
    cases = formats.junit((OUTPUT / "pytest-junit.xml").read_bytes()).cases
    assert shown(format_, chunks(output, 333), results.SuiteResult("unit", "failed", 1, 1, None, cases=cases),
                 raw=True).encode() == output
    if format_ is None:  # a suite with no format: always so
        assert shown(format_, chunks(output, 333)).encode() == output


def test_colours_only_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = SuiteConfig(name="unit", command="x", format="tap")
    assert Readout(suite, io.BytesIO()).color is False
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    master, terminal = os.openpty()
    with os.fdopen(terminal, "wb") as tty:
        assert Readout(suite, tty).color is True
        monkeypatch.setenv("NO_COLOR", "1")
        assert Readout(suite, tty).color is False
    os.close(master)
    out = io.BytesIO()
    readout = Readout(suite, out, color=True)
    readout.write(b"ok 1 - a\nnot ok 2 - b\n")
    readout.flush()
    assert out.getvalue().decode().splitlines() == ["\x1b[32m✓\x1b[0m  a", "\x1b[31m✖\x1b[0m  b"]


# --- the real runners, as suites over SSH ---


def run_suite(conn: SharedConnection, tmp_path: Path, name: str, raw: bool = False,
              echo: Optional[io.BytesIO] = None, **settings) -> tuple:
    run_dir = tmp_path / "results" / name
    run_dir.mkdir(parents=True)
    out = echo or io.BytesIO()
    result = suites.run(conn, SuiteConfig(name=name, **{"timeout": 300, **settings}), str(tmp_path / "work"), run_dir,
                        echo=out, raw=raw)
    return result, out.getvalue().decode(errors="replace")


def needs(tool: str) -> str:
    found = host.which(tool)
    if found is None:
        prerequisite_missing(f"{tool} (Debian package {host.TEST_PACKAGES[tool]}; scripts/test installs it)")
    return found


def test_real_go_test_json_over_ssh_reads_as_gotestsum_does_and_raw_as_it_came(
        connect: Callable[..., SharedConnection], tmp_path: Path) -> None:
    go = needs("go")
    work = tmp_path / "work"
    shutil.copytree(GO_MODULE, work)
    (work / "good").mkdir()
    (work / "good" / "good_test.go").write_text('package good\n\nimport "testing"\n\n'
                                                'func TestGood(t *testing.T) { t.Log("fine") }\n')
    conn = connect(tmp_path / "project")
    command = f"{go} test -json -count=1 ./..."
    result, text = run_suite(conn, tmp_path, "go", command=command, format="go-test")
    assert result.status == "failed" and len(result.cases) == 6
    calc = "example.com/vmlab/gomodule/calc"
    assert under(text, f"✖  {calc} TestDivide/by_zero") == [
        "    calc_test.go:19: Divide(1, 0) returned error <nil>, want ErrDivideByZero"]
    assert under(text, f"∅  {calc} TestNeedsNetwork") == ["    calc_test.go:25: no network in the guest"]
    lines = text.splitlines()
    assert any(line.startswith(f"✖  {calc} (") for line in lines)
    assert any(line.startswith("✓  example.com/vmlab/gomodule/good (") for line in lines)
    assert lines[-1].startswith("DONE 6 tests, 1 skipped, 2 failures in ") and '"Action"' not in text
    raw, text = run_suite(conn, tmp_path, "go-raw", raw=True, command=command, format="go-test")
    assert text == raw.log.read_text() and '"Action":"fail"' in text  # the stream, as the log has it
    assert raw.cases and "DONE" not in text


def test_real_test_more_over_ssh_and_a_line_shown_while_the_test_still_runs(
        connect: Callable[..., SharedConnection], tmp_path: Path) -> None:
    """The second test waits until the first one's line is on the screen: a display that held
    lines back until more output came (or the end) would leave it waiting until its timeout.
    (The test file itself, as `prove` buffers all it prints when its output is not a terminal.)"""
    perl = needs("prove").replace("prove", "perl")
    go_ahead = tmp_path / "shown"
    (tmp_path / "work" / "t").mkdir(parents=True)
    (tmp_path / "work" / "t" / "mount.t").write_text(f"""\
use strict;
use Test::More tests => 2;
ok(1, 'mounts a tmpfs');
select(undef, undef, undef, 0.05) until -e {str(go_ahead)!r};
is(4, 5, 'counts the workers');
""")

    class Screen(io.BytesIO):
        def write(self, data) -> int:  # type: ignore[override]
            written = super().write(data)
            if "✓  mounts a tmpfs\n" in self.getvalue().decode(errors="replace"):
                go_ahead.touch()
            return written

    conn = connect(tmp_path / "project")
    result, text = run_suite(conn, tmp_path, "tap", echo=Screen(), command=f"{perl} t/mount.t", format="tap",
                             timeout=60)
    assert result.status == "failed" and go_ahead.exists(), text
    assert under(text, "✖  counts the workers")[:2] == ["    #   Failed test 'counts the workers'",
                                                       "    #   at t/mount.t line 5."]
    assert text.splitlines()[-1].startswith("DONE 2 tests, 1 failure in ")


def test_real_pytest_over_ssh_shows_its_own_output_then_its_tests(connect: Callable[..., SharedConnection],
                                                                  tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "test_mounts.py").write_text(
        "import pytest\n\ndef test_mounts():\n    pass\n\n"
        "def test_counts():\n    workers = 2 + 2\n    assert workers == 5, 'wrong number of workers'\n\n"
        "@pytest.mark.skip(reason='no procfs here')\ndef test_procfs():\n    pass\n")
    conn = connect(tmp_path / "project")
    name = f"pytest-{tmp_path.name}"[:40]  # the report's name in /tmp is the suite's: one of its own
    result, text = run_suite(conn, tmp_path, name, command=f"{shlex.quote(sys.executable)} -m pytest -p no:randomly "
                             "-p no:cacheprovider test_mounts.py", format="pytest")
    assert result.status == "failed" and len(result.cases) == 3
    assert "test_mounts.py .Fs" in text  # pytest's own output, as it came
    assert "    E       AssertionError: wrong number of workers" in under(text, "✖  test_mounts test_counts")
    assert re.search(r"^✖  test_mounts( \(\d+(\.\d+)?m?s\))?$", text, re.MULTILINE)  # its classname's line
    assert text.splitlines()[-1].startswith("DONE 3 tests, 1 skipped, 1 failure in ")
