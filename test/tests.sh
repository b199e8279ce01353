#!/bin/bash
# tests.sh [--kernel DIST] [--cgroup 1|2] [-run REGEXP] [PKG...] - what `make test` runs:
# every Go test of the tree (unit, integration on real autofs mounts, and the
# end-to-end lab), natively or in the test VM.
#
# Where: natively when this host's kernel has autofs (/dev/autofs), else in a
# QEMU guest booting Debian's stock kernel (test/vm/run.sh). ARH_TEST_VM=1
# forces the VM, ARH_TEST_VM=0 forbids it (tests that need autofs then skip,
# or fail under CI=true). --kernel bookworm|trixie picks the guest's kernel
# (default bookworm) and implies the VM.
#
# Two cgroup layouts: the TestCgroup2 tests (test/e2e, the stack matrix's
# cgroup v2 rows) need a host with only the unified hierarchy; every other
# test runs on the cgroup v1 layout of the machine this was developed on.
# A run without -run does both: first every test but TestCgroup2 (natively
# or in the VM, --cgroup 1), then the TestCgroup2 tests in a second guest
# booting Debian 13's kernel with only cgroup v2 (natively instead when
# this host is cgroup v2 and has autofs). --cgroup 2 runs only that second
# pass (with -run, the matching tests in it); --cgroup 1, or a -run
# without --cgroup, only the first, which never runs a TestCgroup2 test. A
# -run naming Cgroup2 implies --cgroup 2. Each pass prints its own
# "tests: N passed, N failed, N skipped" line; the exit status is the
# first failing pass's. Without the VM (ARH_TEST_VM=0, or not root) on a
# host that is not cgroup v2 the TestCgroup2 tests do not run: a failure
# under CI=true.
#
# The TestNoAutofs tests (test/e2e) need the lab's runtimes and CRIU but no
# autofs: where the rest runs in the VM, they run first on the host itself,
# at native speed (a "host pass" with its own closing line), and the VM
# passes leave them out. A -run that does not name TestNoAutofs runs none.
#
# The test binaries are compiled here on the host (`go test -c`), as are the
# hook and its failpoints build, so the guest compiles nothing. The lab is
# provisioned on the host first (the guest has no network).
#
# Environment: AUTOFS_RESTORE_HOOK_BIN (the binary under test, default
# bin/autofs-restore-hook), AUTOFS_RESTORE_HOOK_PLUGIN (the CRIU plugin of
# `make plugin`; the tests build one when unset), AUTOFS_RESTORE_HOOK_DEB (the package of
# `make deb`, installed and removed by an E2E test), ARH_TEST_TIMEOUT (per test binary, default 25m
# natively, 60m in the VM), ARH_TEST_SLOWDOWN (factor for the tests' own
# waits; default 1 natively, 3 in the VM).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KERNEL=""
CGROUP=""
RUN=""
PKGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) KERNEL=$2; shift 2 ;;
	--cgroup) CGROUP=$2; shift 2 ;;
	-run | --run) RUN=$2; shift 2 ;;
	-*) echo "tests.sh: unknown option $1" >&2; exit 2 ;;
	*) PKGS+=("$1"); shift ;;
	esac
done
[ ${#PKGS[@]} -gt 0 ] || PKGS=(./...)

case ${CGROUP:-x} in 1 | 2 | x) ;; *) echo "tests.sh: --cgroup takes 1 or 2" >&2; exit 2 ;; esac
case $RUN in *Cgroup2*) CGROUP=${CGROUP:-2} ;; esac
VM=${ARH_TEST_VM:-}
if [ -n "$KERNEL" ]; then
	[ "$VM" != 0 ] || { echo "tests.sh: --kernel needs the VM, but ARH_TEST_VM=0" >&2; exit 2; }
	VM=1
fi
if [ -z "$VM" ]; then
	if [ -c /dev/autofs ]; then VM=0; else VM=1; fi
fi
if [ "$VM" = 1 ] && [ "$(id -u)" != 0 ]; then
	echo "tests.sh: the test VM needs root (QEMU, the lab); run as root or with ARH_TEST_VM=0" >&2
	exit 2
fi

