#!/bin/sh
# Install the rehearsal system from the running live CD onto the first virtio disk:
# one MBR partition with ext4, the system from /live/system.tar.zst, GRUB on the
# serial console, the lab's keys. It plays the part of guests/dragonfly/install.sh:
# run from the seed CD by the live system's init (pfi.conf names it), progress lines
# start with "vmlab-step:", it ends with "vmlab-install: exit STATUS" (3 and a reason
# on stderr when a step fails) and, when it succeeded, powers the machine off itself.
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
seed=$(cd "$(dirname "$0")" && pwd)
target=/tmp/target
step() { echo "vmlab-step: $*"; }
fail() { echo "install.sh: $*" >&2; exit 3; }
finish() {
    status=$?
    echo "vmlab-install: exit $status"    # what the console watches for
    [ "$status" = 0 ] || exit "$status"
    sync
    poweroff -f                           # init is a shell script here: no services to stop
}
trap finish EXIT

disk=$(lsblk -dno NAME,TYPE | awk '$2 == "disk" && $1 ~ /^vd/ { print $1; exit }')
[ -n "$disk" ] || fail "no virtio disk (lsblk: $(lsblk -dno NAME,TYPE | tr '\n' ' '))"
dev=/dev/$disk

step "partition $disk"
dd if=/dev/zero of=$dev bs=1M count=4 2>/dev/null    # whatever was there before is gone
printf 'label: dos\ntype=83, bootable\n' | sfdisk --quiet --wipe always $dev || fail "sfdisk $dev failed"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b ${dev}1 ] && break; sleep 0.5; done
[ -b ${dev}1 ] || fail "${dev}1 did not appear after partitioning"

step "make the file system"
mkfs.ext4 -F -q -L vmlab-root ${dev}1 || fail "mkfs.ext4 ${dev}1 failed"
mkdir -p $target
mount ${dev}1 $target || fail "cannot mount ${dev}1"

step "copy the system"
tar -C $target --numeric-owner --zstd -xpf /live/system.tar.zst || fail "unpacking /live/system.tar.zst failed"

step "install the boot loader"
grub-install --target=i386-pc --boot-directory=$target/boot $dev || fail "grub-install $dev failed"
cat > $target/boot/grub/grub.cfg <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=1
menuentry "Debian (installed by vmlab)" {
    linux /vmlinuz root=/dev/vda1 ro console=ttyS0,115200 quiet
    initrd /initrd.img
}
CFG

step "install the keys"
install -d -m 700 $target/root/.ssh
install -m 600 $seed/authorized_keys $target/root/.ssh/authorized_keys
install -m 600 $seed/ssh_host_ed25519_key $target/etc/ssh/ssh_host_ed25519_key
install -m 644 $seed/ssh_host_ed25519_key.pub $target/etc/ssh/ssh_host_ed25519_key.pub

step "unmount"
sync
umount $target
step "done"
