"""A suite's output as one test case per test (vmlab/runs/formats.py), how they reach junit.xml and
report.json (vmlab/runs/results.py), and a suite's artifacts copied back (vmlab/runs/suites.py).

The parsers read real output of the real tools, kept in tests/runner-output/ (its README
says how each file was made); the one fixture not captured is Go 1.24's build events,
written from the format of Go's own tests, as no Go 1.24 is installed here. The suites run
over OpenSSH and rsync against a real sshd on 127.0.0.1 standing in for the guest's (the
fixtures of test_hostile_inputs.py); tests/test_go_suite.py runs Go in a real guest.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from vmlab.config import SuiteConfig
from vmlab.errors import ConfigError
from vmlab.remote.openssh import SharedConnection
from vmlab.runs import formats, results, suites
from vmlab.runs.formats import ERROR, FAILED, PASSED, SKIPPED

OUTPUT = Path(__file__).parent / "runner-output"
GOCAP = "example.com/gocap/"


def outcomes(parsed: formats.Parsed) -> Dict[str, str]:
    return {f"{c.classname} {c.name}": c.outcome for c in parsed.cases}


def case(parsed: formats.Parsed, name: str, classname: str = "") -> formats.TestCase:
    (found,) = [c for c in parsed.cases if c.name == name and (not classname or c.classname == classname)]
    return found


# --- go test ---


def test_go_test_json_gives_a_case_per_test_with_package_subtests_and_failure_text() -> None:
    parsed = formats.go_test((OUTPUT / "go-test-json.txt").read_text())
    assert parsed.problem == ""
    ok = {name: outcome for key, outcome in outcomes(parsed).items() if key.startswith(GOCAP + "ok ")
          for name in [key.split(" ", 1)[1]]}
    assert ok == {"TestPass": PASSED, "TestPrints": PASSED, "TestFatal": FAILED, "TestTable": FAILED,
                  "TestTable/one": PASSED, "TestTable/two/deep": FAILED, "TestSkipSub": PASSED,
                  "TestSkipSub/skipped": SKIPPED}
    fatal = case(parsed, "TestFatal")
    assert fatal.message == 'ok_test.go:8: fatal: want "a", got "b"' and fatal.text.startswith("ok_test.go:8:")
    assert "--- FAIL" not in fatal.text and "=== RUN" not in fatal.text
    assert case(parsed, "TestTable").message == "subtest TestTable/two/deep failed"
    assert case(parsed, "TestSkipSub/skipped").message == "ok_test.go:17: not today"
    assert case(parsed, "TestPar/b").time == 0.01  # Elapsed
    assert case(parsed, "TestPass").text == ""  # a passing test's output is not a failure text


def test_go_test_puts_a_panic_and_a_timeout_on_the_test_that_was_running() -> None:
    parsed = formats.go_test((OUTPUT / "go-test-json.txt").read_text())
    panicked = case(parsed, "TestPanics")
    assert panicked.outcome == FAILED and panicked.message.startswith("panic: assignment to entry in nil map")
    assert "p_test.go:8" in panicked.text and case(parsed, "TestBefore").outcome == PASSED
    slow = case(parsed, "TestSlow")
    assert slow.outcome == FAILED and "panic: test timed out after 2s" in slow.message
    assert case(parsed, "TestQuick").outcome == PASSED


def test_go_test_makes_a_build_failure_an_error_and_a_failing_testmain_a_failure() -> None:
    parsed = formats.go_test((OUTPUT / "go-test-json.txt").read_text())
    broken = case(parsed, "[build failed]")
    assert (broken.classname, broken.outcome) == (GOCAP + "broken", ERROR)
    assert broken.message.startswith('broken/b.go:3:23: cannot use "not an int"')
    assert broken.text.startswith("# example.com/gocap/broken")
    main = case(parsed, "TestMain")
    assert (main.classname, main.outcome) == (GOCAP + "mainfail", FAILED)
    assert main.message == "setup: the database is not there"
    assert not [c for c in parsed.cases if c.classname == GOCAP + "nofiles"]  # [no test files]: no case


def test_go_test_1_24_build_events_give_the_same_build_failure() -> None:
    parsed = formats.go_test((OUTPUT / "go-test-json-go1.24-build.txt").read_text())
    assert outcomes(parsed) == {GOCAP + "broken [build failed]": ERROR, GOCAP + "ok TestPass": PASSED}
    assert case(parsed, "[build failed]").message.startswith("broken/b.go:3:23: cannot use")


def test_go_test_v_gives_the_same_cases_as_go_test_json() -> None:
    def seen(name: str) -> set:
        return {(c.classname, c.name, c.outcome, c.message) for c in formats.go_test((OUTPUT / name).read_text()).cases}

    assert seen("go-test-v.txt") == seen("go-test-json.txt")


def test_go_test_output_cut_off_mid_test_says_so() -> None:
    lines = (OUTPUT / "go-test-json.txt").read_text().splitlines(keepends=True)
    upto = next(i for i, line in enumerate(lines) if '"Test":"TestSlow"' in line)
    parsed = formats.go_test("".join(lines[:upto + 2]))
    slow = case(parsed, "TestSlow")
    assert slow.outcome == ERROR and slow.message == "its output ended while it ran"
    assert parsed.problem == "the output ended before example.com/gocap/hangs finished"
    assert case(parsed, "TestQuick").outcome == PASSED


def test_output_that_is_not_go_test_output_has_no_case_and_says_so() -> None:
    parsed = formats.go_test("make: *** No rule to make target 'test'.  Stop.\n")
    assert parsed.cases == [] and "no go test result" in parsed.problem


def test_output_cut_at_any_line_or_with_odd_events_never_raises() -> None:
    """A suite killed mid-line, or a test printing JSON of its own: cases or a problem, never a traceback."""
    odd = ['{"Action":"pass","Test":5,"Elapsed":"soon"}\n', '{"Action":"output"}\n', '{"Action":3}\n', "{not json\n",
           '{"Action":"fail","Package":"p","FailedBuild":"p"}\n', "--- FAIL: \n", "ok  \t\n"]
    for name, parse in (("go-test-json.txt", formats.go_test), ("go-test-v.txt", formats.go_test),
                        ("tap-node.txt", lambda text: formats.tap(text, "unit"))):
        text = (OUTPUT / name).read_text()
        for cut in range(0, len(text), 97):
            parsed = parse(text[:cut] + "".join(odd))
            assert all(c.outcome in (PASSED, FAILED, ERROR, SKIPPED) and c.name for c in parsed.cases)
            assert parsed.cases or parsed.problem


# --- TAP ---


def test_tap_from_test_more_with_diagnostics_skip_and_todo() -> None:
    parsed = formats.tap((OUTPUT / "tap-test-more.txt").read_text(), "unit")
    assert [(c.name, c.outcome) for c in parsed.cases] == [
        ("mounts a tmpfs", PASSED), ("counts the workers", FAILED), ("test 3", SKIPPED), ("cleans up twice", SKIPPED)]
    failed = case(parsed, "counts the workers")
    assert failed.classname == "unit" and failed.message == "Failed test 'counts the workers'"
    assert "expected: '5'" in failed.text
    assert case(parsed, "test 3").message == "SKIP: no procfs here"
    assert case(parsed, "cleans up twice").message == "TODO: not written yet"
    assert parsed.problem == ""


def test_tap_14_from_node_names_subtests_under_their_parent_with_durations() -> None:
    parsed = formats.tap((OUTPUT / "tap-node.txt").read_text(), "unit")
    assert [(c.name, c.outcome) for c in parsed.cases] == [
        ("mounts a tmpfs", PASSED), ("workers", FAILED), ("workers/sees its own files", PASSED),
        ("workers/cannot see the others", FAILED), ("reads procfs", SKIPPED), ("cleans up twice", SKIPPED)]
    worker = case(parsed, "workers/cannot see the others")
    assert worker.message == "worker 2 saw worker 1" and "4 !== 5" in worker.text
    assert abs(worker.time - 0.000981537) < 1e-9


def test_prove_v_names_each_file_and_a_plan_not_met_is_a_problem() -> None:
    parsed = formats.tap((OUTPUT / "tap-prove-v.txt").read_text(), "unit")
    assert {c.classname for c in parsed.cases} == {"t/basic.t", "t/short.t"}
    assert case(parsed, "counts the workers").outcome == FAILED
    assert parsed.problem == "t/short.t: planned 3 tests, ran 1"


def test_tap_bail_out_is_an_error_case() -> None:
    parsed = formats.tap("1..3\nok 1 - first\nBail out! the disk is gone\n", "unit")
    assert [(c.name, c.outcome, c.message) for c in parsed.cases] == [
        ("first", PASSED, ""), ("Bail out!", ERROR, "the disk is gone")]
    assert parsed.problem == ""  # the bail-out says why the plan was not met


# --- JUnit and pytest ---


def test_pytest_junitxml_gives_failures_errors_and_skips_with_their_text() -> None:
    parsed = formats.junit((OUTPUT / "pytest-junit.xml").read_bytes())
    assert outcomes(parsed) == {
        "tests.test_mounts test_mounts_a_tmpfs": PASSED, "tests.test_mounts test_counts_the_workers": FAILED,
        "tests.test_mounts test_reads_procfs": SKIPPED, "tests.test_mounts test_uses_the_database": ERROR,
        "tests.test_mounts test_even[1]": FAILED, "tests.test_mounts test_even[2]": PASSED,
        "tests.test_mounts.TestTeardown test_unmounts": PASSED}
    assert "assert 4 == 5" in case(parsed, "test_counts_the_workers").text


def test_a_junit_file_that_is_not_xml_is_a_problem_not_a_crash() -> None:
    parsed = formats.junit(b"<testsuite><testcase name='half'")
    assert parsed.cases == [] and parsed.problem.startswith("its JUnit file is not valid XML")


# --- junit.xml and report.json ---


def a_run(results_dir: Path, **known: Any) -> results.RunReport:
    """What the loop knows of a run before its suites (lab/loop.py): here made up."""
    return results.RunReport(vm={"name": "default"}, vmlab="0.0", started_at="2024-05-01T10:00:00+0000",
                             results_dir=str(results_dir), **known)


def written(tmp_path: Path, *suite_results: results.SuiteResult) -> tuple:
    report = results.write(tmp_path, a_run(tmp_path), list(suite_results))
    root = ET.parse(tmp_path / "junit.xml").getroot()
    return report, {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}


def go_result(tmp_path: Path, status: str, exit_code: int, output: str) -> results.SuiteResult:
    log = tmp_path / "go.log"
    log.write_text(output)
    parsed = formats.go_test(output)
    return results.SuiteResult("go", status, exit_code, 1.5, log, cases=parsed.cases, problem=parsed.problem)


def test_junit_xml_has_one_case_per_test_and_the_report_names_the_failing_ones(tmp_path: Path) -> None:
    report, cases = written(tmp_path, go_result(tmp_path, "failed", 1, (OUTPUT / "go-test-json.txt").read_text()))
    parsed = formats.go_test((OUTPUT / "go-test-json.txt").read_text())
    assert set(cases) == {(c.classname, c.name) for c in parsed.cases}  # no case for the suite: its tests say it all
    failure = cases[(GOCAP + "ok", "TestFatal")].find("failure")
    assert failure is not None and failure.get("message") == 'ok_test.go:8: fatal: want "a", got "b"'
    assert cases[(GOCAP + "broken", "[build failed]")].find("error") is not None
    assert cases[(GOCAP + "ok", "TestSkipSub/skipped")].find("skipped") is not None
    (entry,) = report.suites
    assert (entry.tests, entry.failed, entry.skipped) == (len(parsed.cases), 9, 1)
    assert results.Failing(GOCAP + "ok", "TestFatal", 'ok_test.go:8: fatal: want "a", got "b"') in entry.failing
    suites_in_xml = {s.get("name") for s in ET.parse(tmp_path / "junit.xml").getroot().iter("testsuite")}
    assert f"go: {GOCAP}ok" in suites_in_xml  # one <testsuite> per package
    assert any("FAIL TestFatal (example.com/gocap/ok): ok_test.go:8" in line for line in results.summary(report))


def test_a_failed_suite_whose_tests_all_passed_gets_a_failing_case_saying_so(tmp_path: Path) -> None:
    """Go's test binary can exit 1 after every test passed (a goroutine leak check in TestMain, say)."""
    result = go_result(tmp_path, "failed", 1, (OUTPUT / "go-test-json-go1.24-build.txt").read_text()
                       .split("\n", 6)[-1])  # the passing package alone
    assert [c.outcome for c in result.cases] == [PASSED]
    report, cases = written(tmp_path, suites._settle(result))
    failure = cases[(results.SUITE_CLASS, "go")].find("failure")
    assert failure is not None and failure.get("message") == "exit code 1, though every test it reported passed"
    assert (report.suites[0].status, report.suites[0].failed) == ("failed", 1)


