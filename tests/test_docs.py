"""The documents cannot drift from the code: every target and task is documented, and the reverse."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import INVOKE
from vmlab import schema

ROOT = Path(__file__).parents[1]
DOC = (ROOT / "docs" / "VM-TESTING.md").read_text()
PROSE = DOC + (ROOT / "README.md").read_text() + (ROOT / "docs" / "ADOPTING.md").read_text()


def make_targets() -> set:
    """The targets `make vm-help` lists; a suite's own (`vm-test-mounts`) as the pattern, vm-test-NAME."""
    help_text = subprocess.run(["make", "-s", "vm-help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {"vm-test-NAME" if words[2:4] == ["Run", "suite"] else words[1]
            for words in (line.split() for line in help_text.splitlines())}


def invoke_tasks() -> set:
    listing = subprocess.run([INVOKE, "--list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^  (vm\.[a-z-]+)", listing, re.MULTILINE))


def table(heading: str) -> set:
    section = DOC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(?:make )?([a-z][\w.-]*)` \|", section, re.MULTILINE))


def test_every_make_target_is_in_the_targets_table_and_the_reverse() -> None:
    assert table("Every Make target") == make_targets()


def test_every_invoke_task_is_in_the_tasks_table_and_the_reverse() -> None:
    assert table("Every Invoke task") == invoke_tasks()


def test_help_describes_each_target_and_task_in_one_line() -> None:
    help_text = subprocess.run(["make", "-s", "vm-help"], cwd=ROOT, capture_output=True, text=True).stdout
    assert all(len(line.split(None, 2)) == 3 for line in help_text.splitlines())  # make NAME what-it-does
    listing = subprocess.run([INVOKE, "--list"], cwd=ROOT, capture_output=True, text=True).stdout
    continuation = [line for line in listing.splitlines()[2:] if line.startswith("    ")]
    assert continuation == [], "a task's description wrapped onto a second line"


def test_every_target_and_task_named_in_the_prose_exists() -> None:
    named_targets = {re.sub(r"^vm-test-(?!all$).+", "vm-test-NAME", name)  # a suite's, by the pattern rule
                     for name in re.findall(r"make (vm-[a-z0-9-]+[a-z0-9]|vm-test-NAME)", PROSE)}
    named_tasks = set(re.findall(r"(?<![\w/-])(vm\.[a-z][a-z-]*[a-z])\b", PROSE))  # not stop-vm.sh
    assert named_targets - make_targets() == set()
    assert named_tasks - invoke_tasks() == set()


def test_every_config_key_is_documented() -> None:
    section = DOC.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    keys = [*schema.TOP_KEYS, *schema.VM_FIELDS, *schema.SYNC_FIELDS, *schema.SUITE_FIELDS,
            *{k for fields in schema.PROFILE_FIELDS.values() for k in fields}]
    assert [k for k in keys if f"`{k}" not in section] == []


def test_every_test_named_in_the_security_table_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", (ROOT / "docs" / "security.md").read_text())
    assert named
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert not missing


def test_every_vmlab_command_named_in_the_prose_exists() -> None:
    """`vmlab TASK` in backticks or in an indented command line must be a task of the vmlab command."""
    command = r"(?:sudo )?(?:[\w./-]*/)?vmlab ([a-z][a-z-]*)"
    named = set(re.findall(rf"(?:`|^ {{4}}|&& ){command}", PROSE, re.MULTILINE))
    tasks = {t.split(".", 1)[1] for t in invoke_tasks()}
    assert named and named - tasks == set()
