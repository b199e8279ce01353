#!/bin/busybox sh
# init.sh - /init of the test VM's initramfs (built by kernel.sh).
#
# Loads the virtio/9p/overlay modules, mounts the host's / (shared read-only
# by run.sh over virtio-9p, tag "hostroot") under a tmpfs overlay, mounts the
# job directory (tag "arhjob", read-write) at /arh-vm, and switches to the
# overlay root, where /arh-vm/job.sh (written by run.sh) takes over with the
# host's own tools. Any failure powers the guest off at once: run.sh reports
# that no result was written.
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "vm-init: FATAL: $*"; echo o >/proc/sysrq-trigger; sleep 5; exit 1; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/mod/$m" || fail "insmod $m"; done </mod/order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || fail "mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mount the overlay's tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || fail "mount the overlay root"
mkdir -p /newroot/arh-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none arhjob /newroot/arh-vm || fail "mount the job directory"
[ -f /newroot/arh-vm/job.sh ] || fail "no job.sh in the job directory"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/bash /arh-vm/job.sh
