"""The devices DragonFly would see in the machine a QEMU command line describes, named as its drivers name them.

The simulator (dragonfly_sim.py), its stand-ins (dragonfly_stubs.py) and the installed
guest (dragonfly_guest.py) take disk, CD and NIC names from here, so that a script that
guesses a name (`ad0` where vmlab gives QEMU a virtio disk) fails as it would on
DragonFly. Driver names, from DragonFly's sources:

- virtio-blk-pci           -> vbdN   (sys/dev/virtual/virtio/block/virtio_blk.c: disk_create(.., "vbd"))
- virtio-net-pci           -> vtnetN (sys/dev/virtual/virtio/net/if_vtnet.c)
- e1000                    -> emN    (sys/dev/netif/em)
- ide-hd on an IDE bus     -> adN    (nata, ATA_STATIC_ID: 2 * channel + unit)
- ide-hd on an AHCI bus    -> daN    (sys/dev/disk/ahci attaches disks through CAM: da)
- scsi-hd (virtio-scsi)    -> daN    (CAM da)
- ide-cd on an IDE bus     -> acdN and cdN: GENERIC has both natapicd (acd) and natapicam (cd,
                                      through CAM), so each IDE CD has two nodes
                                      (../shared/dragonfly-console.md, section 4, corrected)
- scsi-cd / ide-cd on AHCI -> cdN    (CAM cd)

Only the argv's -device and -blockdev options are read; stdlib only (the stubs run this
module's caller inside the installed guest's chroot, where vmlab is not importable).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple


@dataclass
class Hardware:
    disks: List[str] = field(default_factory=list)  # hard disks, in DragonFly's names, boot disk first
    cds: Dict[str, str] = field(default_factory=dict)  # CD node -> QEMU drive (node-name) it shows
    nics: List[str] = field(default_factory=list)
    drives: Dict[str, str] = field(default_factory=dict)  # DragonFly disk name -> QEMU drive (node-name)

    def kern_disks(self) -> str:
        """`sysctl -n kern.disks`: every disk device, newest first as the kernel lists them [INF: the order]."""
        return " ".join(reversed([*self.disks, *self.cds]))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Hardware":
        return Hardware(**json.loads(text))


def _opts(text: str) -> Tuple[str, Dict[str, str]]:
    """QEMU's `driver,key=value,...` (',,' is a literal comma)."""
    parts = text.replace(",,", "\0").split(",")
    return parts[0].replace("\0", ","), {k: v.replace("\0", ",") for k, _, v in (p.partition("=") for p in parts[1:])}


def from_argv(argv: List[str]) -> Hardware:
    """The devices of a QEMU command line, as DragonFly names them."""
    devices = [_opts(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "-device"]
    buses = {o.get("id", ""): driver for driver, o in devices}  # controller id -> its driver
    hw = Hardware()
    counters: Dict[str, int] = {}

    def number(prefix: str) -> str:
        counters[prefix] = counters.get(prefix, -1) + 1
        return f"{prefix}{counters[prefix]}"

    for driver, o in devices:
        bus = o.get("bus", "")
        controller = buses.get(bus.split(".")[0], "piix-ide" if bus.startswith("ide.") else "")
        on_ahci = controller.startswith(("ahci", "ich9-ahci"))
        drive = o.get("drive", "")
        if driver == "virtio-blk-pci":
            name = number("vbd")
        elif driver == "ide-hd" and not on_ahci:
            channel, unit = int(bus.split(".")[1]) if "." in bus else 0, int(o.get("unit", 0))
            name = f"ad{2 * channel + unit}"
        elif driver in ("ide-hd", "scsi-hd"):
            name = number("da")
        elif driver == "ide-cd" and not on_ahci:
            hw.cds[number("acd")] = drive
            hw.cds[number("cd")] = drive
            continue
        elif driver in ("ide-cd", "scsi-cd"):
            hw.cds[number("cd")] = drive
            continue
        elif driver == "virtio-net-pci":
            hw.nics.append(number("vtnet"))
            continue
        elif driver == "e1000":
            hw.nics.append(number("em"))
            continue
        else:
            continue
        hw.disks.append(name)
        hw.drives[name] = drive
    return hw


def vmlab_install_machine() -> Hardware:
    """The machine vmlab gives an install: its own argv (vmlab.qemu.machine), with the installer and the seed CD."""
    import tempfile
    from pathlib import Path

    from vmlab.qemu.accel import AccelChoice
    from vmlab.qemu.machine import Machine, MachineSpec

    with tempfile.TemporaryDirectory() as tmp:
        spec = MachineSpec(name="x", accel=AccelChoice("tcg", "test"), memory_mib=512, cpus=1, disk=Path(tmp) / "d",
                           install_iso=Path(tmp) / "i.iso", seed_iso=Path(tmp) / "s.iso")
        return from_argv(Machine("x", Path(tmp) / "x").argv(spec, 2222))
