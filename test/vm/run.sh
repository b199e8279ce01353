#!/bin/bash
# run.sh [--kernel DIST] [--cgroup 1|2] [--timeout SEC] [--] CMD... - run CMD as root in a
# QEMU guest that boots Debian's stock kernel, with autofs.
#
# The guest sees the host's / read-only (virtio-9p) under a tmpfs overlay, so
# it has the host's tools, Go build results and lab caches; the guest has no
# network, so provision on the host first. guest.sh (next to this file) sets
# the guest up (modules with autofs4, cgroups, /run,
# an ext4 disk for the lab's bundles and podman's storage, lo up) and runs CMD
# in the current directory with the variables listed in ARH_VM_PASSENV.
#
# CMD's output is shown as it runs; run.sh exits with CMD's exit status, or
# 125 when the guest ended without one (the kernel's console is then shown).
#
#   --kernel DIST   bookworm (default: Debian 12's kernel) or trixie (Debian 13's)
#   --cgroup 1|2    1 (default): cgroup v1 hierarchies as on the machine this
#                   was developed on (plus a cgroup2 at /sys/fs/cgroup/unified);
#                   2: only the unified hierarchy at /sys/fs/cgroup, as current
#                   distributions boot
#   --timeout SEC   wall-clock limit for the whole guest (default 4500)
#
# Environment: ARH_VM_CACHE (kernel cache, see kernel.sh), ARH_VM_MEM (guest
# memory in MiB, default 8192), ARH_VM_CPUS (default: the host's cores),
# ARH_VM_DISK_GB (sparse ext4 disk, default 20), ARH_VM_KEEP=1 keeps the job
# directory (console log, disk image) for a look afterwards.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIST=bookworm
TIMEOUT=4500
CGROUP=1
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) DIST=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	--cgroup) CGROUP=$2; shift 2 ;;
	--) shift; break ;;
	-*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: run.sh [--kernel DIST] [--cgroup 1|2] [--timeout SEC] [--] CMD..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root" >&2; exit 2; }
case $CGROUP in 1 | 2) ;; *) echo "run.sh: --cgroup takes 1 or 2" >&2; exit 2 ;; esac

