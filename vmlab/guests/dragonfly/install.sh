#!/bin/sh
# Install DragonFly from the running live CD onto the first disk: MBR + disklabel64,
# UFS /boot, swap, HAMMER2 root, a copy of the live system, the serial console,
# DHCP, sshd with the lab's keys, a "lab" user, and /bin/sh as root's shell.
# Runs as root from the seed CD (this script's folder also holds the keys).
# Progress lines start with "vmlab-step:"; a failure exits 3 with the reason.
# Sources for every step: docs/dragonfly.md ("Installing from the live shell").
set -eu
# pfi and a fresh login give a minimal environment: set PATH explicitly. Tests
# put stub commands first with VMLAB_TEST_PATH.
PATH=${VMLAB_TEST_PATH:+$VMLAB_TEST_PATH:}/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin
export PATH
seed=$(cd "$(dirname "$0")" && pwd)
target=${VMLAB_TARGET:-/tmp/target}

step() { echo "vmlab-step: $*"; }
fail() { echo "install.sh: $*" >&2; exit 3; }

disk=$(sysctl -n kern.disks | tr ' ' '\n' | grep -E '^(vbd|da|ad)[0-9]+$' | sort | head -n 1)
[ -n "$disk" ] || fail "no disk in kern.disks ($(sysctl -n kern.disks))"
nic=$(ifconfig -l | tr ' ' '\n' | grep -vE '^(lo|pflog|faith)[0-9]*$' | head -n 1)
[ -n "$nic" ] || fail "no network interface in ifconfig -l"

step "partition $disk"
dd if=/dev/zero of=/dev/$disk bs=32k count=64 2>/dev/null
fdisk -IB $disk >/dev/null || fail "fdisk -IB $disk failed"
disklabel64 -r -w -B ${disk}s1 auto || fail "disklabel64 -w ${disk}s1 failed"
# The auto label has no partitions yet: add a (1G UFS /boot), b (1G swap), d (the rest, HAMMER2).
label=${TMPDIR:-/tmp}/vmlab-label
disklabel64 ${disk}s1 > $label
printf '  a: 1g 0 4.2BSD\n  b: 1g * swap\n  d: * * HAMMER2\n' >> $label
disklabel64 -R ${disk}s1 $label || fail "disklabel64 -R ${disk}s1 failed: $(cat $label)"

step "make the file systems"
newfs /dev/${disk}s1a >/dev/null || fail "newfs ${disk}s1a failed"
newfs_hammer2 -L ROOT /dev/${disk}s1d >/dev/null || fail "newfs_hammer2 ${disk}s1d failed"
mkdir -p $target
mount -t hammer2 /dev/${disk}s1d@ROOT $target || fail "cannot mount the HAMMER2 root"
mkdir -p $target/boot
mount /dev/${disk}s1a $target/boot || fail "cannot mount /boot"

step "copy the live system"
# cpdup does not cross mounts, and the CD's /etc, /var, /root and /usr/local/etc are
# tmpfs copies: copy each on its own. /etc.hdd is the /etc meant for installed systems.
for tree in / /boot /var /root /usr/local/etc; do
    mkdir -p $target$tree
    cpdup -q $tree $target$tree || fail "cpdup $tree failed"
done
rm -rf $target/etc
cpdup -q /etc.hdd $target/etc || fail "cpdup /etc.hdd failed"
rm -rf $target/README* $target/autorun* $target/index.html $target/dflybsd.ico $target/etc.hdd

step "configure the installed system"
cat > $target/boot/loader.conf <<CONF
vfs.root.mountfrom="hammer2:${disk}s1d"
console="comconsole"
autoboot_delay="1"
CONF
echo "-S115200 -D" > $target/boot/boot.config      # boot2 reads it from the /boot partition
cat > $target/etc/fstab <<CONF
/dev/${disk}s1d@ROOT  /      hammer2  rw  1 1
/dev/${disk}s1a       /boot  ufs      rw  1 1
/dev/${disk}s1b       none   swap     sw  0 0
proc                  /proc  procfs   rw  0 0
CONF
cat > $target/etc/rc.conf <<CONF
hostname="vmlab"
ifconfig_${nic}="DHCP"
dhcp_client="dhcpcd"
sshd_enable="YES"
CONF
install -d -m 700 $target/root/.ssh
install -m 600 $seed/authorized_keys $target/root/.ssh/authorized_keys
install -m 600 $seed/ssh_host_ed25519_key $target/etc/ssh/ssh_host_ed25519_key
install -m 644 $seed/ssh_host_ed25519_key.pub $target/etc/ssh/ssh_host_ed25519_key.pub
mount -t devfs devfs $target/dev
chroot $target pw usermod root -s /bin/sh || fail "cannot give root /bin/sh"
chroot $target pw useradd lab -m -s /bin/sh || fail "cannot add the lab user"
install -d -m 700 -o 1001 -g 1001 $target/home/lab/.ssh
install -m 600 -o 1001 -g 1001 $seed/authorized_keys $target/home/lab/.ssh/authorized_keys
umount $target/dev

step "unmount"
umount $target/boot
umount $target
step "done"
