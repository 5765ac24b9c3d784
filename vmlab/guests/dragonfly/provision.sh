#!/bin/sh
# Provision an installed DragonFly over SSH: the CA bundle where pkg and fetch look for
# it, pkg's repository, rsync, doas with a rule for the lab user, and the packages the
# config lists (arguments). DragonFly ships pkg in its base and has no pkg(7)
# bootstrapper, so the pkg steps are those of the daily builders (golang/build,
# dragonfly-packer). Every pkg step has a deadline: a dead mirror ends with pkg's own
# output, not a hang. Sources: docs/dragonfly.md ("Packages").
set -eu
# Tests run it on an installed tree ($VMLAB_ROOT) with VMLAB_TEST_PATH as its whole PATH:
# DragonFly's commands stood in for, and nothing else of their host's.
PATH=${VMLAB_TEST_PATH:-/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin}
export PATH
root=${VMLAB_ROOT:-}
repos=$root/usr/local/etc/pkg/repos
ca=/usr/local/share/certs/ca-root-nss.crt
step() { echo "vmlab-step: $*"; }
fail() { echo "provision.sh: $*" >&2; exit 3; }

step "link /etc/ssl/cert.pem to the CA bundle"
[ -f "$root$ca" ] || fail "no CA bundle at $ca: https mirrors cannot be verified"
mkdir -p $root/etc/ssl
ln -sf $ca $root/etc/ssl/cert.pem

step "update pkg's catalogue"
[ -f $repos/df-latest.conf ] || cp $repos/df-latest.conf.sample $repos/df-latest.conf
timeout 900 env ASSUME_ALWAYS_YES=YES pkg update -f || fail "pkg update failed (its output is above)"
# 6.4.0's pkg 1.14 cannot run the lua script of the pkg it upgrades to, and that failed
# upgrade removes df-latest.conf: go on with the pkg there is, and put the file back.
timeout 900 env ASSUME_ALWAYS_YES=YES pkg upgrade -y pkg || echo "provision.sh: pkg could not upgrade itself; going on" >&2
[ -f $repos/df-latest.conf ] || cp $repos/df-latest.conf.sample $repos/df-latest.conf

step "install rsync doas $*"
timeout 3600 env ASSUME_ALWAYS_YES=YES pkg install -y rsync doas "$@" || fail "pkg install failed (its output is above)"
echo "permit nopass lab as root" > $root/usr/local/etc/doas.conf
step "done"