def test_exit_0_with_a_failing_test_is_failed(tmp_path: Path) -> None:
    result = go_result(tmp_path, "passed", 0, (OUTPUT / "go-test-json.txt").read_text())
    assert suites._settle(result).status == "failed" and "exit 0, but 9 of its 18 tests failed" in result.note


def test_a_timed_out_suite_keeps_its_finished_tests_and_a_case_says_it_was_killed(tmp_path: Path) -> None:
    lines = (OUTPUT / "go-test-json.txt").read_text().splitlines(keepends=True)
    upto = next(i for i, line in enumerate(lines) if '"Test":"TestSlow"' in line)
    result = go_result(tmp_path, "timed out", 124, "".join(lines[:upto + 2]))
    result.note = "killed after 5s (its timeout)"
    report, cases = written(tmp_path, result)
    assert cases[(GOCAP + "hangs", "TestQuick")].find("failure") is None
    assert cases[(GOCAP + "hangs", "TestSlow")].find("error").get("message") == "its output ended while it ran"
    assert cases[(results.SUITE_CLASS, "go")].find("error").get("message") == "killed after 5s (its timeout)"
    assert report.suites[0].status == "timed out"


def test_a_suite_cut_off_by_the_run_keeps_the_tests_its_log_finished(tmp_path: Path) -> None:
    lines = (OUTPUT / "go-test-json.txt").read_text().splitlines(keepends=True)
    (tmp_path / "go.log").write_text("".join(lines[:20]))
    suite = SuiteConfig(name="go", command="go test -json ./...", format="go-test")
    report, cases = written(tmp_path, suites.cut_off(suite, tmp_path, "interrupted (Ctrl-C)"))
    assert cases[(results.SUITE_CLASS, "go")].find("error").get("message") == "cut off: interrupted (Ctrl-C)"
    assert cases[(GOCAP + "hangs", "TestQuick")].find("failure") is None
    assert report.suites[0].status == "error"


