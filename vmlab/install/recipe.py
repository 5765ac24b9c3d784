"""Install recipes as data: the serial-console steps of a guest profile, in YAML.

A recipe lives beside the scripts it uses, in `vmlab/guests/<os>/`, so a new OS
or release is a new folder, not new Python. Each step does one thing:

    expect: REGEX          wait for text (also the check after keys/line)
    keys: TEXT             type keys (YAML escapes: "\\e" is ESC); resend_every: S retypes them
    line: TEXT             type a line and Enter
    shell: /bin/sh         switch to that shell with a unique prompt of ours
    run: COMMAND           run at our prompt; the step fails unless it exits 0
    watch: REGEX           type nothing: wait for a script's own end marker, whose first
                           group is its exit status (the step fails unless it is 0)
    power_off: COMMAND     type it, then wait for the machine to stop
    powered_off: true      wait for the machine to stop by itself
and may set idle (seconds without output before failing, restarted by output)
and limit (hard cap). `fail:` adds failure patterns checked at every step (up to the
step a rule's `until:` names: a loader's answer means nothing in a kernel's log), and
`help:` is added to every failure (where to read about it).
The long work is done by scripts on the seed CD (`seed:` lists them), started by
the console's few typed words or by the guest itself (DragonFly's PFI); lines
`vmlab-step: ...` they print are logged as progress. Text may use {placeholders}
the lab fills in (PLACEHOLDERS); a literal brace is written twice, {{ or }}.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from vmlab.errors import ConsoleError, RecipeError
from vmlab.install.console import Console, FailRule, rule_list

log = logging.getLogger(__name__)

ACTIONS = ("expect", "keys", "line", "shell", "run", "watch", "power_off", "powered_off")
STEP_KEYS = ("name", *ACTIONS, "idle", "limit", "resend_every")
RECIPE_KEYS = ("description", "boot", "seed", "fail", "key_delay", "help", "steps")
PLACEHOLDERS = ("vm",)  # what the lab fills in (Recipe.run's values)


@dataclass(frozen=True)
class Step:
    name: str
    expect: Optional[str] = None
    keys: Optional[str] = None
    line: Optional[str] = None
    shell: Optional[str] = None
    run: Optional[str] = None
    watch: Optional[str] = None
    power_off: Optional[str] = None
    powered_off: Optional[str] = None
    idle: float = 120.0
    limit: float = 600.0
    resend_every: float = 0.0


@dataclass(frozen=True)
class Recipe:
    path: Path
    description: str
    boot: str  # what the machine boots for this recipe: "cdrom" (the installer) or "disk"
    seed: List[str]  # files of the recipe folder to put on the seed CD
    fails: List[FailRule]
    key_delay: float
    help: str = ""  # added to every failure: where to read what to do
    steps: List[Step] = field(default_factory=list)

    @property
    def files(self) -> List[Path]:
        """The recipe and every script it carries: their bytes key what it installs."""
        return [self.path, *(self.path.parent / name for name in self.seed)]

    @property
    def version(self) -> str:
        """A short hash of those files: which recipe a report of a failed install is about."""
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
        return digest.hexdigest()[:12]

    def run(self, console: Console, values: Dict[str, str]) -> None:
        """Play every step on `console`; ConsoleError at the first that fails."""
        console.key_delay = self.key_delay
        over: set[str] = set()  # steps done: a rule `until` one of them no longer holds
        try:
            for number, step in enumerate(self.steps, 1):
                log.info("  [%d/%d] %s", number, len(self.steps), step.name)
                console.fails = [rule for rule in self.fails if rule.until not in over]
                _play(console, step, values)
                over.add(step.name)
        except ConsoleError as e:
            if not self.help:
                raise
            e.detail = "\n".join(part for part in (e.detail, self.help) if part)
            raise


def _play(console: Console, step: Step, values: Dict[str, str]) -> None:
    def fill(text: str) -> str:
        return text.format(**values)

    def progress(text: str) -> None:
        log.info("      %s", text)

    if step.keys is not None:
        console.send_keys(fill(step.keys))
    if step.line is not None:
        console.send_line(fill(step.line))
    if step.shell is not None:
        console.use_shell(fill(step.shell), step.name, step.idle, step.limit)
    if step.run is not None:
        status = console.run(fill(step.run), step.name, step.idle, step.limit, progress)
        _check(console, step, f"`{fill(step.run)}` exited", status)
    if step.watch is not None:
        match = console.watch(fill(step.watch), step.name, step.idle, step.limit, progress)
        _check(console, step, "the script ended", int(match.group(1)))
    if step.expect is not None:
        console.expect([fill(step.expect)], step.name, step.idle, step.limit,
                       resend=fill(step.keys) if step.keys else None, resend_every=step.resend_every)
    if step.power_off is not None:
        console.send_line(fill(step.power_off))
    if step.power_off is not None or step.powered_off is not None:
        console.wait_closed(step.name, step.limit)


def _check(console: Console, step: Step, what: str, status: int) -> None:
    if status != 0:
        raise ConsoleError(f"step {step.name!r}: {what} with status {status}.",
                           detail=f"Last console lines:\n{console.tail()}")


def load(path: Path) -> Recipe:
    """Read and check a recipe; every mistake names the file, the step and the key."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with 'steps'")
    for key in data:
        if key not in RECIPE_KEYS:
            raise RecipeError(f"{path}: unknown key {key!r}; allowed: {', '.join(RECIPE_KEYS)}")
    steps = []
    for number, raw in enumerate(data.get("steps") or [], 1):
        where = f"{path}: step {number}"
        if not isinstance(raw, dict) or "name" not in raw:
            raise RecipeError(f"{where}: each step is a mapping with a 'name'")
        unknown = [k for k in raw if k not in STEP_KEYS]
        if unknown:
            raise RecipeError(f"{where} ({raw['name']}): unknown key {unknown[0]!r}; allowed: {', '.join(STEP_KEYS)}")
        if not any(k in raw for k in ACTIONS):
            raise RecipeError(f"{where} ({raw['name']}): it does nothing; give one of {', '.join(ACTIONS)}")
        for key in ACTIONS:
            if key in raw:
                _check_placeholders(str(raw[key]), f"{where} ({raw['name']}): {key}")
        if "powered_off" in raw and raw["powered_off"] is not True:
            raise RecipeError(f"{where} ({raw['name']}): powered_off: {raw['powered_off']!r}; it can only be true")
        if "watch" in raw and _groups(str(raw["watch"])) < 1:
            raise RecipeError(f"{where} ({raw['name']}): watch: {raw['watch']!r} needs a group, "
                              "(\\d+), that captures the script's exit status")
        fields: Dict[str, Any] = {k: _number(v, where, k) if k in ("idle", "limit", "resend_every") else str(v)
                                  for k, v in raw.items()}
        steps.append(Step(**fields))
    if not steps:
        raise RecipeError(f"{path}: the recipe has no steps")
    for name in data.get("seed") or []:
        if not (path.parent / name).is_file():
            raise RecipeError(f"{path}: seed file {name!r} is not in {path.parent}")
    for rule in data.get("fail") or []:
        if isinstance(rule, dict) and rule.get("until") and rule["until"] not in {s.name for s in steps}:
            raise RecipeError(f"{path}: fail rule {rule.get('pattern')!r}: until: {rule['until']!r} is not the "
                              "name of a step")
    boot = data.get("boot", "cdrom")
    if boot not in ("cdrom", "disk"):
        raise RecipeError(f"{path}: boot: {boot!r}; allowed: cdrom, disk")
    return Recipe(path=path, description=str(data.get("description", "")), boot=boot,
                  seed=list(data.get("seed") or []), fails=rule_list(data.get("fail")),
                  key_delay=_number(data.get("key_delay", 0.02), str(path), "key_delay"),
                  help=str(data.get("help", "")), steps=steps)


def _groups(pattern: str) -> int:
    try:
        return re.compile(pattern).groups
    except re.error:
        return 0


def _check_placeholders(text: str, where: str) -> None:
    """Refuse now, not mid-install, a {placeholder} the lab does not fill or a lone brace."""
    try:
        text.format(**dict.fromkeys(PLACEHOLDERS, "x"))
        return
    except KeyError as e:
        problem = f"unknown placeholder {{{e.args[0]}}}"
    except (IndexError, AttributeError, ValueError) as e:
        problem = str(e)
    filled = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    raise RecipeError(f"{where}: {problem} in {text!r}; the lab fills in {filled}; "
                      "write a literal brace twice: {{ or }}")


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RecipeError(f"{where}: {key}: {value!r} is not a number of seconds")
    return float(value)
