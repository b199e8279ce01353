#!/bin/bash
# guest.sh CMD... - inside the test VM (run by the job.sh that run.sh
# writes): set the guest up as the lab expects a host to be, run CMD, write
# its exit status to /arh-vm/rc and power off. CMD's output goes to
# /arh-vm/out.log, which run.sh shows on the host as it grows.
set -uo pipefail
exec >>/arh-vm/out.log 2>&1
export PATH=${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
T0=$(date +%s%N)
say() { echo "vm-guest: $*"; }
finish() {
	echo "$1" >/arh-vm/rc
	dmesg >/arh-vm/dmesg.log 2>&1
	sync
	echo o >/proc/sysrq-trigger
	sleep 10
}
die() { say "FATAL: $*"; finish 125; }

mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || die "devpts"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue 2>/dev/null
# securityfs, as systemd mounts it on a host: runc, podman and CRIU look
# there to tell whether AppArmor is on (Debian's kernels enforce it).
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null || say "warning: no securityfs"
mount -t tmpfs -o mode=0755 tmpfs /run || die "/run"
mkdir -p /run/lock && chmod 1777 /run/lock
# /tmp stays the overlay's: the host's /tmp, writable in the guest (a
# checkout there must stay visible).
chmod 1777 /tmp

# The kernel's modules, where modprobe (the host's kmod) and the kernel's
# own module requests (runc, iptables, CRIU) look for them.
mkdir -p "/lib/modules/$ARH_VM_KVER"
mount --bind "$ARH_VM_KDIR/lib/modules/$ARH_VM_KVER" "/lib/modules/$ARH_VM_KVER" || die "bind the kernel's modules"
for m in autofs4 virtio_blk ext4 overlay veth tun nf_tables nft_compat nft_chain_nat ip_tables iptable_filter iptable_nat nf_conntrack xt_mark \
	ip6_tables ip6table_filter nf_nat br_netfilter sch_fq_codel binfmt_misc fuse loop; do
	modprobe "$m" 2>/dev/null || say "warning: modprobe $m failed"
done
[ -c /dev/autofs ] || die "no /dev/autofs after modprobe autofs4"

if [ "${ARH_VM_CGROUP:-1}" = 2 ]; then
	# Only the unified hierarchy, as current distributions boot (systemd 256
	# and later refuse anything else), with every controller the kernel has
	# delegated to the root's children.
	mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || die "cgroup2"
	for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
		echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || say "warning: cannot enable the $c controller"
	done
else
	# cgroups as on the machine this was developed on (cgroup v1, one
	# hierarchy per controller, plus name=systemd and a cgroup2 at unified).
	mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup || die "cgroup tmpfs"
	for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
		mkdir -p "/sys/fs/cgroup/$c"
		mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || say "warning: cgroup v1 controller $c unavailable"
	done
	mkdir -p /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
	mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || die "cgroup name=systemd"
	mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || say "warning: no cgroup2"
fi

# The host's clock (QEMU's RTC), not whatever the kernel started with.
modprobe rtc_cmos 2>/dev/null
hwclock --hctosys --utc 2>/dev/null || say "warning: could not set the clock from the RTC"
ip link set lo up || die "lo up"
hostname arh-test-vm

# The ext4 disk run.sh made, with the lab's rootfs in it: CRIU cannot dump
# a systemd container whose rootfs is on tmpfs or overlayfs, and copying the
# rootfs over 9p is slow. Only the lab's own directories are bound from it,
# so that no host path (a checkout under /var/tmp, say) is hidden.
mkdir -p /mnt/arh-disk
mount -o noatime /dev/vda /mnt/arh-disk || die "mount /dev/vda"
for d in "${ARH_LAB_DIR:-/var/tmp/arh-lab}:arh-lab" /var/lib/containers:containers; do
	mkdir -p "/mnt/arh-disk/${d##*:}" "${d%:*}"
	mount --bind "/mnt/arh-disk/${d##*:}" "${d%:*}" || die "bind ${d%:*}"
done
if [ -d /mnt/arh-disk/rootfs-bookworm ]; then
	mount --bind /mnt/arh-disk/rootfs-bookworm "$ARH_VM_LAB_ROOTFS" || die "bind the lab's rootfs"
fi
if [ -d /mnt/arh-disk/rootfs-trixie ] && [ -d "${ARH_VM_LAB_ROOTFS_TRIXIE:-}" ]; then
	mount --bind /mnt/arh-disk/rootfs-trixie "$ARH_VM_LAB_ROOTFS_TRIXIE" || die "bind the lab's trixie rootfs"
fi

say "ready in $((($(date +%s%N) - T0) / 1000000)) ms: kernel $(uname -r), $(nproc) CPUs, cgroup v${ARH_VM_CGROUP:-1}, /dev/autofs present"
"$@"
finish $?
