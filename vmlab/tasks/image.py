"""Tasks that make what a VM starts from: the ISO, install, provision, verify, golden
images (and their export and import), the image cache.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from invoke.context import Context
from invoke.tasks import task

from vmlab.errors import NotCached, PrerequisiteMissing
from vmlab.tasks.common import CONFIG_HELP, VM_HELP, cli, finish_run, lab_of, print_table, vm_of


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def install(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Install the guest from its ISO over the serial console.

    The installed disk is a cached checkpoint keyed by the ISO and the recipe.
    """
    from vmlab.lab import building

    with vm_of(config, vm, starts=True) as v:
        print(building.install(v))


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def provision(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Provision: the config's packages, from the base image.

    Boots from the installed (or built) disk; a failed provision never redoes the install.
    """
    from vmlab.lab import building

    with vm_of(config, vm, starts=True) as v:
        print(f"provisioned ({building.provision(v)})")


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def verify(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> int:
    """Run vmlab's privileged mount suite in the VM.

    Every golden image must pass it.
    """
    from vmlab.lab import building

    with vm_of(config, vm, starts=True) as v:
        return finish_run(building.verify(v))


@task(name="golden", help={"from_scratch": "reset the VM and run every phase: fetch, install, provision, verify",
                           "rewarm": "run the `warm:` command again even if it has not changed (new dependencies)",
                           "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def golden_task(c: Context, from_scratch: bool = False, rewarm: bool = False, vm: Optional[str] = None,
                config: Optional[str] = None) -> None:
    """Make the VM's golden image: provisioned, verified.

    Verified by the mount suite, with a clean snapshot; cached by its key. With a `warm:`
    command in vmlab.yaml, the project's own clean state is then made on it: the project
    synced and the command run (a build cache filled) before "clean" is taken again. The VM
    is left stopped: vm.start then starts it from that state by restoring.
    """
    from vmlab.lab import building, images

    with vm_of(config, vm, starts=True) as v:
        gold = building.make_golden(v, from_scratch=from_scratch, rewarm=rewarm)
    print(f"golden image {gold.key}: {gold.dir}")
    state = images.warm_state(v)
    if state:
        print(f"warm state {state.key}: {state.dir}")


@task(name="golden-key", help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def golden_key(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Print the golden image's key (a CI cache key).

    A hash of everything that makes it; nothing is built. An ISO's checksum is part of it, so
    a guest installed from one has its ISO fetched (verified) first: CI's first step on a fresh runner.
    """
    from vmlab.lab import images

    v = vm_of(config, vm)
    if v.profile.iso:
        images.fetch_iso(v)
    print(images.golden_key(v))


@task(name="golden-export", help={"output": "file to write (default: golden-KEY.tar)", "vm": VM_HELP,
                                  "config": CONFIG_HELP})
@cli
def golden_export(c: Context, output: Optional[str] = None, vm: Optional[str] = None,
                  config: Optional[str] = None) -> None:
    """Write the VM's golden image to one file."""
    from vmlab.images import golden as golden_images
    from vmlab.lab import images

    v = vm_of(config, vm)
    gold = images.golden_of(v)
    if gold is None:
        raise PrerequisiteMissing(f"VM {v.name} has no golden image yet", hint="make it: invoke vm.golden")
    path = golden_images.export(gold, Path(output or f"golden-{gold.key}.tar"))
    print(f"{path} ({path.stat().st_size >> 20} MiB, golden image {gold.key})")


@task(name="golden-import", help={"input": "a file written by vm.golden-export", "config": CONFIG_HELP})
@cli
def golden_import(c: Context, input: str, config: Optional[str] = None) -> None:
    """Load an exported golden image, verifying it."""
    from vmlab.images import golden as golden_images

    gold = golden_images.import_(lab_of(config).cache, Path(input))
    print(f"golden image {gold.key}: {gold.dir}")


@task(help={"offline": "use only the cache; never download", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def fetch(c: Context, offline: bool = False, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Download the guest's ISO: verified, resumable."""
    from vmlab.lab import images

    with _offline_said(offline):
        got = images.fetch_iso(vm_of(config, vm), offline=offline)
    print(f"{got.path} (sha256 {got.sha256}, from {got.source})")


@task(help={"offline": "use only the cache; never download", "vm": VM_HELP, "config": CONFIG_HELP})
@cli
def setup(c: Context, offline: bool = False, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Fetch (or build) the installer and make the disk."""
    from vmlab.lab import images

    with _offline_said(offline):
        facts = images.setup(vm_of(config, vm), offline=offline)
    for key, value in facts.items():
        print(f"{key}: {value}")


@contextmanager
def _offline_said(offline: bool) -> Iterator[None]:
    """A file missing from the cache names --offline as the reason only to whoever passed it."""
    try:
        yield
    except NotCached as e:
        if not offline:
            raise
        raise NotCached(f"{e.message} and offline mode forbids downloading it",
                        hint="run once without --offline to fetch it") from None


@task(help={"prune": "delete cached ISOs and partial downloads the config no longer uses",
            "config": CONFIG_HELP, "json": "print JSON"})
@cli
def cache(c: Context, prune: bool = False, config: Optional[str] = None, json_: bool = False) -> None:
    """List the cache: ISOs, images, golden images.

    --prune deletes ISOs and partial downloads the config no longer uses.
    """
    from vmlab.lab import images

    lab = lab_of(config)
    if prune:
        for path in images.prune_isos(lab):
            print(f"deleted {path}")
    listing = images.cache_listing(lab)
    if json_:
        print(json.dumps(listing, indent=2, default=str))
        return
    print(f"cache: {lab.cache.root}")
    rows = [("KIND", "NAME", "SIZE / BUILT", "SHA256 / PATH")]
    rows += [("iso", iso["name"], f"{iso.get('size', 0) >> 20} MiB", str(iso.get("sha256"))[:16])
             for iso in listing["isos"]]
    rows += [(kind, entry["key"], entry["built_at"], entry["path"])
             for kind, entries in listing["artefacts"].items() for entry in entries]
    if len(rows) > 1:
        print_table(rows)


@task(help={"vm": VM_HELP, "config": CONFIG_HELP})
@cli
def image(c: Context, vm: Optional[str] = None, config: Optional[str] = None) -> None:
    """Build (or find) the image a new VM disk starts from."""
    from vmlab.lab import images

    v = vm_of(config, vm)
    started = time.monotonic()
    folder = images.base(v).path
    print(f"{folder} ({time.monotonic() - started:.1f}s)")