BIN=${AUTOFS_RESTORE_HOOK_BIN:-$ROOT/bin/autofs-restore-hook}
[ -x "$BIN" ] || { echo "tests.sh: no hook binary at $BIN (make build)" >&2; exit 2; }
# In the checkout's bin/ (ignored by git): the guest sees the host's tree,
# but its /tmp and /var/tmp are its own.
mkdir -p bin
OUT=$(mktemp -d "$ROOT/bin/tests.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

echo "tests: compiling test binaries into $OUT"
t0=$(date +%s)
CGO_ENABLED=1 go build -tags osusergo,netgo,failpoints -ldflags '-linkmode external -extldflags -static' \
	-o "$OUT/autofs-restore-hook-failpoints" ./cmd/autofs-restore-hook
: >"$OUT/list"
go list -f '{{.ImportPath}} {{.Dir}} {{len .TestGoFiles}} {{len .XTestGoFiles}}' "${PKGS[@]}" |
	while read -r pkg dir n x; do
		[ $((n + x)) -gt 0 ] || continue
		bin=$(echo "${pkg#github.com/autofs-restore-hook/autofs-restore-hook/}" | tr / _).test
		go test -c -o "$OUT/$bin" "$pkg"
		echo "$pkg $dir $bin" >>"$OUT/list"
	done
# The lab's config.json writer, where lab.sh finds it (bin/labconfig).
go build -o "$ROOT/bin/labconfig" ./test/lab/labconfig
echo "tests: compiled $(wc -l <"$OUT/list") test binaries in $(($(date +%s) - t0))s"

export AUTOFS_RESTORE_HOOK_BIN=$BIN AUTOFS_RESTORE_HOOK_FP_BIN=$OUT/autofs-restore-hook-failpoints
ARGS=()
[ -z "$RUN" ] || ARGS+=(-test.run "$RUN")
V2_RUN=${RUN:-^TestCgroup2}

# The second pass's binaries: the end-to-end package only.
mkdir -p "$OUT/cgroup2"
grep '/test/e2e ' "$OUT/list" >"$OUT/cgroup2/list" || true
while read -r _ _ bin; do ln -sf "$OUT/$bin" "$OUT/cgroup2/$bin"; done <"$OUT/cgroup2/list"
# -run without --cgroup: the first pass only (unless it names Cgroup2).
[ -n "$CGROUP" ] || [ -z "$RUN" ] || CGROUP=1
PASS1=1 PASS2=1
case $CGROUP in 1) PASS2=0 ;; 2) PASS1=0 ;; esac
if [ ! -s "$OUT/cgroup2/list" ]; then
	[ "$CGROUP" != 2 ] || { echo "tests.sh: --cgroup 2 runs test/e2e's TestCgroup2 tests, and test/e2e is not among the packages" >&2; exit 2; }
	PASS2=0
fi
host_v2() { [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; }
# The first pass never runs the TestCgroup2 tests (its host has cgroup v1),
# unless it is natively on a cgroup v2 host, where both passes are one.
ONE_PASS=0
# The host pass: the TestNoAutofs tests, on this host, when the rest goes to
# the VM.
HOST_RUN=""
if [ "$VM" = 1 ] && [ "$PASS1" = 1 ] && [ -s "$OUT/cgroup2/list" ]; then
	# A -run naming TestNoAutofs runs them all there (the rest of its
	# regexp goes to the VM, where they are left out).
	case $RUN in
	"" | *TestNoAutofs*) HOST_RUN='^TestNoAutofs' ;;
	esac
fi
SKIP='^TestCgroup2'
[ "$VM" = 0 ] || SKIP='^(TestCgroup2|TestNoAutofs)'
if [ "$VM" = 0 ] && host_v2 && [ "$PASS1" = 1 ]; then
	ONE_PASS=1
	PASS2=0
else
	ARGS+=(-test.skip "$SKIP")
fi
# The first failing pass's exit status is kept (gotest.sh: 1; run.sh: 125
# when the guest ended without a result).
rc=0
keep() { [ "$1" = 0 ] || [ "$rc" != 0 ] || rc=$1; }

USER_SLOWDOWN=${ARH_TEST_SLOWDOWN:-}
if [ "$VM" = 0 ]; then
	export ARH_TEST_SLOWDOWN=${USER_SLOWDOWN:-1}
	if [ "$PASS1" = 1 ]; then
		echo "tests: running natively on kernel $(uname -r)$([ "$ONE_PASS" = 0 ] || echo ", cgroup v2: the TestCgroup2 tests too")"
		bash test/gotest.sh "$OUT" -test.timeout "${ARH_TEST_TIMEOUT:-25m}" "${ARGS[@]}" || keep $?
	fi
	if [ "$PASS2" = 1 ] && host_v2; then
		echo "tests: the cgroup v2 tests, natively on kernel $(uname -r)"
		bash test/gotest.sh "$OUT/cgroup2" -test.timeout "${ARH_TEST_TIMEOUT:-25m}" -test.run "$V2_RUN" || keep $?
		PASS2=0
	fi
	if [ "$PASS2" = 0 ]; then
		exit $rc
	fi
	# The cgroup v2 tests need a cgroup v2 host: the VM, unless forbidden.
	if [ "${ARH_TEST_VM:-}" = 0 ] || [ "$(id -u)" != 0 ]; then
		echo "tests.sh: the TestCgroup2 tests need a host with only cgroup v2, and this one is not; the test VM that would give one is $([ "${ARH_TEST_VM:-}" = 0 ] && echo "forbidden (ARH_TEST_VM=0)" || echo "root's only"): they did not run" >&2
		if [ "${CI:-}" = true ]; then
			echo "tests.sh: with CI=true that is a failure" >&2
			keep 1
		fi
		exit $rc
	fi
	VM=1
	PASS1=0
fi

