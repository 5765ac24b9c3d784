"""Tasks about the project and the host: vmlab init, host-setup, doctor.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from invoke.context import Context
from invoke.tasks import task

from vmlab.errors import PrerequisiteMissing
from vmlab.schema import known_profiles
from vmlab.spelling import as_typed
from vmlab.tasks.common import CONFIG_HELP, cli, lab_of


@task(help={"config": CONFIG_HELP})
@cli
def doctor(c: Context, config: Optional[str] = None) -> int:
    """Check host, config, cache and VMs; say the fix."""
    from vmlab import doctor as checks

    findings = checks.examine(lab_of(config))
    for finding in findings:
        print(as_typed(finding.line()))
    code = checks.exit_code(findings)
    if code:
        print(f"vmlab: {sum(not f.ok for f in findings)} problem(s) found; each has its fix above", file=sys.stderr)
    return code


@task(help={"guest": f"the guest to test on: {', '.join(known_profiles())} (default: dragonfly; "
                     "debian is built offline)",
            "yes": "replace files that exist without asking"})
@cli
def init(c: Context, guest: str = "dragonfly", yes: bool = False) -> None:
    """Set this project up: vmlab.yaml, the vm-* Make targets.

    Also puts vm/ in .gitignore. Never overwrites a file without asking; run twice, it changes nothing.
    """
    from vmlab import guests
    from vmlab import init as project_setup

    profile = guests.load(guest)  # an unknown guest is refused, naming the known ones

    def confirm(question: str) -> bool:
        if yes:
            return True
        return sys.stdin.isatty() and input(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    done = project_setup.init(Path.cwd(), guest, profile.os, confirm)
    for line in done or ["nothing to do: this project is set up already"]:
        print(f"vmlab: {line}")
    loop = "vmlab quick" if any(line.startswith("did not include") for line in done) else "make vm-quick"
    print(f"next: `{loop}` (the first run makes or fetches the guest, then boots it); `vmlab --list` lists "
          "every task")


@task(name="host-setup", help={"install": "install the missing packages with apt-get (needs root)"})
@cli
def host_setup(c: Context, install: bool = False) -> None:
    """Check the host's Debian packages (--install adds them)."""
    from vmlab import host

    missing = host.missing_packages()
    if not missing:
        print("vmlab: every Debian package vmlab needs is installed")
        return
    if not install:
        raise PrerequisiteMissing(f"missing Debian packages: {' '.join(missing)}",
                                  hint=f"install them: apt-get install {' '.join(missing)}  (or, as root: "
                                       "invoke vm.host-setup --install)")
    host.install_packages(missing)
    print(f"vmlab: installed {' '.join(missing)}")
