#!/bin/sh
# Install DragonFly from the running live CD onto the first disk: MBR + disklabel64,
# UFS /boot, swap, HAMMER2 root, a copy of the live system, the serial console,
# DHCP, sshd with the lab's keys, a "lab" user, /bin/sh for root and root's password
# locked. Run from the seed CD (this script's folder also holds the keys) by the live
# CD's rc.d/pfi (pfi.conf names it), or typed at its root shell (install-shell.yaml).
# Progress lines start with "vmlab-step:"; it ends with "vmlab-install: exit STATUS"
# (3 and a reason on stderr when a step fails) and, when it succeeded, powers the
# machine off itself. Sources for every step: docs/dragonfly.md.
set -eu
# pfi and a fresh login give a minimal environment: set PATH explicitly. Tests replace it
# with VMLAB_TEST_PATH: DragonFly's commands stood in for, and nothing else of their host's.
PATH=${VMLAB_TEST_PATH:-/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin}
export PATH
seed=$(cd "$(dirname "$0")" && pwd)
target=${VMLAB_TARGET:-/tmp/target}
heartbeat=${VMLAB_HEARTBEAT:-30}

step() { echo "vmlab-step: $*"; }
fail() { echo "install.sh: $*" >&2; exit 3; }
finish() {
    status=$?
    echo "vmlab-install: exit $status"    # what the console watches for
    [ "$status" = 0 ] || exit "$status"   # a failed install leaves the live CD up, to look at
    sync
    poweroff                              # as golang/build's phase scripts end
    sleep 600                             # poweroff ends this script: rc must not go on meanwhile
}
trap finish EXIT

# Copy a tree with cpdup, which says nothing per file (-q) and takes many minutes for /
# under TCG: while it copies, say every $heartbeat s how far the target has grown, so that
# the console's idle deadline measures progress rather than silence. -i0: never ask.
copy() {
    cpdup -i0 -q "$1" "$2" &
    copying=$!
    grown "$1" "$2" &
    beating=$!
    if wait $copying; then status=0; else status=$?; fi
    kill $beating 2>/dev/null || :
    [ $status = 0 ] || fail "cpdup $1 $2 failed (status $status)"
}
grown() {
    was=
    while sleep "$heartbeat" >/dev/null 2>&1; do
        now=$(df -k "$2" | awk 'NR == 2 { print $3 }')
        [ "$now" = "$was" ] || step "copying $1: $(( ${now:-0} / 1024 )) MB in $2"
        was=$now
    done
}

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
# cpdup does not cross mounts, and the CD's /etc, /var, /root and /usr/local/etc are tmpfs
# copies: copy each on its own. /etc.hdd is the /etc meant for installed systems.
for tree in / /boot /var /root /usr/local/etc; do
    mkdir -p $target$tree
    copy $tree $target$tree
done
rm -rf $target/etc
copy /etc.hdd $target/etc
rm -rf $target/README* $target/autorun* $target/index.html $target/dflybsd.ico $target/etc.hdd

step "configure the installed system"
# The loader's console= is all the serial console needs. No /boot.config: boot2 knows only
# the flags VhaCgmnPprsv, and stops at its own prompt, for good, on any other.
cat > $target/boot/loader.conf <<CONF
vfs.root.mountfrom="hammer2:${disk}s1d"
console="comconsole"
autoboot_delay="1"
CONF
rm -f $target/boot/boot.config
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
# Release ISOs copy the live CD's accounts over /etc.hdd (nrelease/Makefile), the password-less
# installer among them: drop it, as DragonFly's own builders do (dragonfly-packer
# http/dfly_hammer2.sh, cross-platform-actions resources/install.sh), and check it is gone.
if grep -q '^installer:' $target/etc/master.passwd; then
    pw -V $target/etc userdel installer || fail "cannot remove the live CD's installer account"
fi
! grep -q '^installer:' $target/etc/master.passwd || fail "the live CD's installer account reached the target"
# root's password is empty too (DragonFly's installer is what sets one): lock it. `*` still
# lets sshd take the lab's key. root's shell is /bin/sh, which vmlab writes for.
pw -V $target/etc usermod root -s /bin/sh -w no || fail "cannot lock root's password"
install -d -m 700 $target/root/.ssh
install -m 600 $seed/authorized_keys $target/root/.ssh/authorized_keys
install -m 600 $seed/ssh_host_ed25519_key $target/etc/ssh/ssh_host_ed25519_key
install -m 644 $seed/ssh_host_ed25519_key.pub $target/etc/ssh/ssh_host_ed25519_key.pub
# The lab user (privileged suites run `doas -n` as it); uid 1001 is chosen here, not left to
# pw, because the key's owner below must be the same.
mkdir -p $target/home
mount -t devfs devfs $target/dev
chroot $target pw useradd lab -u 1001 -m -s /bin/sh || fail "cannot add the lab user"
umount $target/dev
install -d -m 700 -o 1001 -g 1001 $target/home/lab/.ssh
install -m 600 -o 1001 -g 1001 $seed/authorized_keys $target/home/lab/.ssh/authorized_keys

step "unmount"
umount $target/boot
umount $target
step "done"