# The lab's packages, CRIU and rootfs are provisioned here: the guest has
# no network.
if [ -z "$RUN" ] || grep -q ' test/e2e\| test/lab' <(cut -d' ' -f1 "$OUT/list" | sed 's|^github.com/autofs-restore-hook/autofs-restore-hook/| |'); then
	bash test/lab/provision.sh
fi
CRIO_BUILD=""
if [ "$VM" = 1 ] && [ "$PASS2" = 1 ]; then
	# The cgroup v2 pass's CRI-O test needs the lab's CRI-O, which the
	# guest cannot build (no network): built here while the host pass
	# runs (about 3 minutes on a fresh machine, a no-op later), and
	# waited for before any guest starts (the host's root is left alone
	# while a guest runs, see docs/testing.md).
	bash test/lab/crio-build.sh >"$OUT/crio-build.log" 2>&1 &
	CRIO_BUILD=$!
fi
if [ -n "$HOST_RUN" ]; then
	echo "tests: the host pass (tests that need no autofs: $HOST_RUN), natively on kernel $(uname -r)"
	ARH_TEST_SLOWDOWN=${USER_SLOWDOWN:-1} bash test/gotest.sh "$OUT/cgroup2" -test.timeout "${ARH_TEST_TIMEOUT:-25m}" -test.run "$HOST_RUN" || keep $?
	echo
fi
export ARH_TEST_SLOWDOWN=${USER_SLOWDOWN:-3}
export ARH_VM_PASSENV="AUTOFS_RESTORE_HOOK_BIN AUTOFS_RESTORE_HOOK_PLUGIN AUTOFS_RESTORE_HOOK_FP_BIN AUTOFS_RESTORE_HOOK_DEB ARH_TEST_UNIT_TIMEOUT ARH_TEST_SLOWDOWN ARH_LAB_CACHE ARH_LAB_DIR ${ARH_VM_PASSENV:-}"
pass1() {
	bash test/vm/run.sh --kernel "${KERNEL:-bookworm}" --cgroup 1 -- bash test/gotest.sh "$OUT" -test.timeout "${ARH_TEST_TIMEOUT:-60m}" "${ARGS[@]}"
}
crio_built() {
	[ -n "$CRIO_BUILD" ] || return 0
	local t
	t=$(date +%s)
	if wait "$CRIO_BUILD"; then
		echo "tests: $(tail -1 "$OUT/crio-build.log") (waited $(($(date +%s) - t))s for it)"
	else
		cat "$OUT/crio-build.log"
		echo "tests: the lab's CRI-O could not be built: the CRI-O test will fail" >&2
	fi
}
# Debian 13's kernel by default: a current distribution's host. One vCPU
# unless told otherwise: on cgroup v2 every container start and stop
# attaches or detaches a BPF device program, which flips a static key,
# which patches kernel text with int3 while the other vCPU runs; under
# QEMU TCG that once left an int3 behind ("Oops: int3" in __schedule, a
# kernel panic) in this pass with two vCPUs.
pass2() {
	ARH_VM_CPUS=${ARH_VM_CPUS:-1} bash test/vm/run.sh --kernel "${KERNEL:-trixie}" --cgroup 2 -- bash test/gotest.sh "$OUT/cgroup2" -test.timeout "${ARH_TEST_TIMEOUT:-60m}" -test.run "$V2_RUN"
}
crio_built
if [ "$PASS1" = 1 ] && [ "$PASS2" = 1 ] && [ "${ARH_TEST_ONE_GUEST:-0}" != 1 ]; then
	# Both guests at once: the first keeps its two vCPUs busy only part
	# of the time (one process at a time in most tests), the second has
	# one; together they take the first's time and a little more instead
	# of the sum (ARH_TEST_ONE_GUEST=1: one after the other). The second's
	# output follows the first's. Both kernels (and QEMU) are prepared
	# first, one after the other, so that nothing is installed on the
	# host while a guest runs.
	bash test/vm/kernel.sh "${KERNEL:-bookworm}" >/dev/null
	bash test/vm/kernel.sh "${KERNEL:-trixie}" >/dev/null
	pass1 &
	p1=$!
	echo "tests: the cgroup v2 pass (TestCgroup2 tests: $V2_RUN) starts in a second guest with only the unified hierarchy; its output ($OUT/pass2.log) follows the first guest's"
	t2=$(date +%s)
	pass2 >"$OUT/pass2.log" 2>&1 &
	p2=$!
	wait "$p1" || keep $?
	r2=0
	wait "$p2" || r2=$?
	keep $r2
	echo
	echo "tests: the output of the cgroup v2 pass (TestCgroup2 tests: $V2_RUN), which ran in a second guest beside the first (started $(date -d "@$t2" +%T), exit status $r2):"
	cat "$OUT/pass2.log"
else
	[ "$PASS1" = 0 ] || pass1 || keep $?
	if [ "$PASS2" = 1 ]; then
		echo
		echo "tests: the cgroup v2 pass (TestCgroup2 tests: $V2_RUN), in a guest with only the unified hierarchy"
		pass2 || keep $?
	fi
fi
exit $rc
