#!/bin/sh
# Build the Debian test guest: debootstrap a root file system, configure it,
# and write it as a qcow2 disk without mounting anything (mkfs.ext4 -d).
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
# The whole disk is one ext4 file system; the kernel is booted directly.
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$root/etc/fstab"
echo "vmlab" > "$root/etc/hostname"
printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
# DHCP on whatever the NIC is called; QEMU's user network answers DNS at 10.0.2.3.
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=e*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/80-vmlab.network"
echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
wants="$root/etc/systemd/system/multi-user.target.wants"
mkdir -p "$wants" "$root/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.service "$wants/systemd-networkd.service"
# A login prompt on the serial console, which vmlab logs to vm/<name>/console.log.
ln -sf /lib/systemd/system/serial-getty@.service \
    "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# SSH: keys only. Host keys are not baked in: the seed CD brings the lab's own.
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n' \
    > "$root/etc/ssh/sshd_config.d/vmlab.conf"
rm -f "$root"/etc/ssh/ssh_host_*
passwd --root "$root" --lock root >/dev/null
# A non-root "lab" user, for suites that must get root through sudo (privileged: true).
chroot "$root" useradd --create-home --shell /bin/bash lab
passwd --root "$root" --lock lab >/dev/null
echo 'lab ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vmlab-lab"
chmod 0440 "$root/etc/sudoers.d/vmlab-lab"
install -m 0755 "$HERE/vmlab-seed" "$root/usr/local/sbin/vmlab-seed"
install -m 0644 "$HERE/vmlab-seed.service" "$root/etc/systemd/system/vmlab-seed.service"
ln -sf /etc/systemd/system/vmlab-seed.service "$wants/vmlab-seed.service"
: > "$root/etc/machine-id"   # a fresh id on every boot of every clone
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

echo "vmlab-step: write the disk image"
cp -L "$root/vmlinuz" "$OUT/vmlinuz"
cp -L "$root/initrd.img" "$OUT/initrd.img"
truncate -s 4G "$WORK/disk.raw"
mkfs.ext4 -q -d "$root" -L vmlab-root -E lazy_itable_init=1,lazy_journal_init=1 "$WORK/disk.raw"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$OUT/disk.qcow2"
echo "vmlab-step: done"
