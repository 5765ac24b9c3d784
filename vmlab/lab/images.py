"""What a VM's disk starts from, and the keys that name each image without building it.

A VM disk starts from a golden image if one exists for its inputs, else from its
base: an image built from packages (`image:` in the profile) or a disk a recipe
installed from an ISO (`install:`). Every image is cached by a key that hashes
what made it, so asking for a key never builds or downloads anything.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from vmlab import guests
from vmlab.config import SuiteConfig, warm_suite
from vmlab.errors import ConfigError, NotCached, PrerequisiteMissing
from vmlab.images import builder, golden, warm
from vmlab.images.cache import key_of
from vmlab.lab.project import Project
from vmlab.lab.vm import GuestVM
from vmlab.lab.vmdir import Origin, OriginKind
from vmlab.qemu import disk
from vmlab.schema import known_profiles

if TYPE_CHECKING:  # a download (http.client, urllib) and an install's recipe are imported where used:
    from vmlab.images.fetch import FetchResult  # a start from a golden image or a restore needs neither
    from vmlab.install.recipe import Recipe

log = logging.getLogger(__name__)

INSTALLED = "installed"  # cache kind: a disk a recipe installed, with the keys it trusts


def base(vm: GuestVM) -> Origin:
    """The cached disk a new VM starts from, built first if it is built from packages.

    A guest installed from an ISO needs `vm.install` first (it takes minutes).
    """
    profile = vm.profile
    if profile.image:
        return Origin(OriginKind.IMAGE, builder.ensure(vm.project.cache, profile, "image", vm.options))
    key, _ = installed_key(vm)
    if not vm.project.cache.has(INSTALLED, key):
        raise PrerequisiteMissing(f"VM {vm.name}'s guest ({profile.name}) is not installed yet: "
                                  f"invoke vm.install{vm_option(vm)} (vm.start does it all)")
    return Origin(OriginKind.INSTALLED, vm.project.cache.path(INSTALLED, key))


def base_key(vm: GuestVM) -> str:
    profile = vm.profile
    if profile.image:
        return "image:" + builder.key(profile, "image", vm.options)
    return "installed:" + installed_key(vm)[0]


def installed_key(vm: GuestVM) -> Tuple[str, Dict[str, Any]]:
    """(key, inputs) of what `vm.install` makes: the medium, the recipe and its scripts, the disk size."""
    profile = vm.profile
    if not profile.install:
        raise PrerequisiteMissing(f"guest profile {profile.name!r} is not installed from an ISO")
    rec = install_recipe(vm)
    if profile.medium:
        medium = "built:" + builder.key(profile, "medium", vm.options)
    else:  # the verified ISO's sha256, from the cache: asking never downloads
        try:
            medium = "sha256:" + fetch_iso(vm, offline=True).sha256
        except NotCached:
            raise NotCached(f"VM {vm.name}'s ISO {iso_name(vm)} is not in the cache yet",
                            hint=f"`invoke vm.fetch{vm_option(vm)}` downloads it (vm.start does that and all the "
                                 "rest)") from None
    inputs = {"profile": profile.name, "medium": medium, "disk_bytes": vm.config.disk_bytes}
    return key_of(inputs, rec.files), inputs


def vm_option(vm: GuestVM) -> str:
    """` --vm NAME` for a command suggested about `vm`, unless it is the VM commands pick by default."""
    return "" if vm.name == vm.project.config.vm().name else f" --vm {vm.name}"


def install_recipe(vm: GuestVM) -> Recipe:
    """The recipe that installs `vm`: the profile's, or another of its folder the config names
    (`recipe:`; DragonFly's root-shell fallback, install-shell.yaml, for one)."""
    from vmlab.install import recipe

    profile = vm.profile
    name = vm.options.get("recipe") or (profile.install.recipe if profile.install else "")
    if not name:
        raise ConfigError(f"{profile.file}: install.recipe: missing (or name one of its folder's recipes in "
                          f"vmlab.yaml: profiles: {{{profile.name}: {{recipe: FILE}}}})")
    return recipe.load(profile.dir / name)


def provision_key(vm: GuestVM) -> str:
    profile = vm.profile
    script = profile.provision.script
    packages = sorted(vm.options.get("packages", []))
    return key_of({"packages": packages}, [profile.dir / script] if script else [])


def golden_inputs(vm: GuestVM) -> Dict[str, Any]:
    """Everything a golden image of `vm` depends on; its hash is the golden key.

    The disk size is in it: a copy of a golden image has the size the image was made with.
    """
    inputs: Dict[str, Any] = {"profile": vm.profile.name, "memory_mib": vm.config.memory_mib, "cpus": vm.config.cpus,
                              "disk_bytes": vm.config.disk_bytes, "base": base_key(vm),
                              "provision": provision_key(vm)}
    if vm.profile.agent:  # its snapshot holds the agent's port: it loads only into a QEMU that has one
        inputs["agent"] = vm.profile.agent
    return inputs


def golden_key(vm: GuestVM) -> str:
    return golden.golden_key(golden_inputs(vm))


def golden_of(vm: GuestVM) -> Optional[golden.Golden]:
    try:
        return golden.find(vm.project.cache, golden_key(vm))
    except (ConfigError, PrerequisiteMissing):
        return None


def warm_suite_of(vm: GuestVM) -> Optional[SuiteConfig]:
    """The VM's warm-up (vmlab/lab/warming.py): its own `warm:`, else its profile's, else none."""
    return vm.config.warm or warm_suite(vm.options.get("warm"))


def warm_key(vm: GuestVM, gold: golden.Golden) -> Optional[str]:
    spec = warm_suite_of(vm)
    return warm.key(gold.key, spec, vm.project.config.sync.guest_dir, vm.config.ssh_user) if spec else None


def warm_state(vm: GuestVM, gold: Optional[golden.Golden] = None) -> Optional[warm.WarmState]:
    """The project's warm state of `vm` on `gold` (default: its golden image, if made), if one was
    made for its `warm:` as it is now."""
    gold = gold or golden_of(vm)
    wanted = warm_key(vm, gold) if gold else None
    return warm.find(vm.project.config.state_dir, wanted) if wanted else None


def ensure_disk(vm: GuestVM, from_warm: bool = True) -> Origin:
    """The VM's disk, made if missing: from the project's warm state if there is one (and `from_warm`),
    else the golden image if there is one, else from its base."""
    vm.vmdir.dir.mkdir(parents=True, exist_ok=True)
    if not vm.vmdir.disk.exists():
        gold = golden_of(vm)
        state = warm_state(vm, gold) if gold and from_warm else None
        if gold:
            if state:
                gold.verify()  # the warm state's disk reads from the golden image's base
                state.new_disk(vm.vmdir.disk)
                state.sync_record_into(vm.vmdir.sync_record)  # the guest's copy in it, as it was sent
            else:
                gold.new_disk(vm.vmdir.disk)
            vm.vmdir.set_origin(Origin(OriginKind.GOLDEN, gold.dir, fresh=True, warm=state.key if state else ""))
            # its key holds the provisioning: the image has what the config asks for
            vm.vmdir.mark_provisioned(provision_key(vm), vm.options.get("packages", []), time.time())
        else:
            made = base(vm)
            disk.create_overlay(vm.vmdir.disk, made.path / "disk.qcow2", vm.config.disk_bytes)
            vm.vmdir.set_origin(made)
    origin = vm.vmdir.origin()
    if origin and origin.kind == OriginKind.INSTALLER:
        raise PrerequisiteMissing(f"VM {vm.name}'s disk is blank (made by vm.setup): install the guest "
                                  "on it first (invoke vm.install)")
    if origin is None or not origin.path.is_dir():
        where = f" ({origin.path})" if origin else ""
        raise PrerequisiteMissing(f"the image VM {vm.name}'s disk was made from is gone{where}; "
                                  f"`invoke vm.destroy --vm {vm.name}` and start again")
    return origin


def boot_files(vm: GuestVM, folder: Path) -> Dict[str, Any]:
    """Kernel, initrd and command line for a guest its profile boots directly, from `folder`."""
    boot = vm.profile.boot
    return {"kernel": folder / boot.kernel if boot.kernel else None,
            "initrd": folder / boot.initrd if boot.initrd else None, "cmdline": boot.cmdline}


# --- installer media ---

def medium(vm: GuestVM) -> Path:
    """The install ISO: downloaded (DragonFly) or built from packages (the rehearsal)."""
    profile = vm.profile
    if profile.medium:
        return builder.ensure(vm.project.cache, profile, "medium", vm.options) / "live.iso"
    return fetch_iso(vm).path


def iso_name(vm: GuestVM) -> str:
    """The file name of the VM's ISO as its mirrors publish it (the profile's release, or the config's)."""
    return PurePosixPath(iso_source(vm)["path"]).name


def fetch_iso(vm: GuestVM, offline: bool = False) -> FetchResult:
    """The VM profile's installer ISO, verified, from the cache or its mirrors."""
    from vmlab.images import fetch

    return fetch.fetch(**iso_source(vm), pin=vm.options.get("checksum"),
                       cache_dir=vm.project.config.cache_dir, offline=offline)


def iso_source(vm: GuestVM) -> Dict[str, Any]:
    """Where the VM's ISO comes from: its mirrors (the config's, else the profile's), path and checksum file."""
    profile = vm.profile
    if not profile.iso:
        raise PrerequisiteMissing(f"guest profile {profile.name!r} is not installed from an ISO "
                                  "(its image is built from packages: invoke vm.image)")
    opts = vm.options
    return {"mirrors": opts.get("mirrors") or profile.iso.mirrors, "path": iso_path(profile.iso, opts),
            "checksums": profile.iso.checksums}


def iso_path(iso: guests.Iso, opts: Dict[str, Any]) -> str:
    """The ISO's path on a mirror, for the release vmlab.yaml names, else the profile's."""
    return iso.path.format(release=opts.get("release") or iso.release)


def setup(vm: GuestVM, offline: bool = False) -> Dict[str, Any]:
    """Everything a VM needs before its install: the ISO and the blank disk it is installed on
    (for a guest built from packages, or a disk already made: where the disk comes from)."""
    profile = vm.profile
    made = vm.vmdir.origin() if vm.vmdir.disk.exists() else None
    if profile.image or (made and made.kind != OriginKind.INSTALLER):
        origin = ensure_disk(vm)
        return {"disk": str(vm.vmdir.disk), origin.kind.value: str(origin.path)}
    iso = fetch_iso(vm, offline=offline) if profile.iso else None
    installer = iso.path if iso else medium(vm)
    if not vm.vmdir.disk.exists():
        vm.vmdir.dir.mkdir(parents=True, exist_ok=True)
        disk.create_blank(vm.vmdir.disk, vm.config.disk_bytes)
        vm.vmdir.set_origin(Origin(OriginKind.INSTALLER, installer))
    facts = {"disk": str(vm.vmdir.disk), "medium": str(installer)}
    if iso:
        facts["sha256"] = iso.sha256
    return facts


# --- the cache ---

def cache_listing(project: Project) -> Dict[str, Any]:
    """What the cache holds: ISOs, and every built artefact by kind (images, media, installs, goldens)."""
    from vmlab.images import fetch

    root = project.cache.root
    kinds = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("isos", "logs", "debs")) \
        if root.is_dir() else []
    return {"cache": str(root), "isos": fetch.cached(root),
            "artefacts": {kind: project.cache.entries(kind) for kind in kinds if project.cache.entries(kind)}}


def prune_isos(project: Project) -> List[Path]:
    """Delete cached ISOs and partial downloads no profile's configured release uses."""
    from vmlab.images import fetch

    keep = set()
    guest_dirs = project.config.guest_dirs
    for profile in (guests.load(name, guest_dirs) for name in known_profiles(guest_dirs)):
        if profile.iso:
            keep.add(Path(iso_path(profile.iso, project.config.profile_options(profile.name))).name)
    return fetch.prune(project.cache.root, keep)
