#!/bin/bash
# crio-build.sh - build the lab's CRI-O: crio (CRI-O v1.34.0) and pinns
# from CRI-O's Go module, crictl (cri-tools v1.37.0) from its own, both
# through the Go module proxy (no Debian release packages CRI-O). conmon
# and runc are Debian 12's (provision.sh installs them, and libseccomp-dev
# for crio's seccomp support).
#
#   $CACHE/crio-v1.34.0/{crio,crictl,pinns}   and .arh-lab-done when complete
#
# Idempotent: a complete directory is kept. tests.sh runs this in the
# background (nice) while the first guest runs, and waits for it before the
# cgroup v2 pass, whose CRI-O test needs it. Output goes to stdout; exit
# status non-zero on failure. Environment: ARH_LAB_CACHE (default
# /var/cache/autofs-restore-hook).
set -euo pipefail

CACHE=${ARH_LAB_CACHE:-/var/cache/autofs-restore-hook}
CRIO_VERSION=v1.34.0   # keep in step with lab.sh's CRIO_VERSION
CRICTL_VERSION=v1.37.0
OUT=$CACHE/crio-$CRIO_VERSION
# The build tags of CRI-O's Makefile on a host without btrfs, gpgme or
# libsubid headers: seccomp on, the rest stubbed.
TAGS="containers_image_ostree_stub exclude_graphdriver_btrfs btrfs_noversion containers_image_openpgp seccomp"

if [ -f "$OUT/.arh-lab-done" ] && [ -x "$OUT/crio" ] && [ -x "$OUT/crictl" ] && [ -x "$OUT/pinns" ]; then
	echo "crio-build: present in $OUT: $("$OUT/crio" --version 2>/dev/null | head -1)"
	exit 0
fi
t0=$(date +%s)
[ -f /usr/include/seccomp.h ] || { echo "crio-build: no libseccomp-dev (provision.sh installs it)" >&2; exit 1; }
tmp=$(mktemp -d "$CACHE/.crio-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
moddir() { # moddir MODULE@VERSION: its directory in the module cache, downloaded
	GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
}
crio_dir=$(moddir "github.com/cri-o/cri-o@$CRIO_VERSION")
crictl_dir=$(moddir "sigs.k8s.io/cri-tools@$CRICTL_VERSION")
[ -d "$crio_dir" ] && [ -d "$crictl_dir" ] || { echo "crio-build: the Go module proxy did not give CRI-O $CRIO_VERSION or cri-tools $CRICTL_VERSION" >&2; exit 1; }
# Each module is built as its own main module, with its own go.sum.
(cd "$crio_dir" && CGO_ENABLED=1 go build -trimpath -tags "$TAGS" -o "$tmp/crio" ./cmd/crio)
(cd "$crictl_dir" && CGO_ENABLED=0 go build -trimpath -o "$tmp/crictl" ./cmd/crictl)
gcc -std=c99 -Os -static -o "$tmp/pinns" "$crio_dir"/pinns/src/*.c
"$tmp/crio" --version >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$tmp/crio" "$tmp/crictl" "$tmp/pinns" "$OUT/"
touch "$OUT/.arh-lab-done"
echo "crio-build: built $("$OUT/crio" --version | head -1), crictl $CRICTL_VERSION and pinns into $OUT in $(($(date +%s) - t0))s"
