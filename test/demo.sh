#!/bin/bash
# demo.sh - the autofs-restore-hook demo (make demo).
#
#   test/demo.sh [HOOK_BINARY]      (or HOOK=/path/to/binary test/demo.sh)
#
# 1. provisions the lab (test/lab/provision.sh),
# 2. starts a runc container with systemd and three .automount units
#    (/srv/a is mounted and holds a file, /srv/b and /srv/c are not),
# 3. checkpoints it and restores it WITHOUT the hook: /srv/a keeps its file,
#    but "stat /srv/b/" hangs (cut by a 5 s timeout; the blocked process is
#    shown in autofs_wait, then killed),
# 4. restores the same checkpoint again WITH the hook, wired as CRIU action
#    script (org.criu.config annotation -> per-container CRIU config with
#    "action-script HOOK"; ARH_DEMO_WIRING=oci-hook wires it as OCI
#    createRuntime hook instead), and shows /srv/b and /srv/c working,
# 5. checkpoints and restores once more with the hook (the repaired container
#    can be checkpointed again).
#
# Exit status: 0 the hook fixed every path, 1 it did not (or the lab failed),
# 3 no hook binary was given or it is not executable (steps 1-3 still run).
# The container is removed on exit, whatever happens.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LAB=$HERE/lab/lab.sh
HOOK_BIN=${1:-${HOOK:-}}
WIRING=${ARH_DEMO_WIRING:-action-script}
NAME=arh-lab-demo-$$
HANG_TIMEOUT=5
OK_TIMEOUT=10

now_ms() { echo $(($(date +%s%N) / 1000000)); }
fmt_ms() { printf '%d.%02ds' $(($1 / 1000)) $(($1 % 1000 / 10)); }
banner() { printf '\n=== %s\n' "$*"; }
T_START=$(now_ms)
step() { # step DESCRIPTION CMD... : runs CMD, prints its duration
	local d=$1 t rc=0
	shift
	t=$(now_ms)
	"$@" || rc=$?
	echo "--- $d: $(fmt_ms $(($(now_ms) - t))) (exit $rc)"
	return $rc
}

cleanup() {
	local rc=$?
	banner "cleanup"
	"$LAB" down "$NAME" || true
	echo "demo total: $(fmt_ms $(($(now_ms) - T_START)))"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "demo.sh: must run as root" >&2; exit 1; }
[ -e /dev/autofs ] || { echo "demo.sh: /dev/autofs is missing" >&2; exit 1; }
if [ -n "$HOOK_BIN" ]; then
	case $HOOK_BIN in /*) ;; *) HOOK_BIN=$PWD/$HOOK_BIN ;; esac
fi

banner "1. provision the lab"
step "provision" "$HERE/lab/provision.sh"

banner "2. start a systemd container with automount units /srv/a /srv/b /srv/c"
step "up" "$LAB" up "$NAME" systemd
"$LAB" mounts "$NAME"

banner "3. checkpoint, restore WITHOUT the hook"
step "checkpoint" "$LAB" checkpoint "$NAME"
step "restore without hook" "$LAB" restore "$NAME"
"$LAB" mounts "$NAME"
echo "> cat /srv/a/state   (mounted at checkpoint time)"
step "cat /srv/a/state" "$LAB" exec "$NAME" --timeout "$OK_TIMEOUT" -- cat /srv/a/state || true
echo "> stat /srv/b/       (not mounted at checkpoint time; deadline ${HANG_TIMEOUT}s)"
rc=0
step "stat /srv/b/ without hook" "$LAB" exec "$NAME" --timeout "$HANG_TIMEOUT" -- stat /srv/b/ || rc=$?
if [ $rc = 124 ]; then
	echo "RESULT without hook: /srv/b HANGS (bug reproduced)"
else
	echo "RESULT without hook: /srv/b did not hang (exit $rc): bug NOT reproduced"
fi
echo "> systemd's view:"
"$LAB" exec "$NAME" --timeout "$OK_TIMEOUT" -- journalctl --no-pager -u srv-b.automount -n 3 -o cat || true
"$LAB" kill-waiters "$NAME"
step "remove the restored container (image kept)" "$LAB" stop "$NAME"

banner "4. restore the same checkpoint WITH the hook ($WIRING)"
if [ -z "$HOOK_BIN" ] || [ ! -x "$HOOK_BIN" ]; then
	echo "!!! no hook binary: '${HOOK_BIN}' is not an executable file."
	echo "!!! Build it and run: test/demo.sh /path/to/autofs-restore-hook   (or HOOK=... make demo)"
	exit 3
fi
case $WIRING in
action-script) wiring=(--action-script "$HOOK_BIN") ;;
oci-hook) wiring=(--hook "$HOOK_BIN") ;;
*) echo "ARH_DEMO_WIRING must be action-script or oci-hook" >&2; exit 1 ;;
esac
step "restore with hook" "$LAB" restore "$NAME" "${wiring[@]}"
"$LAB" mounts "$NAME"
fails=0
check() { # check DESCRIPTION CMD...
	local d=$1 rc=0
	shift
	step "$d" "$LAB" exec "$NAME" --timeout "$OK_TIMEOUT" -- "$@" || rc=$?
	if [ $rc = 0 ]; then echo "OK   $d"; else echo "FAIL $d (exit $rc)"; fails=$((fails + 1)); fi
}
check "cat /srv/a/state (content kept)" cat /srv/a/state
check "stat /srv/b/" stat /srv/b/
check "write and read /srv/c/x" sh -c 'echo with-hook >/srv/c/x && cat /srv/c/x'
[ $fails = 0 ] || { "$LAB" kill-waiters "$NAME" || true; }

banner "5. checkpoint and restore again, with the hook"
if step "second checkpoint" "$LAB" checkpoint "$NAME" && step "second restore with hook" "$LAB" restore "$NAME"; then
	check "cat /srv/a/state after second restore" cat /srv/a/state
	check "cat /srv/c/x after second restore" cat /srv/c/x
else
	echo "FAIL second checkpoint/restore"
	fails=$((fails + 1))
fi

banner "result"
if [ $fails = 0 ]; then
	echo "PASS: with the hook every automount path works after restore"
	exit 0
fi
echo "FAIL: $fails check(s) failed with the hook"
exit 1
