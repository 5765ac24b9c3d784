#!/bin/sh
# Configure a debootstrapped Debian tree as a vmlab guest: DHCP on any NIC, a login
# on the serial console, sshd with keys only (host keys come from the seed CD at
# boot, never from the image), a "lab" user with a sudo rule, and the seed service.
# Usage: configure-root.sh ROOT   (shared with guests/rehearsal)
set -eu
root=$1
here=$(cd "$(dirname "$0")" && pwd)

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
install -m 0755 "$here/vmlab-seed" "$root/usr/local/sbin/vmlab-seed"
install -m 0644 "$here/vmlab-seed.service" "$root/etc/systemd/system/vmlab-seed.service"
ln -sf /etc/systemd/system/vmlab-seed.service "$wants/vmlab-seed.service"
# apt fetches no translated package descriptions: ~5 s of each provision's apt-get update.
echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/90vmlab-no-translations"
: > "$root/etc/machine-id"   # a fresh id on every boot of every clone
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
