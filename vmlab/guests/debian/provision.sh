#!/bin/sh
# Provision a Debian guest over SSH: the packages the config lists (arguments),
# from the mirror the guest was built from (reached through QEMU's user network).
# apt runs with a deadline, so a dead mirror ends with apt's output, not a hang.
set -eu
step() { echo "vmlab-step: $*"; }
fail() { echo "provision.sh: $*" >&2; exit 3; }
[ $# -gt 0 ] || { step "no packages asked for"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
step "apt-get update"
timeout 900 apt-get update -q || fail "apt-get update failed (its output is above)"
step "install $*"
timeout 3600 apt-get install -y -q --no-install-recommends "$@" || fail "apt-get install failed (its output is above)"
apt-get clean
step "done"
