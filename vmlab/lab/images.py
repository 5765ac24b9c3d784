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

from vmlab import accel, builder, disk, fetch, golden, guests, recipe, warm
from vmlab.cache import key_of
from vmlab.config import SuiteConfig, VMConfig, warm_suite
from vmlab.errors import ConfigError, NotCached, PrerequisiteMissing
from vmlab.lab.vmdir import Origin, OriginKind, VMDir
from vmlab.schema import known_profiles

if TYPE_CHECKING:
    from vmlab.lab import Lab

log = logging.getLogger(__name__)

INSTALLED = "installed"  # cache kind: a disk a recipe installed, with the keys it trusts


def options(lab: "Lab", profile: guests.Profile) -> Dict[str, Any]:
    return lab.config.profile_options(profile.name)


def base(lab: "Lab", vm: VMConfig) -> Origin:
    """The cached disk a new VM starts from, built first if it is built from packages.

    A guest installed from an ISO needs `vm.install` first (it takes minutes).
    """
    profile = lab.profile(vm)
    if profile.image:
        return Origin(OriginKind.IMAGE, builder.ensure(lab.cache, profile, "image", options(lab, profile)))
    key, _ = installed_key(lab, vm)
    if not lab.cache.has(INSTALLED, key):
        raise PrerequisiteMissing(f"VM {vm.name}'s guest ({profile.name}) is not installed yet: "
                                  f"invoke vm.install{vm_option(lab, vm)} (vm.start does it all)")
    return Origin(OriginKind.INSTALLED, lab.cache.path(INSTALLED, key))


def base_key(lab: "Lab", vm: VMConfig) -> str:
    profile = lab.profile(vm)
    if profile.image:
        return "image:" + builder.key(profile, "image", options(lab, profile))
    return "installed:" + installed_key(lab, vm)[0]


def installed_key(lab: "Lab", vm: VMConfig) -> Tuple[str, Dict[str, Any]]:
    """(key, inputs) of what `vm.install` makes: the medium, the recipe and its scripts, the disk size."""
    profile = lab.profile(vm)
    if not profile.install:
        raise PrerequisiteMissing(f"guest profile {profile.name!r} is not installed from an ISO")
    rec = install_recipe(lab, vm)
    if profile.medium:
        medium = "built:" + builder.key(profile, "medium", options(lab, profile))
    else:  # the verified ISO's sha256, from the cache: asking never downloads
        try:
            medium = "sha256:" + fetch_iso(lab, vm, offline=True).sha256
        except NotCached:
            raise NotCached(f"VM {vm.name}'s ISO {iso_name(lab, vm)} is not in the cache yet",
                            hint=f"`invoke vm.fetch{vm_option(lab, vm)}` downloads it (vm.start does that and all the "
                                 "rest)") from None
    inputs = {"profile": profile.name, "medium": medium, "disk_bytes": vm.disk_bytes}
    return key_of(inputs, rec.files), inputs


def vm_option(lab: "Lab", vm: VMConfig) -> str:
    """` --vm NAME` for a command suggested about `vm`, unless it is the VM commands pick by default."""
    return "" if vm.name == lab.config.vm().name else f" --vm {vm.name}"


def install_recipe(lab: "Lab", vm: VMConfig) -> recipe.Recipe:
    """The recipe that installs `vm`: the profile's, or another of its folder the config names
    (`recipe:`; DragonFly's root-shell fallback, install-shell.yaml, for one)."""
    profile = lab.profile(vm)
    name = options(lab, profile).get("recipe") or (profile.install.recipe if profile.install else "")
    if not name:
        raise ConfigError(f"{profile.file}: install.recipe: missing (or name one of its folder's recipes in "
                          f"vmlab.yaml: profiles: {{{profile.name}: {{recipe: FILE}}}})")
    return recipe.load(profile.dir / name)


def provision_key(lab: "Lab", vm: VMConfig) -> str:
    profile = lab.profile(vm)
    script = profile.provision.script
    packages = sorted(options(lab, profile).get("packages", []))
    return key_of({"packages": packages}, [profile.dir / script] if script else [])


