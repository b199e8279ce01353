#!/bin/bash
# kernels.sh DIST... - the kernel matrix (`make test-kernels`): every test
# but the cgroup v2 ones (test/tests.sh --cgroup 1) in the test VM on each
# Debian DIST's stock kernel (bookworm: Debian 12, trixie: Debian 13), then
# one table row per kernel. `make test` runs the cgroup v2 tests.
# The full output of each run goes to bin/kernels-DIST.log. Exits 1 if any
# kernel had a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- bookworm trixie
mkdir -p bin
rows=()
rc=0
for d in "$@"; do
	log=bin/kernels-$d.log
	echo "=== kernel matrix: Debian $d (log: $log)"
	start=$(date +%s)
	ARH_TEST_VM=1 bash test/tests.sh --kernel "$d" --cgroup 1 2>&1 | tee "$log"
	krc=${PIPESTATUS[0]}
	secs=$(($(date +%s) - start))
	kver=$(sed -n 's/^vm-guest: ready in .* kernel \([^,]*\),.*/\1/p' "$log" | head -1)
	counts=$(grep -E '^tests: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -1)
	passed=$(echo "$counts" | awk '{print $2}')
	failed=$(echo "$counts" | awk '{print $4}')
	skipped=$(echo "$counts" | awk '{print $6}')
	[ "$krc" = 0 ] || rc=1
	rows+=("$(printf '| %-8s | %-24s | %6s | %6s | %7s | %4dm%02ds | %-4s |' "$d" "${kver:-?}" "${passed:-?}" "${failed:-?}" "${skipped:-?}" $((secs / 60)) $((secs % 60)) "$([ "$krc" = 0 ] && echo ok || echo FAIL)")")
done
echo
echo "| Debian   | kernel                   | passed | failed | skipped |    time  | exit |"
echo "|----------|--------------------------|--------|--------|---------|----------|------|"
printf '%s\n' "${rows[@]}"
exit $rc
