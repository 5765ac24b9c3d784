#!/bin/sh
# vmlab's privileged mount suite: runs INSIDE a guest, as root, under DragonFly's
# /bin/sh or Debian's dash. It checks every golden image and is the example of a
# privileged suite for users.
#
# It does what a ports builder (DragonFly's synth, poudriere) does: it sets up
# N worker roots at once, each a tmpfs holding read-only null/bind mounts of the
# system trees, a size-limited tmpfs /tmp and work dir, devfs and procfs. Then it
# checks that the mounts are there, that read-only means read-only, that workers
# cannot see each other's files, that the size limit holds, that dev and proc
# work, and that teardown (with retries) leaves the mount table exactly as it was.
#
#   MOUNT_WORKERS  number of workers (default 4)
#   MOUNT_BASE     folder for the worker roots (default /var/tmp/vmlab-mount-suite);
#                  must not exist yet, and is removed at the end
#   JUNIT          JUnit XML report (default ./mount-suite.xml)
# Exit: 0 all checks passed, 1 a check failed, 2 could not run.

# ---- Every OS difference lives here; the rest of the script is OS-independent.
# (No function may be named like a command it wraps: DragonFly has mount_tmpfs.)
case "$(uname -s)" in
Linux)
    SYSTEM_TREES="/bin /sbin /lib /lib64 /usr /etc"
    PROC_SELF=self
    OS_COMMANDS=""
    # Private, so nothing mounted later under the host's tree shows up in the worker.
    mount_ro_tree()     { mount --bind "$1" "$2" && mount --make-private "$2" &&
                          mount -o remount,bind,ro "$2"; }
    mount_sized_tmpfs() { mount -t tmpfs -o "size=$1" tmpfs "$2"; }
    mount_dev()         { mount -t devtmpfs devtmpfs "$1"; }
    mount_proc()        { mount -t proc proc "$1"; }
    force_unmount()     { umount -l "$1"; }
    list_mounts()       { awk '{ print $2 }' /proc/self/mounts; }
    ;;
DragonFly)
    SYSTEM_TREES="/bin /sbin /lib /libexec /usr /etc"
    PROC_SELF=curproc
    OS_COMMANDS="mount_null mount_tmpfs"
    mount_ro_tree()     { mount_null -o ro "$1" "$2"; }
    mount_sized_tmpfs() { mount_tmpfs -s "$1" tmpfs "$2"; }
    mount_dev()         { mount -t devfs devfs "$1"; }
    mount_proc()        { mount -t procfs proc "$1"; }
    force_unmount()     { umount -f "$1"; }
    list_mounts()       { mount -p | awk '{ print $2 }'; }
    ;;
*)
    echo "mount-suite: unsupported OS '$(uname -s)' (Linux and DragonFly only)" >&2
    exit 2
    ;;
esac

WORKERS=${MOUNT_WORKERS:-4}
BASE=${MOUNT_BASE:-/var/tmp/vmlab-mount-suite}
JUNIT=${JUNIT:-mount-suite.xml}
TMPFS_MB=16          # size of each worker's root, /tmp and work dir
UMOUNT_TRIES=5       # a busy mount is retried this many times, 1 s apart

cannot_run() { echo "mount-suite: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot_run "must run as root"
for c in mount umount dd touch awk sed tr grep sort cmp diff mktemp date head wc $OS_COMMANDS; do
    command -v "$c" >/dev/null 2>&1 || cannot_run "required command '$c' not found"
done
case "$WORKERS" in ''|*[!0-9]*|0*) cannot_run "MOUNT_WORKERS must be a number >= 1, not '$WORKERS'" ;; esac
case "$BASE" in /?*) ;; *) cannot_run "MOUNT_BASE must be an absolute path, not '$BASE'" ;; esac
case "$BASE" in *[[:space:]]*) cannot_run "MOUNT_BASE must not contain spaces" ;; esac
[ -e "$BASE" ] && cannot_run "$BASE already exists (left over from an earlier run?): remove it first"
( : > "$JUNIT" ) 2>/dev/null || cannot_run "cannot write the JUnit report $JUNIT"

RO_TREES="" SKIPPED=""
for t in $SYSTEM_TREES; do
    if [ -L "$t" ]; then SKIPPED="$SKIPPED $t"; elif [ -d "$t" ]; then RO_TREES="$RO_TREES $t"; fi
done

# ---- Recording results: each check calls `problem` for anything wrong.
STATE=$(mktemp -d "${TMPDIR:-/tmp}/mount-suite.XXXXXX") || cannot_run "mktemp failed"
CASES=0 FAILED=0 INTERRUPTED="" TEARDOWN_STARTED=no STARTED=$(date +%s)
: > "$STATE/results"

problem() { echo "$*" >> "$STATE/problems"; }

run_check() {   # NAME FUNCTION
    : > "$STATE/problems"
    t0=$(date +%s)
    "$2"
    record "$1" $(( $(date +%s) - t0 ))
}

