#!/bin/sh
# Provision an installed DragonFly over SSH: pkg, rsync, doas with a rule for the
# lab user, and the packages the config lists (arguments). Every pkg step has a
# deadline, so a dead mirror ends with pkg's own output instead of a hang.
set -eu
PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin
export PATH
step() { echo "vmlab-step: $*"; }
fail() { echo "provision.sh: $*" >&2; exit 3; }

step "bootstrap pkg"
repos=/usr/local/etc/pkg/repos
# 6.4's pkg cannot upgrade itself without df-latest.conf (docs/dragonfly.md).
[ -f $repos/df-latest.conf ] || cp $repos/df-latest.conf.sample $repos/df-latest.conf
timeout 900 env ASSUME_ALWAYS_YES=YES pkg bootstrap -f || fail "pkg bootstrap failed (its output is above)"
step "install rsync doas $*"
timeout 3600 env ASSUME_ALWAYS_YES=YES pkg install -y rsync doas "$@" || fail "pkg install failed (its output is above)"
echo "permit nopass lab as root" > /usr/local/etc/doas.conf
step "done"
