#!/bin/bash
# provision.sh - prepare this machine for the autofs-restore-hook end-to-end lab.
#
# Idempotent. The first run takes minutes (apt + four debootstraps); a run
# where everything is present takes well under 5 s. Run as root.
#
#   1. Debian packages: runc iptables autofs debootstrap apparmor (required;
#      apparmor for apparmor_parser, the lab loads a profile where the kernel
#      enforces AppArmor),
#      podman conmon (optional: a failure only prints a loud warning);
#      uidmap and a user arh-rootless with subordinate ids (rootless podman);
#      libseccomp-dev for the lab's CRI-O, which crio-build.sh builds.
#   2. CRIU 4.1.1 from Debian trixie (Debian 12's CRIU 3.17 fails on recent
#      kernels with "vdso: Unexpected rt vDSO area bounds"):
#        $CACHE/criu-trixie      debootstrap --variant=minbase --include=criu trixie
#        $CACHE/bin/criu         wrapper running it through trixie's ld.so
#   3. A bookworm rootfs with systemd + autofs for the lab containers:
#        $CACHE/rootfs-bookworm  (units masked as needed for CRIU, machine-id, ...)
#   4. For the stack matrix: Debian 12's criu (3.17.1, $CACHE/bin-stock/criu)
#      and crun (1.8.1); crun 1.28 + CRIU 4.2.1 from Debian forky
#      ($CACHE/runtime-forky, wrappers in $CACHE/bin-forky); a trixie rootfs
#      ($CACHE/rootfs-trixie, systemd 257) for the cgroup v2 rows.
#
# Every tree is built in a temporary directory and renamed into place at the
# very end, so an interrupted run never leaves a half-built tree behind that
# looks done. Set ARH_LAB_CACHE to use another cache dir (default
# /var/cache/autofs-restore-hook), ARH_LAB_MIRROR for another Debian mirror.
set -euo pipefail

