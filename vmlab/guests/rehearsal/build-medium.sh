#!/bin/sh
# Build the rehearsal's install medium, live.iso: one debootstrapped Debian tree is
# both the system to install (packed as /live/system.tar.zst, owners kept) and the
# live system (the CD's own file tree, mounted read-only as root), with a GRUB menu
# on the serial port whose default entry uses the video console.
#
# Inputs (environment): MIRROR, SUITE, PACKAGES, OUT, WORK, HERE, DEB_CACHE (see
# guests/debian/build-image.sh). Progress lines start with "vmlab-step:".
set -eu
: "${MIRROR:?}" "${SUITE:?}" "${PACKAGES:?}" "${OUT:?}" "${WORK:?}" "${HERE:?}" "${DEB_CACHE:?}"
root="$WORK/root"

echo "vmlab-step: debootstrap $SUITE from $MIRROR"
mkdir -p "$DEB_CACHE"
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$DEB_CACHE" "$SUITE" "$root" "$MIRROR"

echo "vmlab-step: configure the system to install"
sh "$HERE/../debian/configure-root.sh" "$root"
echo "/dev/vda1 / ext4 defaults,errors=remount-ro 0 1" > "$root/etc/fstab"
# One initramfs for both: the installed system's root disk, the live system's root CD (isofs).
sh "$HERE/../debian/boot-fast.sh" "$root" virtio_pci virtio_blk ext4 ata_piix sr_mod isofs
# zstd, not gzip: install.sh unpacks it under TCG (in a guest here, 400 MB of it took 10.5 s with
# gzip; all 680 MB take 9.9 s with zstd). The copy is still ~48 s: writing it out costs the most.
tar -C "$root" --numeric-owner -cf - . | zstd -q -T0 -3 > "$WORK/system.tar.zst"

echo "vmlab-step: make the live system"
# Only the live CD gets these: root logs in without a password, like DragonFly's.
passwd --root "$root" --delete root >/dev/null
echo live > "$root/etc/hostname"
install -m 0755 "$HERE/live-init" "$root/usr/local/sbin/vmlab-live-init"
mkdir -p "$root/live"
mv "$WORK/system.tar.zst" "$root/live/"
cp -L "$root/vmlinuz" "$root/live/vmlinuz"
cp -L "$root/initrd.img" "$root/live/initrd.img"
mkdir -p "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=10
set default=0
# The default entry boots with the video console only (as DragonFly's ISO does):
# an unattended install must interrupt the countdown and boot with console=ttyS0.
menuentry "Live system (video console)" {
    linux /live/vmlinuz root=/dev/sr0 rootfstype=iso9660 ro init=/usr/local/sbin/vmlab-live-init
    initrd /live/initrd.img
}
CFG

echo "vmlab-step: write the ISO"
grub-mkrescue -o "$OUT/live.iso" "$root"
cp "$root/live/vmlinuz" "$OUT/vmlinuz"   # for vmlab's KVM probe, which boots a Linux kernel
echo "vmlab-step: done"
