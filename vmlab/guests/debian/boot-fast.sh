#!/bin/sh
# Make a debootstrapped Debian tree boot fast under TCG, where each second of a boot is a
# second of a test or a golden image:
# - the initramfs holds the drivers named here (what mounts the root file system and finds the
#   seed CD), not most of the kernel's (MODULES=most: 36 MB, unpacked in ~3 s; a list: 7 MB),
#   so the seed CD is there when vmlab-seed looks, not ~8 s later when udev loads its driver;
# - units a vmlab guest has no use for, each 0.7-3.3 s of a boot's CPU, are masked: e2scrub_reap
#   (LVM snapshots of ext4 checks), the DRM, EFI pstore and device-mapper module loads;
# - udev does not load drivers for what QEMU shows a headless guest that it never uses: the video
#   card's DRM driver and its frame buffer console (the video card is there for DragonFly's sake),
#   the floppy controller, the PC speaker, wireless regulation, nested KVM, AMD's crypto unit.
#   `modprobe NAME` still loads one.
# Usage: boot-fast.sh ROOT MODULE...   (shared by guests/debian and guests/rehearsal)
set -eu
root=$1
shift
echo "MODULES=list" > "$root/etc/initramfs-tools/conf.d/vmlab"
printf '%s\n' "$@" >> "$root/etc/initramfs-tools/modules"
printf 'blacklist %s\n' bochs floppy pcspkr cfg80211 kvm_amd kvm_intel ccp > "$root/etc/modprobe.d/vmlab-unused.conf"
chroot "$root" update-initramfs -u -k all
for unit in e2scrub_reap.service modprobe@drm.service modprobe@efi_pstore.service modprobe@dm_mod.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