def test_output_with_terminal_escapes_and_nul_still_makes_valid_junit_xml(tmp_path: Path) -> None:
    result = results.SuiteResult("unit", "failed", 1, 0.1, None, cases=[
        formats.TestCase("colours", "c", FAILED, message="\x1b[31mred\x1b[0m", text="bad byte \x00 here")])
    _, cases = written(tmp_path, result)
    failure = cases[("c", "colours")].find("failure")
    assert failure.get("message") == "\\x1b[31mred\\x1b[0m" and failure.text == "bad byte \\x00 here"



def test_issue24_item07_a_classname_with_control_bytes_still_makes_valid_junit_xml(tmp_path: Path) -> None:
    """A `go test -json` Package and a `prove -v` file name are classnames, and each classname
    names a <testsuite>: with an escape byte or another control character in it, junit.xml did
    not parse (test names and messages with the same bytes were escaped). Any bytes: XML 1.0's
    characters pass, the others are written as \\xNN."""
    package = "example.com/\x1b[31mred\x01pkg"
    go_output = "".join(json.dumps(e) + "\n" for e in (
        {"Action": "run", "Package": package, "Test": "TestA"},
        {"Action": "output", "Package": package, "Test": "TestA", "Output": "boom \x07\n"},
        {"Action": "fail", "Package": package, "Test": "TestA", "Elapsed": 0.1},
        {"Action": "fail", "Package": package, "Elapsed": 0.2}))
    prove_output = "t/\x1bbad\x02name.t .. \nok 1 - fine\nnot ok 2 - \x1b[1mbold\n1..2\n"
    go = results.SuiteResult("go", "failed", 1, 0.3, None, cases=formats.go_test(go_output).cases)
    tap = results.SuiteResult("tap", "failed", 1, 0.3, None, cases=formats.tap(prove_output, "tap").cases)
    _, cases = written(tmp_path, go, tap)  # ET.parse: it is XML
    escaped = {"\\x1b": "\x1b", "\\x01": "\x01", "\\x02": "\x02"}
    assert set(cases) == {("example.com/\\x1b[31mred\\x01pkg", "TestA"), ("t/\\x1bbad\\x02name.t", "fine"),
                          ("t/\\x1bbad\\x02name.t", "\\x1b[1mbold")}
    suites_ = [s.get("name") for s in ET.parse(tmp_path / "junit.xml").getroot().iter("testsuite")]
    assert suites_ == ["go: example.com/\\x1b[31mred\\x01pkg", "tap: t/\\x1bbad\\x02name.t"]
    assert all(raw not in (tmp_path / "junit.xml").read_text() for raw in escaped.values())




