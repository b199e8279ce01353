#!/bin/sh
# record-hook.sh - stand-in for the real hook in lab tests: records how it was
# called, to ${ARH_LAB_HOOK_LOG:-/var/tmp/arh-lab/hook-record.log}, and exits 0.
# As a CRIU action script it logs CRTOOLS_SCRIPT_ACTION / CRTOOLS_INIT_PID; as an
# OCI hook it logs the state JSON read from stdin.
log=${ARH_LAB_HOOK_LOG:-/var/tmp/arh-lab/hook-record.log}
mkdir -p "$(dirname "$log")"
if [ -n "${CRTOOLS_SCRIPT_ACTION:-}" ]; then
	echo "$(date +%T.%N) pid=$$ criu-action=$CRTOOLS_SCRIPT_ACTION init_pid=${CRTOOLS_INIT_PID:-} argv=$*" >>"$log"
else
	state=$(timeout 2 cat 2>/dev/null | tr -d '\n')
	echo "$(date +%T.%N) pid=$$ oci-hook argv0=$0 argv=$* state=$state" >>"$log"
fi
exit 0
