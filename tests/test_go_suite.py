"""A Go module's tests in a real guest, built by the guest's own Go toolchain, reported per test.

The module (tests/go-module) has a passing test, a test whose subtest fails with a
t.Errorf message, and a skipped test. Its config asks for the packages `vmlab init` gives a
Go module (golang-go, gcc, libc6-dev), which `vm.golden` installs in the Debian guest (apt,
from the mirror the guest reaches) and keeps in the golden image; the image is cached by
its inputs and shared with tests/test_suite_targets.py and tests/test_warm.py, so one run
on a machine makes it and later runs restore it. (Installing a package at the first sync,
without a golden image, is tests/test_adoption.py's.) The suite is `go test -json` with
`format: go-test`, and its coverage profile comes back as an artifact. Nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import GO_PACKAGES, Project

MODULE = Path(__file__).parent / "go-module"
PACKAGE = "example.com/vmlab/gomodule/calc"
CONFIG = """\
vms:
  default: {}
profiles:
  debian: {packages: GO_PACKAGES}
sync: {guest_dir: gomodule}
suites:
  go:
    command: go test -json -coverprofile=cover.out ./...
    format: go-test
    artifacts: [cover.out, "*.log"]
    timeout: 1500
""".replace("GO_PACKAGES", GO_PACKAGES)


def test_a_go_modules_tests_are_one_junit_case_each_with_the_failures_text(project: Project, vm_ready) -> None:
    shutil.copytree(MODULE, project.root, dirs_exist_ok=True)
    project.write_config(CONFIG)
    made = project.invoke("vm.golden", timeout=3600)  # or found made, by an earlier run or test
    assert made.returncode == 0, made.stdout + made.stderr
    started = project.invoke("vm.start")
    assert started.returncode == 0 and "restored to 'clean', not booted" in started.stderr, started.stderr
    synced = project.invoke("vm.sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "installing what the config asks for" not in synced.stderr  # the golden image has them
    assert project.invoke("vm.ssh", "-c", "command -v go").stdout.strip() == "/usr/bin/go"  # the guest's own Go

    result = project.invoke("vm.test", "--suite", "go", timeout=1800)
    assert result.returncode == 1, result.stdout + result.stderr  # a test failed
    assert f"FAIL TestDivide/by_zero ({PACKAGE}): calc_test.go:19: Divide(1, 0) returned error <nil>, " \
           "want ErrDivideByZero" in result.stdout  # the summary names the failing test
    folder = Path(next(line.split("results: ", 1)[1] for line in result.stdout.splitlines() if "results: " in line))

    cases = {case.get("name"): case for case in ET.parse(folder / "junit.xml").getroot().iter("testcase")}
    assert set(cases) == {"TestAdd", "TestDivide", "TestDivide/exact", "TestDivide/by_zero", "TestNeedsNetwork"}
    assert {case.get("classname") for case in cases.values()} == {PACKAGE}
    failure = cases["TestDivide/by_zero"].find("failure")
    assert failure is not None
    assert failure.get("message") == "calc_test.go:19: Divide(1, 0) returned error <nil>, want ErrDivideByZero"
    assert "want ErrDivideByZero" in (failure.text or "")
    assert cases["TestDivide"].find("failure") is not None  # its subtest failed
    assert [c.tag for c in cases["TestAdd"]] == [] and [c.tag for c in cases["TestDivide/exact"]] == []
    skipped = cases["TestNeedsNetwork"].find("skipped")
    assert skipped is not None and skipped.get("message") == "calc_test.go:25: no network in the guest"

    report = json.loads((folder / "report.json").read_text())
    (go,) = report["suites"]
    assert (go["status"], go["exit_code"], go["tests"], go["passed"], go["failed"], go["skipped"]) == \
        ("failed", 1, 5, 2, 2, 1)
    assert {(f["classname"], f["name"]) for f in go["failing"]} == {(PACKAGE, "TestDivide"),
                                                                    (PACKAGE, "TestDivide/by_zero")}
    assert go["artifacts"] == ["artifacts/go/cover.out"]
    assert (folder / "artifacts" / "go" / "cover.out").read_text().startswith("mode: set")
    assert "no artifact matched *.log" in go["note"]