def test_a_line_of_output_ends_at_a_newline_only() -> None:
    """str.splitlines also splits at \\x0b, \\x0c, \\x1c-\\x1e and \\x85, which a test's name can
    hold: a TAP point was cut in two there (and its second half taken for output)."""
    parsed = formats.tap("ok 1 - form\x0cfeed\nnot ok 2 - vertical\x0btab\n# why\n1..2\n", "t")
    assert [(c.name, c.outcome, c.message) for c in parsed.cases] == [
        ("form\x0cfeed", PASSED, ""), ("vertical\x0btab", FAILED, "why")]


LARGE = 200_000
LARGE_PARSE = f"""
import json, sys
from vmlab.runs import formats
n = {LARGE}
tap = "".join(f"    ok {{i}} - sub {{i}}\\n" for i in range(1, n + 1)) + "not ok 1 - parent\\n" + "\\n" * n
parsed = formats.tap(tap + "# x\\n1..1\\n", "t")
go = "".join(json.dumps(e) + "\\n" for e in [{{"Action": "run", "Package": "p", "Test": f"T/{{i}}"}} for i in range(n)]
             + [{{"Action": "fail", "Package": "p", "Test": f"T/{{i}}"}} for i in range(n)]
             + [{{"Action": "fail", "Package": "p", "Test": "T"}}, {{"Action": "fail", "Package": "p"}}])
went = formats.go_test(go)
print(json.dumps([[c.name, c.outcome, c.message] for c in (*parsed.cases[:2], parsed.cases[-1], went.cases[-1])]
                 + [len(parsed.cases), len(went.cases)]))
"""


