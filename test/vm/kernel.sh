#!/bin/bash
# kernel.sh DIST - a Debian stock kernel with an initramfs for the test VM.
#
#   DIST: bookworm (Debian 12) or trixie (Debian 13).
#
# Downloads the linux-image package that DIST's linux-image-amd64 depends on
# (Debian's own package, from its own archive, through apt with a private
# state directory: the host's apt sources are not touched), extracts it, runs
# depmod, and builds an initramfs of busybox-static plus the modules needed
# to mount the host's root over virtio-9p (see init.sh next to this file).
# Result, cached until the directory is removed:
#
#   $ARH_VM_CACHE/kernel-DIST/vmlinuz        the kernel
#   $ARH_VM_CACHE/kernel-DIST/initrd.gz      the initramfs
#   $ARH_VM_CACHE/kernel-DIST/lib/modules/V  its modules (bound into the guest)
#   $ARH_VM_CACHE/kernel-DIST/version        V (uname -r), and the .deb's name
#   $ARH_VM_CACHE/kernel-DIST/config         its build configuration
#
# Prints the kernel directory on stdout; progress goes to stderr. Run as root.
# ARH_VM_CACHE defaults to /var/cache/autofs-restore-hook/vm,
# ARH_LAB_MIRROR to http://deb.debian.org/debian.
set -euo pipefail

DIST=${1:?usage: kernel.sh bookworm|trixie}
case $DIST in bookworm | trixie) ;; *) echo "kernel.sh: unknown DIST '$DIST' (bookworm or trixie)" >&2; exit 2 ;; esac
CACHE=${ARH_VM_CACHE:-/var/cache/autofs-restore-hook/vm}
MIRROR=${ARH_LAB_MIRROR:-http://deb.debian.org/debian}
HERE=$(cd "$(dirname "$0")" && pwd)
KDIR=$CACHE/kernel-$DIST
# Bump when the initramfs below changes: an older one is rebuilt.
INITRD_VERSION=1

log() { echo "[vm-kernel $DIST] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$CACHE"
exec 8>"$CACHE/.kernel-$DIST.lock"
flock 8

pkg_installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }
need=()
for p in qemu-system-x86 busybox-static cpio kmod xz-utils zstd e2fsprogs; do pkg_installed "$p" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
	log "apt-get install ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q -o DPkg::Lock::Timeout=900 --no-install-recommends "${need[@]}" >"$CACHE/apt.log" 2>&1 ||
		{ apt-get update -q >>"$CACHE/apt.log" 2>&1 && apt-get install -y -q -o DPkg::Lock::Timeout=900 --no-install-recommends "${need[@]}" >>"$CACHE/apt.log" 2>&1; } ||
		{ tail -20 "$CACHE/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi

# ------------------------------------------------------------ the kernel
if [ ! -f "$KDIR/.kernel-done" ]; then
	aptd=$CACHE/apt-$DIST
	mkdir -p "$aptd/lists/partial" "$aptd/cache/archives/partial" "$aptd/parts"
	{
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $DIST main"
		[ "$DIST" = bookworm ] && echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${MIRROR%/debian}/debian-security $DIST-security main"
	} >"$aptd/sources.list"
	APT=(-o "Dir::Etc::SourceList=$aptd/sources.list" -o "Dir::Etc::SourceParts=$aptd/parts"
		-o "Dir::State::Lists=$aptd/lists" -o "Dir::Cache=$aptd/cache" -o "APT::Architecture=amd64"
		-o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$aptd/parts")
	log "apt-get update ($DIST, private lists in $aptd)"
	apt-get "${APT[@]}" update -q >"$aptd/update.log" 2>&1 || { tail -20 "$aptd/update.log" >&2; die "apt-get update for $DIST failed"; }
	pkg=$(apt-cache "${APT[@]}" depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
	[ -n "$pkg" ] || die "linux-image-amd64 of $DIST depends on no linux-image-VERSION package"
	tmp=$CACHE/.kernel-$DIST.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp/deb" "$tmp/x"
	log "apt-get download $pkg"
	(cd "$tmp/deb" && apt-get "${APT[@]}" download -q "$pkg" >"$aptd/download.log" 2>&1) || { tail -20 "$aptd/download.log" >&2; die "apt-get download $pkg failed"; }
	deb=$(ls "$tmp"/deb/*.deb)
	dpkg -x "$deb" "$tmp/x"
	vmlinuz=$(ls "$tmp"/x/boot/vmlinuz-* | head -1)
	kver=${vmlinuz##*/vmlinuz-}
	mods=$(find "$tmp/x" -maxdepth 4 -type d -path "*/modules/$kver" | head -1)
	[ -n "$mods" ] || die "$deb has no modules directory for $kver"
	rm -rf "$tmp/k"
	mkdir -p "$tmp/k/lib/modules"
	mv "$vmlinuz" "$tmp/k/vmlinuz"
	cp "$tmp/x/boot/config-$kver" "$tmp/k/config" 2>/dev/null || true
	mv "$mods" "$tmp/k/lib/modules/$kver"
	depmod -b "$tmp/k" "$kver"
	printf '%s\n%s\n' "$kver" "$(basename "$deb")" >"$tmp/k/version"
	touch "$tmp/k/.kernel-done"
	rm -rf "$KDIR"
	mv "$tmp/k" "$KDIR"
	rm -rf "$tmp"
	log "kernel $kver from $(basename "$deb")"
fi
kver=$(head -1 "$KDIR/version")

# ------------------------------------------------------------ the initramfs
if [ "$(cat "$KDIR/.initrd-done" 2>/dev/null)" != "$INITRD_VERSION" ] || ! cmp -s "$HERE/init.sh" "$KDIR/init.sh"; then
	tmp=$CACHE/.initrd-$DIST.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp"/{bin,dev,proc,sys,mod,lower,upper,newroot}
	cp /bin/busybox "$tmp/bin/busybox"
	cp "$HERE/init.sh" "$tmp/init"
	chmod 755 "$tmp/init"
	# insmod order for the 9p root and the overlay over it (modprobe names
	# every dependency first; built-in modules are skipped).
	: >"$tmp/mod/order"
	for m in virtio_pci 9pnet_virtio 9p overlay; do
		modprobe --show-depends -d "$KDIR" -S "$kver" "$m" | awk '$1 == "insmod" {print $2}'
	done | awk '!seen[$0]++' | while read -r f; do
		base=$(basename "$f")
		case $base in
		*.ko.xz) xz -dc "$f" >"$tmp/mod/${base%.xz}"; base=${base%.xz} ;;
		*.ko.zst) zstd -qdc "$f" >"$tmp/mod/${base%.zst}"; base=${base%.zst} ;;
		*.ko) cp "$f" "$tmp/mod/$base" ;;
		*) die "unexpected module file $f" ;;
		esac
		echo "$base" >>"$tmp/mod/order"
	done
	[ -s "$tmp/mod/order" ] || die "no module found for the 9p root (built in?)"
	(cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$KDIR/initrd.gz.tmp"
	mv "$KDIR/initrd.gz.tmp" "$KDIR/initrd.gz"
	cp "$HERE/init.sh" "$KDIR/init.sh"
	echo "$INITRD_VERSION" >"$KDIR/.initrd-done"
	rm -rf "$tmp"
	log "initramfs built ($KDIR/initrd.gz)"
fi
echo "$KDIR"