def golden_inputs(lab: "Lab", vm: VMConfig) -> Dict[str, Any]:
    """Everything a golden image of `vm` depends on; its hash is the golden key.

    The disk size is in it: a copy of a golden image has the size the image was made with.
    """
    profile = lab.profile(vm)
    return {"profile": profile.name, "memory_mib": vm.memory_mib, "cpus": vm.cpus, "disk_bytes": vm.disk_bytes,
            "base": base_key(lab, vm), "provision": provision_key(lab, vm)}


def golden_of(lab: "Lab", vm: VMConfig) -> Optional[golden.Golden]:
    try:
        return golden.find(lab.cache, golden.golden_key(golden_inputs(lab, vm)))
    except (ConfigError, PrerequisiteMissing):
        return None


def warm_suite_of(lab: "Lab", vm: VMConfig) -> Optional[SuiteConfig]:
    """The VM's warm-up (vmlab/lab/warming.py): its own `warm:`, else its profile's, else none."""
    return vm.warm or warm_suite(options(lab, lab.profile(vm)).get("warm"))


def warm_key(lab: "Lab", vm: VMConfig, gold: golden.Golden) -> Optional[str]:
    spec = warm_suite_of(lab, vm)
    return warm.key(gold.key, spec, lab.config.sync.guest_dir, vm.ssh_user) if spec else None


def warm_state(lab: "Lab", vm: VMConfig, gold: golden.Golden) -> Optional[warm.WarmState]:
    """The project's warm state of `vm` on `gold`, if one was made for its `warm:` as it is now."""
    wanted = warm_key(lab, vm, gold)
    return warm.find(lab.config.state_dir, wanted) if wanted else None


def ensure_disk(lab: "Lab", vm: VMConfig, vmdir: VMDir, from_warm: bool = True) -> Origin:
    """The VM's disk, made if missing: from the project's warm state if there is one (and `from_warm`),
    else the golden image if there is one, else from its base."""
    vmdir.dir.mkdir(parents=True, exist_ok=True)
    if not vmdir.disk.exists():
        gold = golden_of(lab, vm)
        state = warm_state(lab, vm, gold) if gold and from_warm else None
        if gold:
            if state:
                gold.verify()  # the warm state's disk reads from the golden image's base
                state.new_disk(vmdir.disk)
                state.sync_record_into(vmdir.sync_record)  # the guest's copy in it, as it was sent
            else:
                gold.new_disk(vmdir.disk)
            vmdir.set_origin(Origin(OriginKind.GOLDEN, gold.dir, fresh=True, warm=state.key if state else ""))
            # its key holds the provisioning: the image has what the config asks for
            vmdir.mark_provisioned(provision_key(lab, vm), options(lab, lab.profile(vm)).get("packages", []),
                                   time.time())
        else:
            made = base(lab, vm)
            disk.create_overlay(vmdir.disk, made.path / "disk.qcow2", vm.disk_bytes)
            vmdir.set_origin(made)
    origin = vmdir.origin()
    if origin and origin.kind == OriginKind.INSTALLER:
        raise PrerequisiteMissing(f"VM {vm.name}'s disk is blank (made by vm.setup): install the guest "
                                  "on it first (invoke vm.install)")
    if origin is None or not origin.path.is_dir():
        where = f" ({origin.path})" if origin else ""
        raise PrerequisiteMissing(f"the image VM {vm.name}'s disk was made from is gone{where}; "
                                  f"`invoke vm.destroy --vm {vm.name}` and start again")
    return origin


def boot_files(lab: "Lab", vm: VMConfig, folder: Path) -> Dict[str, Any]:
    """Kernel, initrd and command line for a guest its profile boots directly, from `folder`."""
    boot = lab.profile(vm).boot
    return {"kernel": folder / boot.kernel if boot.kernel else None,
            "initrd": folder / boot.initrd if boot.initrd else None, "cmdline": boot.cmdline}


def accelerator(lab: "Lab", vm: VMConfig, folder: Path) -> accel.AccelChoice:
    """The accelerator for `vm`: proven with a Linux kernel at hand, never built for (see accel.py)."""
    choice = accel.choose(vm.accel, lambda: probe_kernel(lab, folder), lab.config.cache_dir)
    if vm.accel == "auto" and choice.accel == "tcg" and not lab.warned_tcg:
        log.warning("%s", choice.reason)
        lab.warned_tcg = True  # once per command is enough
    return choice