def test_issue24_item08_tap_and_go_output_of_any_size_is_read_in_linear_time() -> None:
    """20,000 indented TAP points took 35 s (5,000: 1 s): each point scanned every subtest still
    waiting for its parent, and a failing test's blank lines were scanned again from each. A
    failing Go test with no output looked through every other test of its package for a failed
    subtest. Here 200,000 of each, in a process of its own given 300 s: linear parsing takes a
    few seconds, the quadratic one took about an hour. What it read is checked too."""
    done = subprocess.run([sys.executable, "-c", LARGE_PARSE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *cases, tap_count, go_count = json.loads(done.stdout)
    assert cases == [["parent", FAILED, "x"], ["parent/sub 1", PASSED, ""], [f"parent/sub {LARGE}", PASSED, ""],
                     ["T", FAILED, "subtest T/0 failed"]]
    assert (tap_count, go_count) == (LARGE + 1, LARGE + 1)


def peak_memory(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("format_", ["tap", "go-test"])
def test_issue24_item08_a_huge_log_is_read_and_shown_in_bounded_memory(tmp_path: Path, format_: str) -> None:
    """A suite's log is read for its tests (suites.cut_off and after every run) and its last 40
    lines go into junit.xml for a failed suite: each read the whole log into memory and split
    it (a 10 MiB log: 42 MiB for its tail). Here a log of 12 MiB or more, mostly output of
    passing tests, then a failing test's 2 MiB: at most about 1 MiB of that is kept (its start
    and end; the log has the rest). tracemalloc's peak stays under 6 MiB, less than half the
    log whatever its size (it was 4 times the log), and under 2 MiB for the tail."""
    lines = [f"output line {i} of a chatty test\n" for i in range(2 << 14)]  # ~1 MiB
    if format_ == "tap":
        log = "".join(f"ok {i} - passes\n" + "".join(lines) for i in range(1, 11))
        log += "not ok 11 - fails\n# why\n" + "".join(lines) * 2
    else:  # test2json: an event per line of output (~3 MiB of events per test), then the test's end
        events = [json.dumps(event) + "\n" for i in range(4) for event in (
            *({"Action": "output", "Package": "p", "Test": f"T{i}", "Output": line} for line in lines * (1 + i // 3)),
            {"Action": "pass" if i < 3 else "fail", "Package": "p", "Test": f"T{i}"})]
        log = "".join(events) + json.dumps({"Action": "fail", "Package": "p"}) + "\n"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "unit.log").write_text(log)
    assert (run_dir / "unit.log").stat().st_size >= 12 << 20
    suite = SuiteConfig(name="unit", command="true", format=format_)
    found: List[results.SuiteResult] = []
    peak = peak_memory(lambda: found.append(suites.cut_off(suite, run_dir, "a test")))
    assert peak < 6 << 20, f"{peak >> 20} MiB"
    (failing,) = [c for c in found[0].cases if c.failing]
    assert 1 << 20 <= len(failing.text) < (1 << 20) + (64 << 10) and "of this output left out" in failing.text
    assert failing.text.rstrip().endswith("output line 32767 of a chatty test")
    assert len(found[0].cases) == (11 if format_ == "tap" else 4)
    assert all(not c.text for c in found[0].cases if not c.failing)
    failed = results.SuiteResult("unit", "failed", 1, 1.0, run_dir / "unit.log")
    peak = peak_memory(lambda: results.write(run_dir, a_run(run_dir), [failed]))
    assert peak < 2 << 20, f"{peak >> 20} MiB"
    tail = ET.parse(run_dir / "junit.xml").getroot().find("testsuite/testcase/failure").text
    assert tail.splitlines()[-1] == log.splitlines()[-1] and len(tail.splitlines()) == 40

# --- suites over SSH: the command's output or its JUnit, and artifacts ---


def run_suite(conn: SharedConnection, tmp_path: Path, **settings) -> results.SuiteResult:
    guest = tmp_path / "guest"
    run_dir = tmp_path / "results" / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return suites.run(conn, SuiteConfig(name="unit", timeout=120, **settings), str(guest), run_dir,
                      echo=io.BytesIO())


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    """The suite's workdir: what a suite leaves behind, and an outside file a link points to."""
    folder = tmp_path / "guest"
    (folder / "logs" / "old").mkdir(parents=True)
    (folder / "cover.out").write_text("mode: set\n")
    (folder / "logs" / "a.log").write_text("a\n")
    (folder / "logs" / "old" / "b.log").write_text("b\n")
    (tmp_path / "outside.txt").write_text("the target of a link\n")
    (folder / "latest.log").symlink_to(tmp_path / "outside.txt")
    return folder


def test_a_go_suite_over_ssh_has_a_case_per_test(connect: Callable[..., SharedConnection], tmp_path: Path,
                                                 guest: Path) -> None:
    conn = connect(tmp_path / "project")
    result = run_suite(conn, tmp_path, command=f"cat {shlex.quote(str(OUTPUT / 'go-test-json.txt'))}; exit 1",
                       format="go-test")
    assert result.status == "failed" and result.exit_code == 1
    assert case(formats.Parsed(result.cases), "TestFatal").outcome == FAILED and len(result.cases) == 18


def test_artifacts_are_copied_back_with_their_paths_and_a_missing_one_is_a_note(
        connect: Callable[..., SharedConnection], tmp_path: Path, guest: Path) -> None:
    conn = connect(tmp_path / "project")
    result = run_suite(conn, tmp_path, command="true",
                       artifacts=("cover.out", "logs", "latest.log", "missing-*.txt", "core"))
    assert result.status == "passed"  # a missing artifact is not a failure
    assert result.artifacts == ["artifacts/unit/cover.out", "artifacts/unit/latest.log", "artifacts/unit/logs/a.log",
                                "artifacts/unit/logs/old/b.log"]
    copied = tmp_path / "results" / "run" / "artifacts" / "unit"
    assert (copied / "cover.out").read_text() == "mode: set\n"
    assert not (copied / "latest.log").is_symlink() and (copied / "latest.log").read_text() == "the target of a link\n"
    assert result.note == f"no artifact matched missing-*.txt, core in {guest}"
    report, _ = written(tmp_path / "results" / "run", result)
    assert report.suites[0].artifacts == result.artifacts and "no artifact matched" in report.suites[0].note


def test_no_artifact_at_all_leaves_no_empty_folder(connect: Callable[..., SharedConnection], tmp_path: Path,
                                                   guest: Path) -> None:
    conn = connect(tmp_path / "project")
    result = run_suite(conn, tmp_path, command="true", artifacts=("nothing-here",))
    assert result.artifacts == [] and not (tmp_path / "results" / "run" / "artifacts").exists()


def test_format_pytest_gets_pytests_own_junit_without_the_suite_naming_a_file(
        connect: Callable[..., SharedConnection], tmp_path: Path, guest: Path) -> None:
    """Real pytest (this venv's) in the suite's workdir; vmlab's PYTEST_ADDOPTS asks it for --junitxml."""
    (guest / "test_sample.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\n"
                                          "def test_wrong():\n    assert 2 + 2 == 5, 'arithmetic'\n\n"
                                          "@pytest.mark.skip(reason='later')\ndef test_later():\n    pass\n")
    conn = connect(tmp_path / "project")
    result = run_suite(conn, tmp_path, command=f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider",
                       format="pytest", env=(("PYTEST_ADDOPTS", "-o junit_family=xunit2"),))
    assert result.status == "failed" and result.junit is not None
    assert {c.name: c.outcome for c in result.cases} == {"test_ok": PASSED, "test_wrong": FAILED,
                                                         "test_later": SKIPPED}
    assert "arithmetic" in case(formats.Parsed(result.cases), "test_wrong").message


# --- the config ---


@pytest.mark.parametrize("suite, where, says", [
    ("{command: x, format: junit}", "suites.s.format", "format junit needs 'junit:'"),
    ("{command: x, format: go-test, junit: out.xml}", "suites.s.junit", "this suite's format is go-test"),
    ("{command: x, format: gotest}", "suites.s.format", "one of junit, pytest, go-test, tap"),
    ("{command: x, artifacts: [../etc/passwd]}", "suites.s.artifacts", "without '..'"),
    ("{command: x, artifacts: ['out; rm -rf /']}", "suites.s.artifacts", "file patterns"),
    ("{command: x, artifacts: cover.out}", "suites.s.artifacts", "a list of file patterns"),
], ids=["junit-without-file", "junit-with-another-format", "unknown-format", "artifact-dotdot", "artifact-shell",
        "artifact-not-a-list"])
def test_a_wrong_format_or_artifact_is_one_line_naming_file_line_and_key(tmp_path: Path, suite: str, where: str,
                                                                        says: str) -> None:
    from vmlab import config

    (tmp_path / "vmlab.yaml").write_text(f"suites:\n  s: {suite}\n")
    with pytest.raises(ConfigError) as e:
        config.load(cwd=tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'vmlab.yaml'}:2: {where}: ") and says in message
    assert "\n" not in message


def test_junit_alone_still_means_format_junit(tmp_path: Path) -> None:
    from vmlab import config

    (tmp_path / "vmlab.yaml").write_text("suites:\n  s: {command: x, junit: out.xml, artifacts: ['logs/*.log']}\n")
    suite = config.load(cwd=tmp_path).suite("s")
    assert (suite.format, suite.junit, suite.artifacts) == ("junit", "out.xml", ("logs/*.log",))


def test_report_json_is_valid_json_with_the_new_fields(tmp_path: Path) -> None:
    report, _ = written(tmp_path, results.SuiteResult("plain", "passed", 0, 0.2, None))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report.as_json()
    (entry,) = on_disk["suites"]
    assert (entry["tests"], entry["passed"], entry["failing"], entry["artifacts"]) == (1, 1, [], [])


REPORT_KEYS = ["vm", "vmlab", "started_at", "results_dir", "guest", "qemu", "sync", "run_id", "passed", "complete",
               "cut_off", "suites"]
SUITE_KEYS = ["name", "status", "tests", "passed", "failed", "skipped", "failing", "duration_seconds", "exit_code",
              "log", "junit", "artifacts", "note"]


@pytest.mark.parametrize("known", [{}, {"guest": {"os": "Linux", "kernel": "6.1.0-18-amd64"}, "qemu": "7.2.9",
                                        "sync": "in sync"}], ids=["cut off before the guest answered", "a whole run"])
def test_report_json_keeps_its_keys_in_their_order_and_reads_back_as_the_same_report(tmp_path: Path,
                                                                                      known: dict) -> None:
    """Users and CI read report.json: RunReport writes the keys (and their order) the dict it
    replaced wrote, the guest's facts and the sync only once known, each status as its word;
    the file read back is the same report, and written again the same bytes."""
    log = tmp_path / "tap.log"
    log.write_text("1..2\nok 1 - mounts\nnot ok 2 - unmounts\n# busy\n")
    tap = results.SuiteResult("tap", "failed", 1, 0.7, log, cases=formats.tap(log.read_text(), "tap").cases)
    report = results.write(tmp_path, a_run(tmp_path, **known), [tap], planned=["tap", "later"],
                           cut_off=None if known else results.CutOff(None, "SSH stopped answering"))
    text = (tmp_path / "report.json").read_text()
    on_disk = json.loads(text)
    assert list(on_disk) == [k for k in REPORT_KEYS if k in known or k not in ("guest", "qemu", "sync")]
    assert [list(s) for s in on_disk["suites"]] == [SUITE_KEYS, SUITE_KEYS]
    assert [s["status"] for s in on_disk["suites"]] == ["failed", "not run"]
    assert on_disk["suites"][0]["failing"] == [
        {"classname": "tap", "name": "unmounts", "message": "busy"}]
    assert (on_disk["passed"], on_disk["complete"]) == (False, bool(known))
    again = results.RunReport.read(tmp_path / "report.json")
    assert again == report and again.suites[1].status is results.Status.NOT_RUN
    assert json.dumps(again.as_json(), indent=2) + "\n" == text