record() {      # NAME SECONDS: failed if any problem was noted
    CASES=$((CASES + 1))
    if [ -s "$STATE/problems" ]; then
        FAILED=$((FAILED + 1))
        why=$(head -n 1 "$STATE/problems")
        more=$(( $(wc -l < "$STATE/problems") - 1 ))
        [ "$more" -gt 0 ] && why="$why (and $more more)"
        echo "FAIL - $1: $why"
        sed -n '2,$s/^/    /p' "$STATE/problems"
        cp "$STATE/problems" "$STATE/details.$CASES"
        echo "fail|$1|$2|$why" >> "$STATE/results"
    else
        echo "ok - $1"
        echo "ok|$1|$2|" >> "$STATE/results"
    fi
}

xml_escape() { tr -d '\000-\010\013\014\016-\037' |
               sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

write_junit() {
    {
        echo '<?xml version="1.0" encoding="UTF-8"?>'
        echo '<testsuites>'
        echo "  <testsuite name=\"mount-suite\" tests=\"$CASES\" failures=\"$FAILED\" errors=\"0\" time=\"$(( $(date +%s) - STARTED ))\">"
        n=0
        while IFS='|' read -r status name secs why; do
            n=$((n + 1))
            printf '    <testcase classname="mount-suite" name="%s" time="%s"' "$name" "$secs"
            if [ "$status" = ok ]; then echo '/>'; continue; fi
            printf '>\n      <failure message="%s">' "$(printf '%s' "$why" | xml_escape)"
            xml_escape < "$STATE/details.$n"
            printf '</failure>\n    </testcase>\n'
        done < "$STATE/results"
        echo '  </testsuite>'
        echo '</testsuites>'
    } > "$JUNIT" || echo "mount-suite: could not write $JUNIT" >&2
}

# ---- Worker roots.
workers() { i=1; while [ "$i" -le "$WORKERS" ]; do echo "$i"; i=$((i + 1)); done; }

worker_mounts() {   # N: every mount point of worker N, in mounting order
    echo "$BASE/w$1"
    for t in $RO_TREES; do echo "$BASE/w$1$t"; done
    for d in tmp work dev proc; do echo "$BASE/w$1/$d"; done
}

mounts_under_base() {   # deepest first, so children go before their parents
    list_mounts | awk -v b="$BASE" '$0 == b || index($0, b "/") == 1' | LC_ALL=C sort -r
}

step() {    # run one mount command in a worker; note its error for the setup check
    out=$("$@" 2>&1) || echo "$wname: $*: ${out:-failed}" >> "$log"
}

setup_worker() {    # N; runs in the background, one per worker
    wname=w$1 w=$BASE/w$1 log=$STATE/setup.w$1
    mkdir "$w" || { echo "$wname: cannot create $w" >> "$log"; return; }
    step mount_sized_tmpfs "${TMPFS_MB}m" "$w"
    for t in $RO_TREES; do mkdir -p "$w$t" && step mount_ro_tree "$t" "$w$t"; done
    mkdir "$w/tmp" "$w/work" "$w/dev" "$w/proc"
    step mount_sized_tmpfs "${TMPFS_MB}m" "$w/tmp"
    step mount_sized_tmpfs "${TMPFS_MB}m" "$w/work"
    step mount_dev "$w/dev"
    step mount_proc "$w/proc"
}

unmount_with_retries() {    # DIR; sets TRIES to the number of attempts used
    TRIES=1
    while ! err=$(umount "$1" 2>&1); do
        if [ "$TRIES" -ge "$UMOUNT_TRIES" ]; then
            problem "$1: still busy after $UMOUNT_TRIES tries ($err); forced it"
            force_unmount "$1" || problem "$1: could not unmount even by force"
            return 1
        fi
        echo "    busy: $1 (try $TRIES of $UMOUNT_TRIES): $err"
        sleep 1
        TRIES=$((TRIES + 1))
    done
}

# ---- The checks.
check_setup() {
    t0=$(date +%s)
    pids=""
    for i in $(workers); do setup_worker "$i" & pids="$pids $!"; done
    for p in $pids; do wait "$p"; done
    cat "$STATE"/setup.w* 2>/dev/null >> "$STATE/problems"
    echo "    $WORKERS workers, $(mounts_under_base | wc -l | tr -d ' ') mounts, $(( $(date +%s) - t0 )) s"
}

check_mounts_present() {
    list_mounts > "$STATE/now"
    for i in $(workers); do
        for m in $(worker_mounts "$i"); do
            n=$(grep -cxF "$m" "$STATE/now")
            [ "$n" = 1 ] || problem "$m: mounted $n times, expected once"
        done
    done
}

check_ro_trees() {
    for i in $(workers); do
        for t in $RO_TREES; do
            f=$BASE/w$i$t/.mount-suite-probe
            if touch "$f" 2>/dev/null; then rm -f "$f"; problem "w$i$t: a write succeeded"; fi
        done
    done
}

check_tmpfs_isolated() {
    for i in $(workers); do
        for d in tmp work; do
            echo "w$i" > "$BASE/w$i/$d/mark-w$i.$$" || problem "w$i/$d: cannot write"
        done
    done
    for i in $(workers); do
        [ -e "/tmp/mark-w$i.$$" ] && problem "w$i's /tmp file is visible in the host's /tmp"
        for j in $(workers); do
            [ "$i" = "$j" ] && continue
            for d in tmp work; do
                [ -e "$BASE/w$j/$d/mark-w$i.$$" ] && problem "w$i's $d file is visible in w$j/$d"
            done
        done
    done
}

check_tmpfs_size_limit() {
    for i in $(workers); do
        f=$BASE/w$i/work/fill
        if out=$(dd if=/dev/zero of="$f" bs=1048576 count=$((TMPFS_MB + 8)) 2>&1); then
            problem "w$i/work: wrote $((TMPFS_MB + 8)) MiB into a $TMPFS_MB MiB tmpfs"
        elif ! echo "$out" | grep -q "No space left on device"; then
            problem "w$i/work: dd failed, but not with ENOSPC: $(echo "$out" | head -n 1)"
        fi
        rm -f "$f"
    done
}

check_dev() {
    for i in $(workers); do
        [ -c "$BASE/w$i/dev/null" ] || problem "w$i/dev/null is not a character device"
        echo test 2>/dev/null > "$BASE/w$i/dev/null" || problem "w$i/dev/null: cannot write"
    done
}

check_proc() {
    for i in $(workers); do
        [ -e "$BASE/w$i/proc/$PROC_SELF" ] || problem "w$i/proc/$PROC_SELF is missing"
        [ -d "$BASE/w$i/proc/$$" ] || problem "w$i/proc does not show this shell (pid $$)"
    done
}

check_busy_retries() {      # a process sitting in w1/work makes it busy for ~2 s
    d=$BASE/w1/work
    ( cd "$d" && : > held && exec sleep 2 ) &
    holder=$!
    n=0
    while [ ! -e "$d/held" ] && [ "$n" -lt 10 ]; do sleep 1; n=$((n + 1)); done
    unmount_with_retries "$d" && [ "$TRIES" -eq 1 ] &&
        problem "$d: unmounted at once although a process was working in it"
    wait "$holder"
}

check_teardown() {
    for m in $(mounts_under_base); do unmount_with_retries "$m"; done
    if [ -n "$(mounts_under_base)" ]; then
        problem "mounts remain, not removing $BASE:" $(mounts_under_base)
    else
        rm -rf "$BASE"
    fi
}

check_no_mount_left() {
    list_mounts | LC_ALL=C sort > "$STATE/after"
    if ! cmp -s "$STATE/before" "$STATE/after"; then
        problem "the mount table differs from before the run:"
        diff "$STATE/before" "$STATE/after" >> "$STATE/problems"
    fi
    [ -e "$BASE" ] && problem "$BASE still exists"
}

# ---- Teardown runs whatever happens: normal end, failed check, or a signal.
finish() {
    trap '' INT TERM HUP PIPE
    TEARDOWN_STARTED=yes
    wait        # workers still mounting finish first, then everything is undone
    if [ -n "$INTERRUPTED" ]; then
        : > "$STATE/problems"; problem "stopped by SIG$INTERRUPTED before the checks finished"
        record interrupted 0
    fi
    run_check teardown check_teardown
    run_check no-mount-left check_no_mount_left
    write_junit
    echo "mount-suite: $((CASES - FAILED)) of $CASES checks passed; JUnit in $JUNIT"
    [ "$FAILED" = 0 ]
}

on_exit() {
    status=$?
    trap '' INT TERM HUP PIPE
    [ "$TEARDOWN_STARTED" = no ] && { finish; status=$?; }
    rm -rf "$STATE"
    exit "$status"
}

list_mounts | LC_ALL=C sort > "$STATE/before"
trap on_exit EXIT
for s in INT TERM HUP; do trap "INTERRUPTED=$s; exit 1" "$s"; done
# Whoever read the output is gone (an SSH session closed by Ctrl-C on the host): the
# next write would kill the shell before teardown, so tear down without output.
trap 'INTERRUPTED=PIPE; exec >/dev/null 2>&1; exit 1' PIPE

echo "mount-suite on $(uname -sr): $WORKERS workers under $BASE, tmpfs ${TMPFS_MB}m"
echo "    read-only trees:$RO_TREES${SKIPPED:+ (symlinks, skipped:$SKIPPED)}"
mkdir -p "$BASE" && BASE=$(cd "$BASE" && pwd -P)  # the mount table shows real paths

run_check setup-workers check_setup
run_check mounts-present check_mounts_present
run_check ro-trees-refuse-writes check_ro_trees
run_check tmpfs-isolated check_tmpfs_isolated
run_check tmpfs-size-limit check_tmpfs_size_limit
run_check devfs-works check_dev
run_check procfs-works check_proc
run_check umount-retries-busy check_busy_retries
finish
