#!/bin/sh
# Needs root: mounts a size-limited tmpfs, uses it, and leaves no mount behind.
set -eu
[ "$(id -u)" = 0 ] || { echo "not root" >&2; exit 1; }
dir=$(mktemp -d)
mount -t tmpfs -o size=1m sample "$dir"
echo ok > "$dir/file"
umount "$dir"
rmdir "$dir"
echo "mounted, used and unmounted a tmpfs as $(id -un)"