VMCACHE=${ARH_VM_CACHE:-/var/cache/autofs-restore-hook/vm}
LAB_CACHE=${ARH_LAB_CACHE:-/var/cache/autofs-restore-hook}
ROOTFS=$LAB_CACHE/rootfs-bookworm
ROOTFS_TRIXIE=$LAB_CACHE/rootfs-trixie
KDIR=$(bash "$HERE/kernel.sh" "$DIST")
KVER=$(head -1 "$KDIR/version")
JOB=$(mktemp -d /var/tmp/arh-vm-job.XXXXXX)
QPID=""
cleanup() {
	[ -n "$QPID" ] && kill -KILL "$QPID" 2>/dev/null
	if [ "${ARH_VM_KEEP:-0}" = 1 ]; then
		echo "vm: job directory kept: $JOB" >&2
	else
		rm -rf "$JOB"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The job: the guest's set-up, then CMD in this directory with the passed
# environment (values quoted with printf %q).
{
	echo "# written by test/vm/run.sh"
	echo "export ARH_VM_KDIR=$(printf %q "$KDIR") ARH_VM_KVER=$(printf %q "$KVER") ARH_IN_VM=1"
	echo "export ARH_VM_LAB_ROOTFS=$(printf %q "$ROOTFS") ARH_VM_LAB_ROOTFS_TRIXIE=$(printf %q "$ROOTFS_TRIXIE") ARH_VM_CGROUP=$CGROUP"
	for v in PATH HOME GOPATH GOCACHE GOFLAGS CI ${ARH_VM_PASSENV:-}; do
		[ -n "${!v+x}" ] && echo "export $v=$(printf %q "${!v}")"
	done
	echo "cd $(printf %q "$PWD")"
	printf 'exec bash %q' "$HERE/guest.sh"
	printf ' %q' "$@"
	echo
} >"$JOB/job.sh"
: >"$JOB/out.log"

# The guest's disk: a cached ext4 image that already holds the lab's rootfs
# (copying it over 9p took 35 s per container in the guest), opened with
# snapshot=on so that every boot starts from the same pristine image.
DISK_GB=${ARH_VM_DISK_GB:-20}
disk_key=empty
[ -f "$ROOTFS/.arh-lab-done" ] && disk_key=rootfs-$(cat "$ROOTFS/.arh-lab-done")-$(stat -c %Y "$ROOTFS/.arh-lab-done")
[ -f "$ROOTFS_TRIXIE/.arh-lab-done" ] && disk_key=$disk_key-trixie-$(stat -c %Y "$ROOTFS_TRIXIE/.arh-lab-done")
# Bump when the disk's layout below changes.
DISK_LAYOUT=2
DISK=$VMCACHE/disk$DISK_LAYOUT-$disk_key-${DISK_GB}G.raw
# Two guests may start at once (tests.sh runs both passes together): one
# builds the image, the other waits for it.
mkdir -p "$VMCACHE"
exec 9>"$VMCACHE/.disk.lock"
flock -w 600 9 || { echo "vm: waited 600 s for $VMCACHE/.disk.lock" >&2; exit 125; }
if [ ! -f "$DISK" ]; then
	t=$(date +%s)
	stage=$VMCACHE/.disk-stage
	rm -rf "$stage" "$VMCACHE"/disk*.raw
	mkdir -p "$stage/arh-lab" "$stage/containers"
	# Hard links: the stage costs no copy; mkfs.ext4 -d copies the tree.
	[ "$disk_key" = empty ] || cp -al "$ROOTFS" "$stage/rootfs-bookworm"
	[ ! -f "$ROOTFS_TRIXIE/.arh-lab-done" ] || cp -al "$ROOTFS_TRIXIE" "$stage/rootfs-trixie"
	mkfs.ext4 -q -F -O ^has_journal -E nodiscard,root_owner=0:0 -d "$stage" "$DISK.tmp" "${DISK_GB}G" >/dev/null
	mv "$DISK.tmp" "$DISK"
	rm -rf "$stage"
	echo "vm: built the guest's disk image $DISK in $(($(date +%s) - t))s" >&2
fi

CPUS=${ARH_VM_CPUS:-$(nproc)}
flock -u 9
exec 9>&-
echo "vm: booting Debian $DIST kernel $KVER ($(tail -1 "$KDIR/version")), cgroup v$CGROUP, under QEMU TCG, $CPUS vCPU, ${ARH_VM_MEM:-8192} MiB" >&2
start=$(date +%s)
qemu-system-x86_64 -name arh-test-vm -nodefaults -no-user-config -nographic -no-reboot \
	-accel tcg,thread=multi -cpu max -smp "$CPUS" -m "${ARH_VM_MEM:-8192}" \
	-kernel "$KDIR/vmlinuz" -initrd "$KDIR/initrd.gz" \
	-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init" \
	-serial "file:$JOB/console.log" -monitor none \
	-fsdev local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap \
	-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
	-fsdev local,id=arhjob,path="$JOB",security_model=passthrough,multidevs=remap \
	-device virtio-9p-pci,fsdev=arhjob,mount_tag=arhjob \
	-drive file="$DISK",format=raw,if=virtio,cache=unsafe,snapshot=on \
	-device virtio-rng-pci </dev/null >"$JOB/qemu.log" 2>&1 &
QPID=$!
# Show the job's output as it comes; stop when QEMU ends or at the deadline.
tail -n +1 -F -s 0.5 --pid="$QPID" "$JOB/out.log" 2>/dev/null &
TPID=$!
deadline=$((start + TIMEOUT))
while kill -0 "$QPID" 2>/dev/null; do
	if [ "$(date +%s)" -ge "$deadline" ]; then
		echo "vm: TIMEOUT: the guest ran longer than ${TIMEOUT}s; killed" >&2
		kill -KILL "$QPID" 2>/dev/null || true
		break
	fi
	sleep 1
done
wait "$QPID" 2>/dev/null || true
QPID=""
wait "$TPID" 2>/dev/null || true
echo "vm: guest ran $(($(date +%s) - start))s" >&2
if [ -s "$JOB/rc" ]; then
	rc=$(cat "$JOB/rc")
	[ "$rc" = 0 ] || { echo "vm: last lines of the guest kernel's console:" >&2; tail -n 30 "$JOB/console.log" >&2; }
	exit "$rc"
fi
echo "vm: the guest ended without a result; QEMU said:" >&2
tail -n 20 "$JOB/qemu.log" >&2
echo "vm: last lines of the guest kernel's console:" >&2
tail -n 60 "$JOB/console.log" >&2
exit 125
