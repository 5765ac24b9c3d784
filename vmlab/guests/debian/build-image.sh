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
sh "$HERE/boot-fast.sh" "$root" virtio_pci virtio_blk ext4 ata_piix sr_mod   # the disk; the seed CD

echo "vmlab-step: write the disk image"
cp -L "$root/vmlinuz" "$OUT/vmlinuz"
cp -L "$root/initrd.img" "$OUT/initrd.img"
truncate -s 4G "$WORK/disk.raw"
mkfs.ext4 -q -d "$root" -L vmlab-root -E lazy_itable_init=1,lazy_journal_init=1 "$WORK/disk.raw"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$OUT/disk.qcow2"
echo "vmlab-step: done"