def probe_kernel(lab: "Lab", folder: Optional[Path] = None) -> Optional[Path]:
    """A Linux kernel to prove KVM with, from what is at hand: the guest's own, any cached
    image's, or the host's. None if there is none (a BSD guest on a fresh host): nothing
    is built just to probe."""
    candidates = [*([folder / "vmlinuz"] if folder else []), *sorted(lab.cache.root.glob("*/*/vmlinuz")),
                  *sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)]
    for candidate in candidates:
        try:
            with open(candidate, "rb"):
                return candidate
        except OSError:
            continue  # missing, or a host kernel only root may read
    return None


# --- installer media ---

def medium(lab: "Lab", vm: VMConfig) -> Path:
    """The install ISO: downloaded (DragonFly) or built from packages (the rehearsal)."""
    profile = lab.profile(vm)
    if profile.medium:
        return builder.ensure(lab.cache, profile, "medium", options(lab, profile)) / "live.iso"
    return fetch_iso(lab, vm).path


def iso_name(lab: "Lab", vm: VMConfig) -> str:
    """The file name of the VM's ISO as its mirrors publish it (the profile's release, or the config's)."""
    return PurePosixPath(iso_source(lab, vm)["path"]).name


def fetch_iso(lab: "Lab", vm: VMConfig, offline: bool = False) -> fetch.FetchResult:
    """The VM profile's installer ISO, verified, from the cache or its mirrors."""
    profile = lab.profile(vm)
    return fetch.fetch(**iso_source(lab, vm), pin=options(lab, profile).get("checksum"),
                       cache_dir=lab.config.cache_dir, offline=offline)


def iso_source(lab: "Lab", vm: VMConfig) -> Dict[str, Any]:
    """Where the VM's ISO comes from: its mirrors (the config's, else the profile's), path and checksum file."""
    profile = lab.profile(vm)
    if not profile.iso:
        raise PrerequisiteMissing(f"guest profile {profile.name!r} is not installed from an ISO "
                                  "(its image is built from packages: invoke vm.image)")
    opts = options(lab, profile)
    return {"mirrors": opts.get("mirrors") or profile.iso.mirrors, "path": iso_path(profile.iso, opts),
            "checksums": profile.iso.checksums}


def iso_path(iso: guests.Iso, opts: Dict[str, Any]) -> str:
    """The ISO's path on a mirror, for the release vmlab.yaml names, else the profile's."""
    return iso.path.format(release=opts.get("release") or iso.release)


def setup(lab: "Lab", vm: VMConfig, vmdir: VMDir, offline: bool = False) -> Dict[str, Any]:
    """Everything a VM needs before its install: the ISO and the blank disk it is installed on
    (for a guest built from packages, or a disk already made: where the disk comes from)."""
    profile = lab.profile(vm)
    made = vmdir.origin() if vmdir.disk.exists() else None
    if profile.image or (made and made.kind != OriginKind.INSTALLER):
        origin = ensure_disk(lab, vm, vmdir)
        return {"disk": str(vmdir.disk), origin.kind.value: str(origin.path)}
    iso = fetch_iso(lab, vm, offline=offline) if profile.iso else None
    installer = iso.path if iso else medium(lab, vm)
    if not vmdir.disk.exists():
        vmdir.dir.mkdir(parents=True, exist_ok=True)
        disk.create_blank(vmdir.disk, vm.disk_bytes)
        vmdir.set_origin(Origin(OriginKind.INSTALLER, installer))
    facts = {"disk": str(vmdir.disk), "medium": str(installer)}
    if iso:
        facts["sha256"] = iso.sha256
    return facts


# --- the cache ---

def cache_listing(lab: "Lab") -> Dict[str, Any]:
    """What the cache holds: ISOs, and every built artefact by kind (images, media, installs, goldens)."""
    root = lab.cache.root
    kinds = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("isos", "logs", "debs")) \
        if root.is_dir() else []
    return {"cache": str(root), "isos": fetch.cached(root),
            "artefacts": {kind: lab.cache.entries(kind) for kind in kinds if lab.cache.entries(kind)}}


def prune_isos(lab: "Lab") -> List[Path]:
    """Delete cached ISOs and partial downloads no profile's configured release uses."""
    keep = set()
    for profile in (guests.load(name, lab.config.guest_dirs) for name in known_profiles(lab.config.guest_dirs)):
        if profile.iso:
            keep.add(Path(iso_path(profile.iso, options(lab, profile))).name)
    return fetch.prune(lab.cache.root, keep)
