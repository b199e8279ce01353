#!/bin/bash
# tests.sh [--kernel DIST] [-run REGEXP] [PKG...] - what `make test` runs:
# every Go test of the tree (unit, integration on real autofs mounts, and the
# end-to-end lab), natively or in the test VM.
#
# Where: natively when this host's kernel has autofs (/dev/autofs), else in a
# QEMU guest booting Debian's stock kernel (test/vm/run.sh). ARH_TEST_VM=1
# forces the VM, ARH_TEST_VM=0 forbids it (tests that need autofs then skip,
# or fail under CI=true). --kernel bookworm|trixie picks the guest's kernel
# (default bookworm) and implies the VM.
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
RUN=""
PKGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) KERNEL=$2; shift 2 ;;
	-run | --run) RUN=$2; shift 2 ;;
	-*) echo "tests.sh: unknown option $1" >&2; exit 2 ;;
	*) PKGS+=("$1"); shift ;;
	esac
done
[ ${#PKGS[@]} -gt 0 ] || PKGS=(./...)

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
if [ "$VM" = 0 ]; then
	export ARH_TEST_SLOWDOWN=${ARH_TEST_SLOWDOWN:-1}
	echo "tests: running natively on kernel $(uname -r)"
	bash test/gotest.sh "$OUT" -test.timeout "${ARH_TEST_TIMEOUT:-25m}" "${ARGS[@]}"
	exit
fi

# The lab's packages, CRIU and rootfs are provisioned here: the guest has
# no network.
if [ -z "$RUN" ] || grep -q ' test/e2e\| test/lab' <(cut -d' ' -f1 "$OUT/list" | sed 's|^github.com/autofs-restore-hook/autofs-restore-hook/| |'); then
	bash test/lab/provision.sh
fi
export ARH_TEST_SLOWDOWN=${ARH_TEST_SLOWDOWN:-3}
export ARH_VM_PASSENV="AUTOFS_RESTORE_HOOK_BIN AUTOFS_RESTORE_HOOK_FP_BIN AUTOFS_RESTORE_HOOK_DEB ARH_TEST_UNIT_TIMEOUT ARH_TEST_SLOWDOWN ARH_LAB_CACHE ARH_LAB_DIR ${ARH_VM_PASSENV:-}"
bash test/vm/run.sh --kernel "${KERNEL:-bookworm}" -- bash test/gotest.sh "$OUT" -test.timeout "${ARH_TEST_TIMEOUT:-60m}" "${ARGS[@]}"
