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
# without --cgroup, only the first. A -run naming Cgroup2 implies --cgroup 2.
#
# The test binaries are compiled here on the host (`go test -c`), as are the
# hook and its failpoints build, so the guest compiles nothing. The lab is
# provisioned on the host first (the guest has no network).
#
# Environment: AUTOFS_RESTORE_HOOK_BIN (the binary under test, default
# bin/autofs-restore-hook), AUTOFS_RESTORE_HOOK_DEB (the package of
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
[ -s "$OUT/cgroup2/list" ] || PASS2=0
[ -n "$RUN" ] || ARGS+=(-test.skip '^TestCgroup2')
host_v2() { [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; }

summary() { # the closing line over both passes
	local r f=() p=0 x=0 k=0
	for r in "$OUT/results" "$OUT/cgroup2/results"; do [ -f "$r" ] && f+=("$r"); done
	[ ${#f[@]} -gt 1 ] || return 0
	p=$(cat "${f[@]}" | grep -c ' PASS: ')
	x=$(cat "${f[@]}" | grep -c ' FAIL: ')
	k=$(cat "${f[@]}" | grep -c ' SKIP: ')
	echo "tests (both passes): $p passed, $x failed, $k skipped"
}

rc=0
if [ "$VM" = 0 ]; then
	export ARH_TEST_SLOWDOWN=${ARH_TEST_SLOWDOWN:-1}
	if [ "$PASS1" = 1 ]; then
		echo "tests: running natively on kernel $(uname -r)"
		if host_v2 && [ "$PASS2" = 1 ]; then
			# This host is the second pass's layout already: one pass.
			ARGS=()
			[ -z "$RUN" ] || ARGS+=(-test.run "$RUN")
			PASS2=0
		fi
		bash test/gotest.sh "$OUT" -test.timeout "${ARH_TEST_TIMEOUT:-25m}" "${ARGS[@]}" || rc=1
	fi
	if [ "$PASS2" = 1 ]; then
		if host_v2; then
			echo "tests: the cgroup v2 tests, natively on kernel $(uname -r)"
			bash test/gotest.sh "$OUT/cgroup2" -test.timeout "${ARH_TEST_TIMEOUT:-25m}" -test.run "$V2_RUN" || rc=1
		else
			# They need the VM: fall through to it for the second pass.
			VM=1
			PASS1=0
		fi
	fi
	if [ "$VM" = 0 ]; then
		summary
		exit $rc
	fi
	[ "$(id -u)" = 0 ] || { echo "tests.sh: the cgroup v2 tests need the test VM, which needs root" >&2; exit 1; }
fi

# The lab's packages, CRIU and rootfs are provisioned here: the guest has
# no network.
if [ -z "$RUN" ] || grep -q ' test/e2e\| test/lab' <(cut -d' ' -f1 "$OUT/list" | sed 's|^github.com/autofs-restore-hook/autofs-restore-hook/| |'); then
	bash test/lab/provision.sh
fi
export ARH_TEST_SLOWDOWN=${ARH_TEST_SLOWDOWN:-3}
export ARH_VM_PASSENV="AUTOFS_RESTORE_HOOK_BIN AUTOFS_RESTORE_HOOK_FP_BIN AUTOFS_RESTORE_HOOK_DEB ARH_TEST_UNIT_TIMEOUT ARH_TEST_SLOWDOWN ARH_LAB_CACHE ARH_LAB_DIR ${ARH_VM_PASSENV:-}"
if [ "$PASS1" = 1 ]; then
	bash test/vm/run.sh --kernel "${KERNEL:-bookworm}" --cgroup 1 -- bash test/gotest.sh "$OUT" -test.timeout "${ARH_TEST_TIMEOUT:-60m}" "${ARGS[@]}" || rc=1
fi
if [ "$PASS2" = 1 ]; then
	# Debian 13's kernel by default: a current distribution's host.
	echo
	echo "tests: the cgroup v2 pass (TestCgroup2 tests: $V2_RUN), in a guest with only the unified hierarchy"
	bash test/vm/run.sh --kernel "${KERNEL:-trixie}" --cgroup 2 -- bash test/gotest.sh "$OUT/cgroup2" -test.timeout "${ARH_TEST_TIMEOUT:-60m}" -test.run "$V2_RUN" || rc=1
fi
summary
exit $rc
