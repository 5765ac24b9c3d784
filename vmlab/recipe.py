"""Install recipes as data: the serial-console steps of a guest profile, in YAML.

A recipe lives beside the scripts it uses, in `vmlab/guests/<os>/`, so a new OS
or release is a new folder, not new Python. Each step does one thing:

    expect: REGEX          wait for text (also the check after keys/line)
    keys: TEXT             type keys (YAML escapes: "\\e" is ESC); resend_every: S retypes them
    line: TEXT             type a line and Enter
    shell: /bin/sh         switch to that shell with a unique prompt of ours
    run: COMMAND           run at our prompt; the step fails unless it exits 0
    power_off: COMMAND     type it, then wait for the machine to stop
and may set idle (seconds without output before failing, restarted by output)
and limit (hard cap). `fail:` adds failure patterns checked at every step.
The long work is done by scripts on the seed CD (`seed:` lists them); the console
only types short commands. Text may use {placeholders} the lab fills in (PLACEHOLDERS);
a literal brace is written twice, {{ or }}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from vmlab.console import Console, FailRule, rule_list
from vmlab.errors import ConsoleError, RecipeError

log = logging.getLogger(__name__)

ACTIONS = ("expect", "keys", "line", "shell", "run", "power_off")
STEP_KEYS = ("name", *ACTIONS, "idle", "limit", "resend_every")
RECIPE_KEYS = ("description", "boot", "seed", "fail", "key_delay", "steps")
PLACEHOLDERS = ("vm",)  # what the lab fills in (Recipe.run's values)


@dataclass(frozen=True)
class Step:
    name: str
    expect: Optional[str] = None
    keys: Optional[str] = None
    line: Optional[str] = None
    shell: Optional[str] = None
    run: Optional[str] = None
    power_off: Optional[str] = None
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
    steps: List[Step] = field(default_factory=list)

    @property
    def files(self) -> List[Path]:
        """The recipe and every script it carries: their bytes key what it installs."""
        return [self.path, *(self.path.parent / name for name in self.seed)]

    def run(self, console: Console, values: Dict[str, str]) -> None:
        """Play every step on `console`; ConsoleError at the first that fails."""
        console.key_delay = self.key_delay
        for number, step in enumerate(self.steps, 1):
            log.info("  [%d/%d] %s", number, len(self.steps), step.name)
            _play(console, step, values)


def _play(console: Console, step: Step, values: Dict[str, str]) -> None:
    fill = lambda text: text.format(**values)  # noqa: E731
    if step.keys is not None:
        console.send_keys(fill(step.keys))
    if step.line is not None:
        console.send_line(fill(step.line))
    if step.shell is not None:
        console.use_shell(fill(step.shell), step.name, step.idle, step.limit)
    if step.run is not None:
        status = console.run(fill(step.run), step.name, step.idle, step.limit,
                             progress=lambda text: log.info("      %s", text))
        if status != 0:
            raise ConsoleError(f"step {step.name!r}: `{fill(step.run)}` exited with status {status}.\n"
                               f"Last console lines:\n{console.tail()}")
    if step.expect is not None:
        console.expect([fill(step.expect)], step.name, step.idle, step.limit,
                       resend=fill(step.keys) if step.keys else None, resend_every=step.resend_every)
    if step.power_off is not None:
        console.send_line(fill(step.power_off))
        console.wait_closed(step.name, step.limit)


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
        steps.append(Step(**{k: _number(v, where, k) if k in ("idle", "limit", "resend_every") else str(v)
                             for k, v in raw.items()}))
    if not steps:
        raise RecipeError(f"{path}: the recipe has no steps")
    for name in data.get("seed") or []:
        if not (path.parent / name).is_file():
            raise RecipeError(f"{path}: seed file {name!r} is not in {path.parent}")
    boot = data.get("boot", "cdrom")
    if boot not in ("cdrom", "disk"):
        raise RecipeError(f"{path}: boot: {boot!r}; allowed: cdrom, disk")
    return Recipe(path=path, description=str(data.get("description", "")), boot=boot,
                  seed=list(data.get("seed") or []), fails=rule_list(data.get("fail")),
                  key_delay=_number(data.get("key_delay", 0.02), str(path), "key_delay"), steps=steps)


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
