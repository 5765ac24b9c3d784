#!/bin/sh
# Build the Debian test guest: debootstrap a root file system, configure it, and
# write it as a qcow2 disk without mounting anything (mkfs.ext4 -d). The whole
# disk is one ext4 file system; vmlab boots the kernel left beside it.
#
# Inputs (environment): MIRROR, SUITE, PACKAGES (comma-separated), OUT (empty
# folder for disk.qcow2, vmlinuz, initrd.img), WORK (scratch folder), HERE
# (this profile's folder), DEB_CACHE (folder to keep downloaded .debs in).
# Progress lines start with "vmlab-step:" so vmlab can show them.
set -eu
: "${MIRROR:?}" "${SUITE:?}" "${PACKAGES:?}" "${OUT:?}" "${WORK:?}" "${HERE:?}" "${DEB_CACHE:?}"
root="$WORK/root"

echo "vmlab-step: debootstrap $SUITE from $MIRROR"
mkdir -p "$DEB_CACHE"
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$DEB_CACHE" "$SUITE" "$root" "$MIRROR"

echo "vmlab-step: configure the guest"
sh "$HERE/configure-root.sh" "$root"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$root/etc/fstab"
# Boot time under TCG, where each second of a boot is a second of a test or a golden image:
# - the initramfs holds what mounts the root disk and finds the seed CD (ATA, CD-ROM), not
#   most of the kernel's drivers (MODULES=most: 36 MB, unpacked in ~3 s; this: 7 MB), so
#   the seed CD is there when vmlab-seed looks, not ~8 s later when udev loads its driver;
# - units this guest has no use for, each 0.7-3.3 s of a boot's CPU, are masked: e2scrub_reap
#   (LVM snapshots of ext4 checks), the DRM, EFI pstore and device-mapper module loads.
echo "MODULES=list" > "$root/etc/initramfs-tools/conf.d/vmlab"
printf 'virtio_pci\nvirtio_blk\next4\nata_piix\nsr_mod\n' >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all
for unit in e2scrub_reap.service modprobe@drm.service modprobe@efi_pstore.service modprobe@dm_mod.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

echo "vmlab-step: write the disk image"
cp -L "$root/vmlinuz" "$OUT/vmlinuz"
cp -L "$root/initrd.img" "$OUT/initrd.img"
truncate -s 4G "$WORK/disk.raw"
mkfs.ext4 -q -d "$root" -L vmlab-root -E lazy_itable_init=1,lazy_journal_init=1 "$WORK/disk.raw"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$OUT/disk.qcow2"
echo "vmlab-step: done"