CACHE=${ARH_LAB_CACHE:-/var/cache/autofs-restore-hook}
MIRROR=${ARH_LAB_MIRROR:-http://deb.debian.org/debian}
CRIU_DIR=$CACHE/criu-trixie
CRIU_WRAPPER=$CACHE/bin/criu
ROOTFS=$CACHE/rootfs-bookworm
# Bump when the rootfs preparation below changes: an older rootfs is rebuilt.
ROOTFS_VERSION=4
ROOTFS_PACKAGES=systemd,systemd-sysv,autofs,procps,util-linux,coreutils,mount,psmisc

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { local ms=$(($(now_ms) - $1)); printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)); }
T0=$(now_ms)
log() { printf '[provision %6ss] %s\n' "$(secs "$T0")" "$*"; }
die() { log "FATAL: $*"; exit 1; }
step_start() { STEP_T=$(now_ms); log "step: $*"; }
step_end() { log "  done in $(secs "$STEP_T")s: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$CACHE/bin"

# Serialize concurrent runs (e.g. several test binaries at once).
exec 9>"$CACHE/.provision.lock"
if ! flock -n 9; then
	log "another provision.sh is running; waiting for its lock"
	flock 9
	log "  got the lock"
fi

APT_UPDATED=0
apt_update_once() {
	if [ $APT_UPDATED = 0 ]; then
		apt-get update -q >/dev/null 2>&1 || log "warning: apt-get update reported errors (continuing)"
		APT_UPDATED=1
	fi
}
pkg_installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }
apt_install() { # apt_install pkg... ; installs only the missing ones
	local missing=() p
	for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
	[ ${#missing[@]} = 0 ] && return 0
	apt_update_once
	log "  apt-get install ${missing[*]}"
	# A fresh machine often runs unattended-upgrades: wait for dpkg's lock
	# rather than fail on it.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=900 --no-install-recommends "${missing[@]}" >"$CACHE/apt.log" 2>&1 || {
		tail -20 "$CACHE/apt.log" >&2
		return 1
	}
}

# ---------------------------------------------------------------- 1. packages
step_start "Debian packages (runc iptables autofs debootstrap apparmor; optional podman conmon)"
apt_install runc iptables autofs debootstrap apparmor || die "apt-get install of required packages failed"
# autofs on the host must never serve anything: the lab only uses it inside containers.
if systemctl is-enabled autofs.service >/dev/null 2>&1 || systemctl is-active autofs.service >/dev/null 2>&1; then
	systemctl disable --now autofs.service >/dev/null 2>&1 || true
	log "  disabled host autofs.service (the lab runs automount only inside containers)"
fi
if ! apt_install podman conmon; then
	log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
	log "!!! WARNING: podman/conmon could not be installed; podman scenarios   !!!"
	log "!!! are unavailable. Everything else works without them.             !!!"
	log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi
# Rootless podman, for the tests of containers the hook must not touch
# (test/e2e TestHost...): newuidmap and a system user with subordinate ids.
apt_install uidmap || die "apt-get install uidmap failed"
if ! id arh-rootless >/dev/null 2>&1; then
	useradd --system --create-home --home-dir /var/lib/arh-rootless --shell /usr/sbin/nologin arh-rootless ||
		die "useradd arh-rootless failed"
	log "  made user arh-rootless (rootless podman)"
fi
grep -q '^arh-rootless:' /etc/subuid && grep -q '^arh-rootless:' /etc/subgid ||
	usermod --add-subuids 200000-265535 --add-subgids 200000-265535 arh-rootless ||
	die "usermod --add-subuids for arh-rootless failed"
# The lab's CRI-O (crio-build.sh builds it from its Go module): crio's
# seccomp support links libseccomp.
apt_install libseccomp-dev pkg-config || die "apt-get install libseccomp-dev pkg-config failed"
step_end "$(runc --version | head -1)"

# ---------------------------------------------------------- 2. CRIU from trixie
write_criu_wrapper() { # (re)writes the wrapper only if its content changed
	cat >"$CRIU_WRAPPER.tmp" <<WRAP
#!/bin/sh
# Generated by autofs-restore-hook test/lab/provision.sh: CRIU 4.x from Debian
# trixie, run through trixie's own dynamic loader (Debian 12's CRIU 3.17 does
# not work on this kernel). Put $CACHE/bin first in PATH for runc/podman.
#
# CRIU_FAULT=130 (FI_NO_BREAKPOINTS): CRIU stops a cured parasite on its
# rt_sigreturn with an x86 hardware breakpoint by default. In this VM the
# breakpoint never fires and "criu dump" hangs forever after
# "Sent msg to daemon 3 0 0" (wait4 in compel). Without breakpoints CRIU uses
# PTRACE_SYSCALL, which works. Export CRIU_FAULT= (empty) to get the default.
export CRIU_FAULT="\${CRIU_FAULT-130}"
D=$CRIU_DIR
exec "\$D/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$D/usr/lib/x86_64-linux-gnu:\$D/lib/x86_64-linux-gnu" "\$D/usr/sbin/criu" "\$@"
WRAP
	chmod 755 "$CRIU_WRAPPER.tmp"
	if cmp -s "$CRIU_WRAPPER.tmp" "$CRIU_WRAPPER"; then
		rm -f "$CRIU_WRAPPER.tmp"
	else
		mv -f "$CRIU_WRAPPER.tmp" "$CRIU_WRAPPER"
		log "  wrote $CRIU_WRAPPER"
	fi
}
step_start "CRIU from trixie ($CRIU_DIR)"
if [ -f "$CRIU_DIR/.arh-lab-done" ] && [ -x "$CRIU_WRAPPER" ] && "$CRIU_WRAPPER" --version >/dev/null 2>&1; then
	step_end "present: $("$CRIU_WRAPPER" --version | head -1)"
else
	tmp="$CACHE/.criu-trixie.tmp.$$"
	rm -rf "$CACHE"/.criu-trixie.tmp.*
	log "  debootstrap --variant=minbase --include=criu trixie (log: $CACHE/debootstrap-criu.log)"
	debootstrap --variant=minbase --include=criu trixie "$tmp" "$MIRROR" >"$CACHE/debootstrap-criu.log" 2>&1 || {
		tail -20 "$CACHE/debootstrap-criu.log" >&2
		rm -rf "$tmp"
		die "debootstrap of trixie with criu failed"
	}
	rm -rf "$tmp/var/cache/apt/archives"/*.deb
	touch "$tmp/.arh-lab-done"
	rm -rf "$CRIU_DIR"
	mv "$tmp" "$CRIU_DIR"
	write_criu_wrapper
	"$CRIU_WRAPPER" --version >/dev/null 2>&1 || die "criu wrapper does not run: $("$CRIU_WRAPPER" --version 2>&1 | tail -3)"
	step_end "built: $("$CRIU_WRAPPER" --version | head -1)"
fi
# Rewrite the wrapper if its content is stale (cheap).
write_criu_wrapper
if [ ! -f "$CACHE/.criu-check-ok" ]; then
	step_start "criu check"
	if out=$(PATH=$CACHE/bin:$PATH criu check 2>&1); then
		log "  $out"
		touch "$CACHE/.criu-check-ok"
	else
		log "  warning: criu check said: $(echo "$out" | tail -5 | tr '\n' ' ')"
	fi
	step_end "criu check"
fi

# ------------------------------------------------------- 3. bookworm rootfs
prepare_rootfs() { # prepare_rootfs DIR
	local r=$1 u
	# The container has no D-Bus (dbus-daemon runs as another uid, which CRIU
	# cannot dump without CAP_SYS_RESOURCE), no kernel/virtual filesystems of
	# its own, no getty, no udev, no logind; autofs.service stays off (the lab
	# starts automount by hand in kind "automount").
	for u in dbus.service dbus.socket dev-hugepages.mount sys-kernel-config.mount \
		sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
		systemd-logind.service getty.target console-getty.service getty@.service \
		serial-getty@.service systemd-udevd.service systemd-udevd-control.socket \
		systemd-udevd-kernel.socket systemd-udev-trigger.service systemd-udev-settle.service \
		systemd-timesyncd.service systemd-networkd.service systemd-resolved.service \
		systemd-modules-load.service kmod-static-nodes.service systemd-remount-fs.service \
		systemd-firstboot.service systemd-random-seed.service systemd-pstore.service \
		proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
		systemd-binfmt.service autofs.service apt-daily.timer apt-daily-upgrade.timer \
		e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
		ln -sfn /dev/null "$r/etc/systemd/system/$u"
	done
	# No cgroup/BPF IP firewall (CRIU cannot dump cgroup BPF programs).
	mkdir -p "$r/etc/systemd/system/systemd-journald.service.d" "$r/etc/systemd/system.conf.d"
	printf '[Service]\nIPAddressDeny=\nIPAddressAllow=\n' >"$r/etc/systemd/system/systemd-journald.service.d/arh-lab.conf"
	printf '[Manager]\nDefaultIPAccounting=no\nDefaultTimeoutStartSec=20s\nDefaultTimeoutStopSec=5s\n' >"$r/etc/systemd/system.conf.d/arh-lab.conf"
	ln -sfn /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
	# Identity and basic files.
	echo 0123456789abcdef0123456789abcdef >"$r/etc/machine-id"
	echo arh-lab >"$r/etc/hostname"
	: >"$r/etc/fstab"
	ln -sfn /proc/self/mounts "$r/etc/mtab"
	mkdir -p "$r/srv" "$r/lab"
	# An empty auto.master: kind "automount" writes its own maps per container.
	echo "# written per container by test/lab/lab.sh" >"$r/etc/auto.master"
	rm -rf "$r/var/cache/apt/archives"/*.deb "$r/var/lib/apt/lists"/*_Packages
	# Documentation, translations and all time zones but UTC: half the files,
	# which halves the cost of each bundle's copy (35 s over 9p, 14 s on
	# ext4 in the test VM before this).
	rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/locale/* "$r"/usr/share/info/*
	find "$r/usr/share/zoneinfo" -mindepth 1 -maxdepth 1 ! -name Etc ! -name UTC -exec rm -rf {} +
	echo "$ROOTFS_VERSION" >"$r/.arh-lab-done"
}
# ------------------------------------- 2b. Debian 12's own CRIU, as shipped
# For the stack matrix (lab.sh --criu stock): CRIU 3.17.1 from bookworm,
# installed as a package (/usr/sbin/criu), run through
# $CACHE/bin-stock/criu with the same fault setting as the trixie wrapper.
# The lab's PATH keeps $CACHE/bin (trixie's CRIU) first otherwise.
step_start "Debian 12's CRIU (stock, $CACHE/bin-stock/criu)"
if apt_install criu; then
	mkdir -p "$CACHE/bin-stock"
	cat >"$CACHE/bin-stock/criu.tmp" <<'WRAP'
#!/bin/sh
# Generated by autofs-restore-hook test/lab/provision.sh: Debian 12's own
# CRIU (the criu package), for lab.sh --criu stock. CRIU_FAULT=130: as in
# the trixie wrapper (no hardware breakpoints in the test VM).
export CRIU_FAULT="${CRIU_FAULT-130}"
exec /usr/sbin/criu "$@"
WRAP
	chmod 755 "$CACHE/bin-stock/criu.tmp"
	mv -f "$CACHE/bin-stock/criu.tmp" "$CACHE/bin-stock/criu"
	step_end "$("$CACHE/bin-stock/criu" --version 2>&1 | head -1)"
else
	log "!!! WARNING: Debian 12's criu package could not be installed: lab.sh --criu stock is unavailable"
	step_end "unavailable"
fi

# ----------------------------- 2c. a current crun and CRIU (Debian forky)
# For the stack matrix (lab.sh --runtime crun-forky): crun 1.28 with CRIU
# and libcriu 4.2.1 from Debian forky (testing), the first Debian release
# whose crun reads /etc/criu/crun.conf. Like trixie's CRIU, run through
# forky's own dynamic loader: $CACHE/bin-forky/crun and .../criu (crun's
# libcriu starts "criu" from PATH, so the lab puts bin-forky first).
write_forky_wrapper() { # write_forky_wrapper NAME PATH-IN-TREE [PRELUDE]
	cat >"$CACHE/bin-forky/$1.tmp" <<WRAP
#!/bin/sh
# Generated by autofs-restore-hook test/lab/provision.sh: $1 from Debian
# forky ($FORKY_DIR), run through forky's own dynamic loader.
${3:-}
D=$FORKY_DIR
exec "\$D/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$D/usr/lib/x86_64-linux-gnu:\$D/lib/x86_64-linux-gnu" "\$D$2" "\$@"
WRAP
	chmod 755 "$CACHE/bin-forky/$1.tmp"
	mv -f "$CACHE/bin-forky/$1.tmp" "$CACHE/bin-forky/$1"
}
FORKY_DIR=$CACHE/runtime-forky
step_start "crun and CRIU from forky ($FORKY_DIR)"
if [ -f "$FORKY_DIR/.arh-lab-done" ] && [ -x "$CACHE/bin-forky/crun" ] && "$CACHE/bin-forky/crun" --version >/dev/null 2>&1; then
	step_end "present: $("$CACHE/bin-forky/crun" --version | head -1)"
else
	tmp="$CACHE/.runtime-forky.tmp.$$"
	rm -rf "$CACHE"/.runtime-forky.tmp.*
	log "  debootstrap --variant=minbase --include=crun,criu,libcriu2 forky (log: $CACHE/debootstrap-forky.log)"
	# Debian 12's debootstrap has no script named forky; sid's fits.
	if debootstrap --variant=minbase --include=crun,criu,libcriu2 forky "$tmp" "$MIRROR" /usr/share/debootstrap/scripts/sid >"$CACHE/debootstrap-forky.log" 2>&1; then
		rm -rf "$tmp/var/cache/apt/archives"/*.deb
		touch "$tmp/.arh-lab-done"
		rm -rf "$FORKY_DIR"
		mv "$tmp" "$FORKY_DIR"
		mkdir -p "$CACHE/bin-forky"
		write_forky_wrapper crun /usr/bin/crun
		write_forky_wrapper criu /usr/sbin/criu 'export CRIU_FAULT="${CRIU_FAULT-130}" # as in the trixie wrapper'
		step_end "built: $("$CACHE/bin-forky/crun" --version | head -1), $("$CACHE/bin-forky/criu" --version | head -1)"
	else
		tail -20 "$CACHE/debootstrap-forky.log" >&2
		rm -rf "$tmp"
		log "!!! WARNING: no crun from forky: lab.sh --runtime crun-forky is unavailable"
		step_end "unavailable"
	fi
fi
# Debian 12's own crun (1.8.1), for the matrix row that shows it cannot
# checkpoint.
step_start "Debian 12's crun"
if apt_install crun; then
	step_end "$(crun --version | head -1)"
else
	log "!!! WARNING: Debian 12's crun package could not be installed"
	step_end "unavailable"
fi

# ------------------------------------------------------ 3b. trixie rootfs
# A Debian 13 container (systemd 257) for the cgroup v2 rows: systemd 256
# and later refuse the legacy hierarchy.
build_rootfs() { # build_rootfs SUITE DEST
	local suite=$1 dest=$2 base="$CACHE/.rootfs-debootstrap-$1" tmp
	[ "$suite" != bookworm ] || base="$CACHE/.rootfs-debootstrap"
	if [ ! -f "$base/.debootstrap-done" ]; then
		rm -rf "$base" "$base.tmp"
		log "  debootstrap --variant=minbase --include=$ROOTFS_PACKAGES $suite (log: $CACHE/debootstrap-rootfs-$suite.log)"
		debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$suite" "$base.tmp" "$MIRROR" >"$CACHE/debootstrap-rootfs-$suite.log" 2>&1 || {
			tail -20 "$CACHE/debootstrap-rootfs-$suite.log" >&2
			rm -rf "$base.tmp"
			die "debootstrap of the $suite rootfs failed"
		}
		touch "$base.tmp/.debootstrap-done"
		mv "$base.tmp" "$base"
	fi
	# Prepare a copy so the pristine debootstrap result can be reused when
	# ROOTFS_VERSION changes.
	tmp="$CACHE/.rootfs-$suite.tmp.$$"
	rm -rf "$CACHE"/.rootfs-"$suite".tmp.*
	cp -a "$base" "$tmp"
	rm -f "$tmp/.debootstrap-done"
	prepare_rootfs "$tmp"
	rm -rf "$dest"
	mv "$tmp" "$dest"
}
# rootfs_ready DIR: built by this ROOTFS_VERSION, with systemd and automount.
rootfs_ready() { [ "$(cat "$1/.arh-lab-done" 2>/dev/null)" = "$ROOTFS_VERSION" ] && [ -x "$1/lib/systemd/systemd" ] && [ -x "$1/usr/sbin/automount" ]; }
ROOTFS_TRIXIE=$CACHE/rootfs-trixie
step_start "trixie rootfs ($ROOTFS_TRIXIE)"
if rootfs_ready "$ROOTFS_TRIXIE"; then
	step_end "present (version $ROOTFS_VERSION)"
else
	# In a subshell: a failure here must not stop the bookworm rootfs
	# that every other test needs (the cgroup v2 tests then fail, saying so).
	if (build_rootfs trixie "$ROOTFS_TRIXIE"); then
		step_end "built (version $ROOTFS_VERSION, $(du -sh "$ROOTFS_TRIXIE" | cut -f1))"
	else
		log "!!! WARNING: no trixie rootfs: the cgroup v2 tests (lab.sh --rootfs trixie) cannot run"
		step_end "unavailable"
	fi
fi

step_start "bookworm rootfs ($ROOTFS)"
if rootfs_ready "$ROOTFS"; then
	step_end "present (version $ROOTFS_VERSION)"
else
	build_rootfs bookworm "$ROOTFS"
	step_end "built (version $ROOTFS_VERSION, $(du -sh "$ROOTFS" | cut -f1))"
fi

log "ready: CRIU wrapper $CRIU_WRAPPER, rootfs $ROOTFS and $ROOTFS_TRIXIE"
