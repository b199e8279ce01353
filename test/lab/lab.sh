#!/bin/bash
# lab.sh - runc/CRIU containers with AutoFS mounts for the autofs-restore-hook
# end-to-end lab. See test/lab/README.md for the reproduced scenarios.
#
# Usage: lab.sh COMMAND NAME [OPTIONS]
#
#   up NAME KIND [WIRING] [--count N] [--no-trigger] [--automount-daemon]
#        Create the bundle /var/tmp/arh-lab/NAME (rootfs = copy of the cached
#        bookworm rootfs), start the container (runc run -d), wait until it is
#        ready and, unless --no-trigger, trigger the mounts that are meant to be
#        mounted at checkpoint time (and write stateful content into them).
#        KIND:
#          systemd    systemd is PID 1; .automount units /srv/a /srv/b /srv/c
#                     (+ /srv/u1../srv/uN with --count N), each with a tmpfs
#                     .mount unit. Trigger: /srv/a/state is written.
#          automount  PID 1 is a sh loop; the autofs `automount` daemon runs
#                     (setsid, -f, log in /run/automount.log, pid file
#                     /run/automount.pid) with a direct map (/srv/direct1,
#                     /srv/direct2, + /srv/d1../srv/dN with --count N, and a
#                     multi-mount /srv/dmulti with offset /sub) and an indirect
#                     map /ind (keys k1 k2 k3, and multi with offset /sub).
#                     Trigger: /ind/k1/state is written, /ind/multi is mounted
#                     (its offset /ind/multi/sub stays an untriggered autofs mount).
#                     Direct mounts are never triggered: CRIU refuses to dump then.
#                     --confined: as podman and Kubernetes confine containers: a
#                     seccomp filter (config.json linux.seccomp, allow by default,
#                     a few syscalls EPERM), oomScoreAdj 500, lower limits
#                     (nofile 1024/2048, nproc 3000/4000), for automount umask
#                     027 for the daemon, and, on a kernel with AppArmor, the
#                     profile arh-lab-confined (loaded with apparmor_parser;
#                     broad, but not unconfined: it denies a few /proc files).
#                     --seccomp FILE: FILE holds the linux.seccomp object of
#                     config.json, instead of --confined's (or none); for
#                     podman-up, a profile in podman's format
#                     (--security-opt seccomp=FILE).
#                     --no-new-privs: process.noNewPrivileges (runc then
#                     installs the filter after the credentials).
#                     --securebits LIST: start automount under setpriv
#                     --securebits LIST (e.g. +no_setuid_fixup,+keep_caps_locked).
#                     --as-limit BYTES: start automount under prlimit
#                     --as=BYTES (its address-space limit, soft and hard).
#                     --criu stock: checkpoint and restore it with Debian 12's
#                     own CRIU (3.17.1, provision.sh) instead of trixie's 4.1.1.
#                     --runtime RT: runc (default, Debian 12's 1.1.5), crun
#                     (Debian 12's 1.8.1) or crun-forky (crun 1.28 with CRIU
#                     4.2.1 from Debian forky, provision.sh); every later
#                     command uses that runtime.
#                     --rootfs DIST: bookworm (default, systemd 252) or trixie
#                     (Debian 13, systemd 257).
#                     --no-criu-annotation: no org.criu.config annotation at
#                     all, so that the runtime reads /etc/criu/<runtime>.conf.
#                     On a cgroup v2 host (only the unified hierarchy) the
#                     container gets a cgroup namespace, and a systemd one
#                     a seccomp filter denying bpf() (see write_config).
#                     --automount-daemon: let automount daemonize itself instead
#                     of -f (logs then go to syslog, i.e. nowhere).
#          plain      sh loop as PID 1, no autofs at all.
#   bundle NAME KIND [WIRING] [--count N]   only create the bundle (no start)
#   podman-up NAME [WIRING] [--kind automount] [--confined] [--count N] [--no-trigger] [--system-hooks] [--image IMG]
#        Like "up NAME systemd" (or automount) but run by podman 4.3, with
#        its default seccomp profile (--runtime runc
#        --cgroup-manager=cgroupfs --events-backend=file --network none
#        --ulimit nofile/nproc=4096, or with --confined nofile 1024/2048,
#        nproc 3000/4000, --oom-score-adj 500 and automount's umask 027;
#        --hooks-dir BUNDLE/hooks.d --rootfs BUNDLE/rootfs, --systemd=always
#        for systemd; on a kernel with AppArmor --security-opt
#        apparmor=arh-lab-confined, as podman's default profile denies every
#        mount). --hook is written as BUNDLE/hooks.d/
#        arh-lab.json, --action-script via --annotation org.criu.config=...
#        Afterwards exec, checkpoint, restore (no new wiring), pid, ps,
#        waiters, mounts, down work on it as on a runc container; checkpoint
#        images stay in podman's storage. With $ARH_LAB_HOOKS_JSON set, that
#        file is copied into the container's hooks dir instead of --hook.
#        --image IMG: run it from IMG (made by "image") instead of
#        --rootfs; down leaves the image.
#        --system-hooks: no --hooks-dir; podman reads its own hooks dirs
#        (where the project's Debian package installs its JSON).
#        --tmpfs-run: --tmpfs /run (needed for checkpoint --export and
#        restore --import of a systemd container with podman 4.3).
#   crio start --image IMG   start the lab's CRI-O (crio-build.sh builds it
#        into $CACHE/crio-v1.34.0) in the background: configuration,
#        socket, pid and log in /run/arh-lab-crio; podman's storage; runc
#        with the lab's CRIU; cgroupfs; CRIU support on; CRI-O's default
#        hooks_dir (/usr/share/containers/oci/hooks.d); IMG (made by
#        "image") as pause image, never run. crio stop ends it.
#   crio-up NAME --kind KIND --image IMG [--seccomp FILE]
#        Like podman-up, run by the lab's CRI-O: a pod of its own (host
#        network, no shared pid namespace, /dev/autofs through the pod
#        annotation io.kubernetes.cri-o.Devices), a container from IMG with
#        SYS_ADMIN, the lab's AppArmor profile where the kernel has
#        AppArmor, FILE (podman's format) or CRI-O's default seccomp
#        profile. No wiring: CRI-O hooks it from its hooks_dir. checkpoint
#        exports it (crictl checkpoint --export BUNDLE/checkpoint.tar) and
#        removes the container; restore creates and starts a new one in
#        the pod from that archive, as the kubelet does; exec, pid, ps,
#        waiters, mounts, down work on it as on a runc container.
#   image NAME [--kind automount] [--rootfs R]   podman import of a fresh
#        rootfs of that kind (made as for podman-up, then removed), as
#        localhost/NAME:lab, for podman-up and crio-up --image: one import
#        for several containers (an import costs a minute and more under
#        TCG). Its command is the kind's init (CRI-O restores a container
#        with its image's command).
#   rmi NAME                 podman rmi -f localhost/NAME:lab.
#   wire NAME [WIRING]       rewrite config.json of an existing bundle (used by
#                            the next restore); without WIRING: unwire all.
#   exec NAME [--timeout SEC] [--] CMD...
#        runc exec with a hard deadline (timeout --foreground -s KILL, default
#        10 s, whole seconds). On a timeout: prints "arh-lab: TIMEOUT" + the
#        container's processes in autofs_wait to stderr and exits 124. The
#        blocked process stays (see kill-waiters).
#   checkpoint NAME [--image DIR] [--leave-running]
#        runc checkpoint --image-path DIR (default BUNDLE/image, replaced).
#   restore NAME [--image DIR] [WIRING | --unwire]
#        runc restore -d with the CRIU wrapper first in PATH. For podman:
#        checkpoint --export FILE writes the archive and removes the
#        container; restore --import FILE restores it from that archive.
#        WIRING given here
#        is written into config.json first (see wire).
#   stop NAME         runc delete -f and remove its cgroups, keep the bundle and
#                     the image (to restore the same image again). Idempotent.
#                     (podman: podman rm -f, which drops its checkpoint too.)
#   down NAME         stop, remove the bundle and the hook's state files of
#                     the init. Idempotent.
#   pid NAME          host pid of the container's init.
#   pids NAME         host pids of all processes in the container's pid namespace.
#   ps NAME           pid, state, wchan and command of each of them.
#   waiters NAME      host pids of the container's processes in autofs_wait.
#   kill-waiters NAME SIGKILL them.
#   mounts NAME       the container's autofs mounts and the mounts below them,
#                     from /proc/PID/mountinfo (never walks a path).
#   status NAME       runc state.
#   list              lab bundles and runc containers named arh-lab-*.
#   reap              down the bundles whose owner process is gone (up records
#                     $ARH_LAB_OWNER_PID, set by the Go package, in BUNDLE/owner).
#
# WIRING (how our hook is plugged in; any combination):
#   --action-script BIN   CRIU action script, without touching /etc/criu: the
#                         bundle's criu.conf says "action-script BIN" and the
#                         config.json annotation org.criu.config points at it.
#                         Unwired bundles carry org.criu.config="" so that
#                         /etc/criu/runc.conf is never read either.
#   --criu-opt LINE       extra line for that criu.conf (repeatable).
#   --hook BIN            OCI hook in config.json, args [BIN, --hook-arg...].
#   --hook-stage STAGE    createRuntime (default), prestart, createContainer,
#                         startContainer, poststart, poststop.
#   --hook-arg ARG        extra argument (repeatable).
#   --hook-env K=V        environment of the hook (repeatable).
#   --hook-timeout SEC    OCI hook timeout.
#
# NAME must start with arh-lab-. Environment: ARH_LAB_DIR (default
# /var/tmp/arh-lab), ARH_LAB_CACHE (default /var/cache/autofs-restore-hook),
# ARH_TEST_SLOWDOWN (multiplies every wait and deadline of this script,
# exec --timeout included; rounded up to a whole number; default 1).
# Every command prints "arh-lab: <command> NAME took S.SSs" to stderr.
set -euo pipefail

LAB_DIR=${ARH_LAB_DIR:-/var/tmp/arh-lab}
CACHE=${ARH_LAB_CACHE:-/var/cache/autofs-restore-hook}
HOOK_STATE_DIR=/run/autofs-restore-hook # hook.StateDir
CRIO_VERSION=v1.34.0 # keep in step with crio-build.sh
CRIO_BIN=$CACHE/crio-$CRIO_VERSION
CRIO_RUN=/run/arh-lab-crio
ROOTFS_SRC=$CACHE/rootfs-bookworm
export PATH=$CACHE/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# The tests' slowdown factor (internal/testenv), as a whole number >= 1.
SLOW=$(awk -v f="${ARH_TEST_SLOWDOWN:-1}" 'BEGIN { n = int(f); if (n < f) n++; if (n < 1) n = 1; print n }')
now_ms() { echo $(($(date +%s%N) / 1000000)); }
fmt_ms() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }
T0=$(now_ms)
say() { echo "arh-lab: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
took() { say "$1 took $(fmt_ms $(($(now_ms) - T0)))s"; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }

check_name() {
	[[ ${1:-} =~ ^arh-lab-[A-Za-z0-9_.-]+$ ]] || die "container name must match arh-lab-[A-Za-z0-9_.-]+ (got '${1:-}')"
}
bundle_of() { echo "$LAB_DIR/$1"; }

# cgroup_v2: whether this host has only the unified hierarchy.
cgroup_v2() { [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; }
# systemd 252 in a container on the cgroup v1 layout: the legacy hierarchy.
LEGACY_CGROUP_CMDLINE="SYSTEMD_PROC_CMDLINE=systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1"

# ------------------------------------------------------------------ runtimes
# bundle_runtime NAME: the runtime recorded in BUNDLE/runtime (runc if none).
bundle_runtime() { cat "$(bundle_of "$1")/runtime" 2>/dev/null || echo runc; }
# rt_id NAME: the OCI runtime's id of container NAME: NAME, or for a CRI-O
# container (crio-up) the id CRI-O gave it (BUNDLE/crio-ctr).
rt_id() {
	if is_crio "$1"; then
		cat "$(bundle_of "$1")/crio-ctr" 2>/dev/null || echo "$1-gone"
	else
		echo "$1"
	fi
}
# rt_argv NAME: sets RT to the OCI runtime of container NAME (BUNDLE/runtime,
# written by up): runc (Debian 12's), crun (Debian 12's 1.8.1) or
# crun-forky (crun 1.28 from Debian forky, provision.sh, with forky's CRIU
# 4.2.1 first in PATH for its libcriu).
rt_argv() {
	local r
	r=$(bundle_runtime "$1")
	case $r in
	runc) RT=(runc) ;;
	crun) RT=(crun) ;;
	crun-forky) RT=(env "PATH=$CACHE/bin-forky:$PATH" "$CACHE/bin-forky/crun") ;;
	*) die "unknown runtime '$r' in $(bundle_of "$1")/runtime" ;;
	esac
}
rt_state_dir() { # the runtime's state directory of container NAME
	case $(bundle_runtime "$1") in
	runc) echo "/run/runc/$1" ;;
	*) echo "/run/crun/$1" ;;
	esac
}

# ------------------------------------------------------------------ options
# Parsed into globals; saved in BUNDLE/lab.conf with declare -p.
KIND="" COUNT=0 TRIGGER=1 AUTOMOUNT_DAEMON=0 CONFINED=0 SECCOMP_FILE="" NNP=false SECUREBITS="" AS_LIMIT="" SYSTEM_HOOKS=0 CRIU_KIND=lab EXPORT="" IMPORT="" RUN_IMAGE=""
RUNTIME=runc ROOTFS_NAME=bookworm NO_CRIU_ANNOTATION=0 TMPFS_RUN=0
# PODMAN_SECCOMP=1 (podman-up, crio-up): SECCOMP_FILE is a profile in
# podman's format, for podman or CRI-O, never config.json's linux.seccomp.
PODMAN_SECCOMP=0
ACTION_SCRIPT="" HOOK_PATH="" HOOK_STAGE=createRuntime HOOK_TIMEOUT=""
CRIU_OPTS=() HOOK_ARGS=() HOOK_ENV=()
WIRING_GIVEN=0 UNWIRE=0 IMAGE="" LEAVE_RUNNING=0 TIMEOUT=10
REST=()
parse_opts() {
	while [ $# -gt 0 ]; do
		case $1 in
		--count) COUNT=$2; shift ;;
		--no-trigger) TRIGGER=0 ;;
		--automount-daemon) AUTOMOUNT_DAEMON=1 ;;
		--confined) CONFINED=1 ;;
		--kind) KIND=$2; shift ;;
		--no-new-privs) NNP=true ;;
		--system-hooks) SYSTEM_HOOKS=1 ;;
		--image) RUN_IMAGE=$2; shift ;;
		--export) EXPORT=$(abspath "$2"); shift ;;
		--import) IMPORT=$(abspath "$2"); shift ;;
		--criu)
			case $2 in lab | stock) CRIU_KIND=$2 ;; *) die "--criu: lab or stock" ;; esac
			shift
			;;
		--no-criu-annotation) NO_CRIU_ANNOTATION=1 ;;
		--tmpfs-run) TMPFS_RUN=1 ;;
		--runtime)
			case $2 in runc | crun | crun-forky) RUNTIME=$2 ;; *) die "--runtime: runc, crun or crun-forky" ;; esac
			shift
			;;
		--rootfs)
			case $2 in bookworm | trixie) ROOTFS_NAME=$2 ROOTFS_SRC=$CACHE/rootfs-$2 ;; *) die "--rootfs: bookworm or trixie" ;; esac
			shift
			;;
		--as-limit)
			case $2 in *[!0-9]* | "") die "--as-limit: a number of bytes" ;; esac
			AS_LIMIT=$2
			shift
			;;
		--securebits)
			case $2 in *[!a-z_,+-]* | "") die "--securebits: a list like +no_setuid_fixup,+keep_caps_locked" ;; esac
			SECUREBITS=$2
			shift
			;;
		--seccomp) SECCOMP_FILE=$(abspath "$2"); shift ;;
		--action-script) ACTION_SCRIPT=$2; WIRING_GIVEN=1; shift ;;
		--criu-opt) CRIU_OPTS+=("$2"); WIRING_GIVEN=1; shift ;;
		--hook) HOOK_PATH=$2; WIRING_GIVEN=1; shift ;;
		--hook-stage) HOOK_STAGE=$2; shift ;;
		--hook-arg) HOOK_ARGS+=("$2"); shift ;;
		--hook-env) HOOK_ENV+=("$2"); shift ;;
		--hook-timeout) HOOK_TIMEOUT=$2; shift ;;
		--unwire) UNWIRE=1 ;;
		--image) IMAGE=$2; shift ;;
		--leave-running) LEAVE_RUNNING=1 ;;
		--timeout) TIMEOUT=$2; shift ;;
		--) shift; REST=("$@"); return ;;
		-*) die "unknown option $1" ;;
		*) REST=("$@"); return ;;
		esac
		shift
	done
}
abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

save_conf() { # save_conf BUNDLE
	# declare -g: load_conf sources this inside a function.
	{
		declare -p KIND COUNT AUTOMOUNT_DAEMON ACTION_SCRIPT HOOK_PATH HOOK_STAGE HOOK_TIMEOUT NO_CRIU_ANNOTATION
		declare -p CRIU_OPTS HOOK_ARGS HOOK_ENV
	} | sed -e 's/^declare -- /declare -g /' -e 's/^declare -a /declare -ga /' >"$1/lab.conf"
}
load_conf() { # load_conf BUNDLE ; keeps wiring given on the command line
	local a=$ACTION_SCRIPT h=$HOOK_PATH hs=$HOOK_STAGE ht=$HOOK_TIMEOUT
	local co=("${CRIU_OPTS[@]}") ha=("${HOOK_ARGS[@]}") he=("${HOOK_ENV[@]}")
	[ -f "$1/lab.conf" ] || die "no bundle at $1 (run: lab.sh up/bundle)"
	# shellcheck disable=SC1091
	source "$1/lab.conf"
	if [ "$UNWIRE" = 1 ]; then
		ACTION_SCRIPT="" HOOK_PATH="" CRIU_OPTS=() HOOK_ARGS=() HOOK_ENV=() HOOK_TIMEOUT=""
		HOOK_STAGE=createRuntime
	fi
	if [ "$WIRING_GIVEN" = 1 ]; then
		ACTION_SCRIPT=$a HOOK_PATH=$h HOOK_STAGE=$hs HOOK_TIMEOUT=$ht
		CRIU_OPTS=("${co[@]}") HOOK_ARGS=("${ha[@]}") HOOK_ENV=("${he[@]}")
	fi
}

# ------------------------------------------------------------------ AppArmor
AA_PROFILE=arh-lab-confined
# apparmor_on: whether the kernel enforces AppArmor (then the lab needs it).
apparmor_on() { [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; }
# apparmor_load: load the lab's profile (again). securityfs is mounted
# where it is not; runc reads it to tell whether AppArmor is on.
apparmor_load() {
	[ -d /sys/kernel/security/apparmor ] || mount -t securityfs securityfs /sys/kernel/security ||
		die "AppArmor is on but securityfs cannot be mounted"
	command -v apparmor_parser >/dev/null || die "AppArmor is on but apparmor_parser is missing (provision.sh installs package apparmor)"
	lab_config apparmor -out - -name "$AA_PROFILE" | apparmor_parser -r -W || die "apparmor_parser could not load $AA_PROFILE"
}

# -------------------------------------------------------------- labconfig
# labconfig (test/lab/labconfig) writes what the lab builds of a container:
# config.json (runtime-spec types) and criu.conf, the kind's files in the
# rootfs, podman's hooks.d file, CRI-O's configuration and CRI configs, the
# AppArmor profile; this script runs the tools. Built on the host
# (tests.sh, make lab-tools for demo and bench: the test VM's guest builds
# nothing); here when missing or older than its source and Go is at hand.
LAB_CONFIG=${ARH_LAB_CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/bin/labconfig}
lab_config() {
	local src
	src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/labconfig
	if [ -d "$src" ] && command -v go >/dev/null &&
		{ [ ! -x "$LAB_CONFIG" ] || [ -n "$(find "$src" -name '*.go' -newer "$LAB_CONFIG" 2>/dev/null | head -1)" ]; }; then
		(cd "$src" && go build -o "$LAB_CONFIG" .) || die "could not build $LAB_CONFIG"
	fi
	[ -x "$LAB_CONFIG" ] || die "no $LAB_CONFIG (make lab-tools builds it)"
	"$LAB_CONFIG" "$@"
}
# hook_flags: the hook's wiring as labconfig's flags, in HOOK_FLAGS.
hook_flags() {
	local o
	HOOK_FLAGS=(-hook "$HOOK_PATH" -hook-stage "$HOOK_STAGE")
	for o in "${HOOK_ARGS[@]}"; do HOOK_FLAGS+=(-hook-arg "$o"); done
	for o in "${HOOK_ENV[@]}"; do HOOK_FLAGS+=(-hook-env "$o"); done
}
write_config() { # write_config NAME BUNDLE
	local name=$1 b=$2 args=() o
	[ -z "$ACTION_SCRIPT" ] || args+=(-action-script "$ACTION_SCRIPT")
	for o in "${CRIU_OPTS[@]}"; do args+=(-criu-opt "$o"); done
	[ "$NO_CRIU_ANNOTATION" = 0 ] || args+=(-runtime-criu-config)
	if [ -n "$HOOK_PATH" ]; then
		hook_flags
		args+=("${HOOK_FLAGS[@]}")
		[ -z "$HOOK_TIMEOUT" ] || args+=(-hook-timeout "$HOOK_TIMEOUT")
	fi
	if [ "$CONFINED" = 1 ]; then
		args+=(-confined)
		if apparmor_on; then
			apparmor_load
			args+=(-apparmor "$AA_PROFILE")
		fi
	fi
	[ -z "$SECCOMP_FILE" ] || [ "$PODMAN_SECCOMP" = 1 ] || args+=(-seccomp "$SECCOMP_FILE")
	[ "$NNP" = false ] || args+=(-no-new-privs)
	lab_config bundle -bundle "$b" -name "$name" -kind "$KIND" "${args[@]}" || die "labconfig could not write $b/config.json"
}

# ----------------------------------------------------------- rootfs content
# The kind's files (unit files, automount's maps and init.sh): labconfig
# rootfs (test/lab/labconfig/rootfs.go).
populate() { # populate ROOTFS
	local args=(-count "$COUNT")
	[ "$AUTOMOUNT_DAEMON" = 0 ] || args+=(-automount-daemon)
	[ -z "$AS_LIMIT" ] || args+=(-as-limit "$AS_LIMIT")
	[ -z "$SECUREBITS" ] || args+=(-securebits "$SECUREBITS")
	[ "$CONFINED" = 0 ] || args+=(-confined)
	lab_config rootfs -rootfs "$1" -kind "$KIND" "${args[@]}" || die "labconfig could not write the $KIND files into $1"
}

# copy_rootfs SRC DEST: a container's own rootfs. Its /usr (132 of the
# 141 MB) is hard-linked to a copy kept in the lab directory, the rest
# copied: copying it all took about 22 s a container in the TCG VM, some
# 18 of CI's minutes. Hard links need one mount (the VM binds the cache's
# rootfs and the lab directory separately), hence the lab's own copy,
# made once per rootfs (and again when provision.sh rebuilds it). Nothing
# the lab or a test does writes a file of /usr in place (they add, rename
# and link files: new entries in the container's own directories); a
# container that did would write that shared copy, never the cache.
copy_rootfs() {
	local src=$1 dest=$2 e usr
	usr=$(shared_usr "$src") || usr=
	mkdir "$dest"
	chmod --reference="$src" "$dest"
	for e in "$src"/* "$src"/.[!.]*; do
		[ -e "$e" ] || [ -L "$e" ] || continue
		if [ "${e##*/}" = usr ] && [ -n "$usr" ] && cp -al "$usr" "$dest/" 2>/dev/null; then
			continue
		fi
		rm -rf "${dest:?}/${e##*/}"
		cp -a "$e" "$dest/"
	done
}
# shared_usr SRC: the lab directory's copy of SRC/usr (made if missing or
# older than SRC), printed; fails if it cannot be made.
shared_usr() {
	local src=$1 dir stamp
	dir="$LAB_DIR/.shared-usr-$(basename "$src")"
	stamp=$(stat -c '%i %Y' "$src/.arh-lab-done" 2>/dev/null) || return 1
	mkdir -p "$LAB_DIR" || return 1
	(
		flock -w $((300 * SLOW)) 9 || exit 1
		[ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ] && exit 0
		rm -rf "$dir" "$dir.tmp"
		mkdir -p "$dir.tmp" && cp -a "$src/usr" "$dir.tmp/usr" && echo "$stamp" >"$dir.tmp/stamp" && mv "$dir.tmp" "$dir"
	) 9>"$LAB_DIR/.shared-usr.lock" || return 1
	echo "$dir/usr"
}

make_bundle() { # make_bundle NAME
	local name=$1 b
	b=$(bundle_of "$name")
	[ -d "$ROOTFS_SRC" ] || die "no rootfs at $ROOTFS_SRC: run test/lab/provision.sh"
	[ ! -e "$b" ] || die "$b exists: lab.sh down $name first"
	case $KIND in systemd | automount | plain) ;; *) die "unknown kind '$KIND' (systemd, automount, plain)" ;; esac
	[[ $COUNT =~ ^[0-9]+$ ]] || die "--count wants a number"
	case $RUNTIME in
	crun) command -v crun >/dev/null || die "--runtime crun: Debian 12's crun is not installed (provision.sh)" ;;
	crun-forky) [ -x "$CACHE/bin-forky/crun" ] || die "--runtime crun-forky: no $CACHE/bin-forky/crun (provision.sh)" ;;
	esac
	mkdir -p "$b/log" "$b/work"
	echo "$RUNTIME" >"$b/runtime"
	copy_rootfs "$ROOTFS_SRC" "$b/rootfs"
	mkdir -p "$b/rootfs/lab"
	echo "$name" >"$b/rootfs/etc/hostname"
	populate "$b/rootfs"
	save_conf "$b"
	write_config "$name" "$b"
	# Owner (Go test process) for "reap": pid and start time.
	if [ -n "${ARH_LAB_OWNER_PID:-}" ] && [ -r "/proc/$ARH_LAB_OWNER_PID/stat" ]; then
		echo "$ARH_LAB_OWNER_PID $(proc_starttime "$ARH_LAB_OWNER_PID")" >"$b/owner"
	fi
}
proc_starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# ------------------------------------------------------------ inspection
is_podman() { [ -f "$LAB_DIR/$1/podman" ]; }
is_crio() { [ -f "$LAB_DIR/$1/crio" ]; }
podman_argv() { # sets PODMAN=(podman + the lab's global flags) for container $1
	PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file)
	# --system-hooks: podman's own hooks dirs (/usr/share/containers/oci/hooks.d,
	# /etc/containers/oci/hooks.d), where a package puts its JSON.
	[ -f "$(bundle_of "$1")/system-hooks" ] || PODMAN+=(--hooks-dir "$(bundle_of "$1")/hooks.d")
}
init_pid() { # host pid of the init, empty if not running
	if is_podman "$1"; then
		local p
		p=$(timeout -s KILL $((30 * SLOW)) podman --events-backend=file inspect -f '{{.State.Pid}}' "$1" 2>/dev/null) || true
		[ "${p:-0}" = 0 ] || echo "$p"
		return 0
	fi
	local RT
	rt_argv "$1"
	"${RT[@]}" state "$(rt_id "$1")" 2>/dev/null | sed -n 's/^ *"pid" *: *\([0-9]*\),*$/\1/p'
}
runc_status() { # the OCI runtime's status of container $1 (empty: unknown to it)
	local RT
	rt_argv "$1"
	"${RT[@]}" state "$(rt_id "$1")" 2>/dev/null | sed -n 's/^ *"status" *: *"\([a-z]*\)",*$/\1/p'
}
container_pids() { # all host pids in the init's pid namespace
	local ip ns
	ip=$(init_pid "$1")
	[ -n "$ip" ] || return 0
	ns=$(readlink "/proc/$ip/ns/pid" 2>/dev/null) || return 0
	# One stat for all processes: "/proc/PID/ns/pid pid:[INO]".
	stat -c '%n %N' /proc/[0-9]*/ns/pid 2>/dev/null |
		awk -v ns="$ns" 'index($0, "-> \x27" ns "\x27") { split($1, f, "/"); print f[3] }' | sort -n
	return 0
}
proc_line() { # pid state wchan cmdline
	local p=$1 st wchan cmd
	st=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$p/stat" 2>/dev/null) || return 0
	wchan=$(cat "/proc/$p/wchan" 2>/dev/null || echo ?)
	[ -n "$wchan" ] && [ "$wchan" != 0 ] || wchan=-
	cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)
	printf '%7s %s %-22s %s\n' "$p" "$st" "$wchan" "$cmd"
}
autofs_waiters() {
	local p
	for p in $(container_pids "$1"); do
		[ "$(cat "/proc/$p/wchan" 2>/dev/null)" = autofs_wait ] && echo "$p"
	done
	return 0
}
print_waiters() { # to stderr
	local w p
	w=$(autofs_waiters "$1")
	if [ -z "$w" ]; then
		say "no process of $1 in autofs_wait"
	else
		say "processes of $1 in autofs_wait:"
		for p in $w; do proc_line "$p" >&2; done
	fi
}
autofs_mounts() { # autofs mounts of the container and the mounts at or below them
	local ip
	ip=$(init_pid "$1")
	[ -n "$ip" ] || die "$1 is not running"
	# mountinfo: id parent major:minor root mountpoint options ... - fstype source superoptions
	awk 'FNR == NR { if ($0 ~ / - autofs /) a[$5] = 1; next }
	     { split($0, f, " - "); split(f[2], t, " "); under = 0
	       for (m in a) if ($5 == m || index($5, m "/") == 1) under = 1
	       if (under) printf "%-24s %-8s dev=%-7s %s\n", $5, t[1], $3, (t[1] == "autofs" ? t[3] : "") }' \
		"/proc/$ip/mountinfo" "/proc/$ip/mountinfo"
}

exec_argv() { # sets EXEC=(runc exec NAME) or (podman exec NAME) for container $1
	if is_podman "$1"; then
		EXEC=(podman --events-backend=file exec "$1")
	else
		local RT
		rt_argv "$1"
		EXEC=("${RT[@]}" exec "$(rt_id "$1")")
	fi
}

wait_ready() { # wait_ready NAME KIND
	local name=$1 deadline s ip n want EXEC
	exec_argv "$name"
	deadline=$(($(now_ms) + 90000 * SLOW))
	case $2 in
	systemd)
		while :; do
			s=$(timeout -s KILL $((5 * SLOW)) "${EXEC[@]}" systemctl is-system-running </dev/null 2>/dev/null || true)
			case $s in running | degraded) break ;; esac
			[ "$(now_ms)" -lt "$deadline" ] || die "systemd in $name not up after $((90 * SLOW)) s (state '$s')"
			sleep 0.3
		done
		[ "$s" = running ] || {
			say "warning: systemd in $name is '$s'; failed units:"
			timeout -s KILL $((5 * SLOW)) "${EXEC[@]}" systemctl --failed --no-pager </dev/null >&2 || true
		}
		want=$(wc -l <"$(bundle_of "$name")/rootfs/lab/automounts")
		;;
	automount) want=$((4 + COUNT)) ;; # direct1 direct2 dN dmulti + /ind
	plain) return 0 ;;
	esac
	ip=$(init_pid "$name")
	while :; do
		n=$(grep -c ' - autofs ' "/proc/$ip/mountinfo" || true)
		[ "$n" -lt "$want" ] || break
		[ "$(now_ms)" -lt "$deadline" ] || die "$name has $n autofs mounts, want $want, after $((90 * SLOW)) s"
		sleep 0.2
	done
	say "$name ready: $n autofs mounts"
}

trigger() { # trigger NAME KIND: mount what must be mounted at checkpoint time
	local name=$1 EXEC
	exec_argv "$name"
	case $2 in
	systemd)
		timeout -s KILL $((10 * SLOW)) "${EXEC[@]}" sh -c 'echo state-before-checkpoint >/srv/a/state && cat /srv/a/state' </dev/null >/dev/null ||
			die "triggering /srv/a in $name failed"
		say "$name: triggered /srv/a, wrote /srv/a/state"
		;;
	automount)
		timeout -s KILL $((10 * SLOW)) "${EXEC[@]}" sh -c 'echo state-before-checkpoint >/ind/k1/state && cat /ind/k1/state && ls /ind/multi >/dev/null' </dev/null >/dev/null ||
			die "triggering /ind/k1 and /ind/multi in $name failed"
		say "$name: triggered /ind/k1 (wrote /ind/k1/state) and /ind/multi (offset /ind/multi/sub untriggered)"
		;;
	esac
}

# ------------------------------------------------------------- commands
cmd_up() {
	local name=$1 b
	shift
	KIND=${1:-}
	shift || true
	parse_opts "$@"
	check_name "$name"
	b=$(bundle_of "$name")
	make_bundle "$name"
	rm -f "$b/criu-stock"
	if [ "$CRIU_KIND" = stock ]; then
		[ -x "$CACHE/bin-stock/criu" ] || die "--criu stock: no $CACHE/bin-stock/criu (provision.sh installs Debian 12's criu)"
		touch "$b/criu-stock"
	fi
	say "bundle $b ($KIND) created in $(fmt_ms $(($(now_ms) - T0)))s"
	local RT
	rt_argv "$name"
	if ! "${RT[@]}" run --detach --bundle "$b" --pid-file "$b/init.pid" "$name" </dev/null >"$b/log/run.log" 2>&1; then
		cat "$b/log/run.log" >&2
		die "$RUNTIME run $name failed"
	fi
	wait_ready "$name" "$KIND"
	[ "$TRIGGER" = 0 ] || trigger "$name" "$KIND"
	took "up $name"
}

cmd_podman_up() {
	local name=$1 b ann=() PODMAN
	shift
	KIND=systemd PODMAN_SECCOMP=1
	parse_opts "$@"
	check_name "$name"
	command -v podman >/dev/null || die "podman is not installed (see provision.sh warnings)"
	[ "$RUNTIME" = runc ] || die "podman-up: the lab's podman runs runc (--runtime is for up)"
	[ "$NO_CRIU_ANNOTATION" = 0 ] || die "podman-up: --no-criu-annotation is for up"
	b=$(bundle_of "$name")
	make_bundle "$name"
	touch "$b/podman"
	rm -f "$b/system-hooks"
	[ "$SYSTEM_HOOKS" = 0 ] || touch "$b/system-hooks"
	mkdir -p "$b/hooks.d"
	if [ -n "$ACTION_SCRIPT" ] || [ ${#CRIU_OPTS[@]} -gt 0 ]; then
		ann=(--annotation "org.criu.config=$b/criu.conf")
	else
		ann=(--annotation "org.criu.config=")
	fi
	if [ -n "${ARH_LAB_HOOKS_JSON:-}" ]; then
		# A given hooks.d file (the project's shipped one, say) as is.
		cp "$ARH_LAB_HOOKS_JSON" "$b/hooks.d/"
	elif [ -n "$HOOK_PATH" ]; then
		hook_flags
		lab_config podman-hook -out "$b/hooks.d/arh-lab.json" "${HOOK_FLAGS[@]}" || die "labconfig could not write $b/hooks.d/arh-lab.json"
	fi
	podman_argv "$name"
	# podman's default AppArmor profile denies every mount: systemd's
	# automount units then fail ("srv-a.automount failed", no autofs
	# mount at all; seen on Debian 12's kernel), and so would automount.
	# A container with autofs needs a profile that allows mount: the
	# lab's. Seccomp stays podman's default profile.
	local opts=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
	[ "$CONFINED" = 0 ] || opts=(--ulimit nofile=1024:2048 --ulimit nproc=3000:4000 --oom-score-adj 500)
	if apparmor_on; then
		apparmor_load
		opts+=(--security-opt "apparmor=$AA_PROFILE")
	fi
	local argv
	case $KIND in
	systemd)
		opts+=(--systemd=always)
		cgroup_v2 || opts+=(--env "$LEGACY_CGROUP_CMDLINE")
		argv=(/lib/systemd/systemd)
		;;
	automount) argv=(/bin/sh /lab/init.sh) ;;
	*) die "podman-up: kind $KIND (systemd or automount)" ;;
	esac
	# --tmpfs-run: /run given at create time. podman 4.3 strips
	# /run/.containerenv from an imported checkpoint's spec and, as that
	# spec holds the /run tmpfs of --systemd=always, never mounts it again:
	# CRIU then has no mapping for the dumped bind mount ("No mapping for
	# N:(null) mountpoint"). With /run in the create-time spec podman makes
	# no .containerenv at all, at run or at import (fixed in podman 4.6).
	[ "$TMPFS_RUN" = 0 ] || opts+=(--tmpfs /run)
	[ -z "$SECCOMP_FILE" ] || opts+=(--security-opt "seccomp=$SECCOMP_FILE")
	local from=(--rootfs "$b/rootfs")
	if [ -n "$RUN_IMAGE" ]; then
		# An image (cmd_image): podman restores an exported checkpoint
		# (--import) only for a container made from an image ("repository
		# name must have at least one component" for one made with
		# --rootfs, podman 4.3).
		from=("$RUN_IMAGE")
	fi
	if ! timeout -s KILL $((120 * SLOW)) "${PODMAN[@]}" run -d --name "$name" --network none \
		--device /dev/autofs --cap-add SYS_ADMIN "${ann[@]}" "${opts[@]}" \
		"${from[@]}" "${argv[@]}" </dev/null >"$b/log/run.log" 2>&1; then
		cat "$b/log/run.log" >&2
		die "podman run $name failed"
	fi
	wait_ready "$name" "$KIND"
	[ "$TRIGGER" = 0 ] || trigger "$name" "$KIND"
	took "podman-up $name"
}

# ------------------------------------------------------------------ CRI-O
# The lab's CRI-O (crio-build.sh builds it from CRI-O's Go module): one
# daemon at a time, its configuration, socket, pid and log in $CRIO_RUN,
# images and containers in podman's storage (so that "image" serves both),
# runc (Debian 12's) with the lab's CRIU first in conmon's PATH, cgroupfs,
# CRIU support on, the hooks in CRI-O's default hooks_dir
# (/usr/share/containers/oci/hooks.d), where a package or the node
# installer puts the project's JSON.
crio_running() { [ -f "$CRIO_RUN/crio.pid" ] && kill -0 "$(cat "$CRIO_RUN/crio.pid")" 2>/dev/null; }
crictl_argv() {
	CRICTL=("$CRIO_BIN/crictl" --config "$CRIO_RUN/crictl.yaml" --runtime-endpoint "unix://$CRIO_RUN/crio.sock" --timeout "$((120 * SLOW))s")
}
cmd_crio() {
	local what=${1:-}
	shift || true
	parse_opts "$@"
	case $what in
	start) crio_start ;;
	stop) crio_stop ;;
	*) die "crio start --image IMG | crio stop" ;;
	esac
	took "crio $what"
}
crio_start() {
	[ -x "$CRIO_BIN/crio" ] || die "no CRI-O in $CRIO_BIN (test/lab/crio-build.sh builds it)"
	[ -n "$RUN_IMAGE" ] || die "crio start: --image IMG (made by image; CRI-O's pause image, never run)"
	! crio_running || die "the lab's CRI-O runs already (pid $(cat "$CRIO_RUN/crio.pid"))"
	rm -rf "$CRIO_RUN"
	mkdir -p "$CRIO_RUN/cni" "$CRIO_RUN/conf.d" "$CRIO_RUN/exits" "$CRIO_RUN/pods"
	: >"$CRIO_RUN/crictl.yaml"
	lab_config crio-conf -out "$CRIO_RUN/crio.conf" -run "$CRIO_RUN" -bin "$CRIO_BIN" -runc "$(command -v runc)" \
		-conmon "$(command -v conmon)" -path "$PATH" -image "$RUN_IMAGE" || die "labconfig could not write $CRIO_RUN/crio.conf"
	# setsid: the daemon outlives this script; crio stop ends it.
	PATH=$PATH setsid "$CRIO_BIN/crio" --config "$CRIO_RUN/crio.conf" --config-dir "$CRIO_RUN/conf.d" \
		</dev/null >"$CRIO_RUN/crio.log" 2>&1 &
	echo $! >"$CRIO_RUN/crio.pid"
	local deadline CRICTL
	deadline=$(($(now_ms) + 90000 * SLOW))
	crictl_argv
	until "${CRICTL[@]}" version >/dev/null 2>&1; do
		if ! crio_running || [ "$(now_ms)" -ge "$deadline" ]; then
			tail -30 "$CRIO_RUN/crio.log" >&2
			crio_stop
			die "CRI-O did not answer within $((90 * SLOW)) s (log above)"
		fi
		sleep 0.5
	done
	say "$("$CRIO_BIN/crio" --version 2>/dev/null | head -1) runs (pid $(cat "$CRIO_RUN/crio.pid"), log $CRIO_RUN/crio.log)"
}
crio_stop() {
	local pid i
	[ -f "$CRIO_RUN/crio.pid" ] || return 0
	pid=$(cat "$CRIO_RUN/crio.pid")
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq $((100 * SLOW))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$CRIO_RUN/crio.pid"
}
# crio_ctr_json NAME IMAGE OUT: the CRI container config of NAME's
# container from IMAGE (an image, or a checkpoint archive to restore),
# with the options saved in its bundle, written to OUT.
crio_ctr_json() {
	local args=()
	[ -z "$SECCOMP_FILE" ] || args+=(-seccomp "$SECCOMP_FILE")
	! apparmor_on || args+=(-apparmor "$AA_PROFILE")
	lab_config crio-ctr -out "$3" -name "$1" -bundle "$(bundle_of "$1")" -kind "$KIND" -image "$2" "${args[@]}" ||
		die "labconfig could not write $3"
}

cmd_crio_up() {
	local name=$1 b CRICTL pod ctr
	shift
	KIND=systemd PODMAN_SECCOMP=1
	parse_opts "$@"
	check_name "$name"
	crio_running || die "the lab's CRI-O does not run (lab.sh crio start)"
	[ -n "$RUN_IMAGE" ] || die "crio-up: --image IMG (made by image)"
	[ "$RUNTIME" = runc ] || die "crio-up: the lab's CRI-O runs runc"
	b=$(bundle_of "$name")
	make_bundle "$name"
	touch "$b/crio"
	# As for podman-up: a container profile that allows mounting autofs.
	! apparmor_on || apparmor_load
	mkdir -p "$b/log/crio"
	lab_config crio-pod -out "$b/crio-pod.json" -name "$name" -bundle "$b" || die "labconfig could not write $b/crio-pod.json"
	crio_ctr_json "$name" "$RUN_IMAGE" "$b/crio-ctr.json"
	crictl_argv
	pod=$("${CRICTL[@]}" runp "$b/crio-pod.json" 2>"$b/log/run.log") || { cat "$b/log/run.log" >&2; die "crictl runp $name failed"; }
	echo "$pod" >"$b/crio-pod"
	ctr=$("${CRICTL[@]}" create "$pod" "$b/crio-ctr.json" "$b/crio-pod.json" 2>>"$b/log/run.log") ||
		{ cat "$b/log/run.log" >&2; die "crictl create in $name failed"; }
	echo "$ctr" >"$b/crio-ctr"
	"${CRICTL[@]}" start "$ctr" >>"$b/log/run.log" 2>&1 || { cat "$b/log/run.log" >&2; die "crictl start $name failed"; }
	say "$name runs in CRI-O: pod $pod, container $ctr"
	wait_ready "$name" "$KIND"
	[ "$TRIGGER" = 0 ] || trigger "$name" "$KIND"
	took "crio-up $name"
}

# crio_checkpoint NAME: crictl checkpoint --export into BUNDLE/checkpoint.tar,
# then the container is removed (its pod stays): what the kubelet's
# checkpoint API does, and a migration's first half.
crio_checkpoint() {
	local name=$1 b ctr CRICTL
	b=$(bundle_of "$name")
	ctr=$(rt_id "$name")
	crictl_argv
	rm -f "$b/checkpoint.tar"
	if ! timeout -s KILL $((180 * SLOW)) "${CRICTL[@]}" checkpoint --export="$b/checkpoint.tar" "$ctr" </dev/null >"$b/log/checkpoint.log" 2>&1; then
		cat "$b/log/checkpoint.log" >&2
		cp /var/lib/containers/storage/overlay-containers/"$ctr"/userdata/dump.log "$b/log/criu-dump.log" 2>/dev/null &&
			{ say "last lines of CRIU's log (copied to $b/log/criu-dump.log):"; tail -15 "$b/log/criu-dump.log" >&2; }
		die "crictl checkpoint $name failed"
	fi
	"${CRICTL[@]}" rm -f "$ctr" >/dev/null 2>&1 || die "crictl rm $name after its checkpoint failed"
	rm -f "$b/crio-ctr"
	say "checkpointed $name to $b/checkpoint.tar ($(du -h "$b/checkpoint.tar" | cut -f1)) and removed the container"
}

# crio_restore NAME: a new container in NAME's pod from BUNDLE/checkpoint.tar,
# as the kubelet restores one (create with the archive as image, start).
crio_restore() {
	local name=$1 b ctr CRICTL
	b=$(bundle_of "$name")
	[ -f "$b/checkpoint.tar" ] || die "no checkpoint archive $b/checkpoint.tar"
	[ ! -f "$b/crio-ctr" ] || die "$name still has a container in CRI-O"
	load_conf "$b"
	crio_ctr_json "$name" "$b/checkpoint.tar" "$b/crio-restore.json"
	crictl_argv
	ctr=$(timeout -s KILL $((180 * SLOW)) "${CRICTL[@]}" create "$(cat "$b/crio-pod")" "$b/crio-restore.json" "$b/crio-pod.json" </dev/null 2>"$b/log/restore.log") ||
		{ cat "$b/log/restore.log" >&2; die "crictl create from $b/checkpoint.tar failed"; }
	echo "$ctr" >"$b/crio-ctr"
	local rc=0
	timeout -s KILL $((180 * SLOW)) "${CRICTL[@]}" start "$ctr" </dev/null >>"$b/log/restore.log" 2>&1 || rc=$?
	# No CRIU log of the restore: CRI-O removes it once the restore is
	# done, and the container with it when the restore fails.
	if [ $rc != 0 ]; then
		cat "$b/log/restore.log" >&2
		die "crictl start (the restore of) $name failed"
	fi
	say "restored $name in CRI-O: container $ctr, init pid $(init_pid "$name")"
}

crio_remove() { # crio_remove NAME: its container and pod, if CRI-O runs
	local b CRICTL
	b=$(bundle_of "$1")
	crio_running || return 0
	crictl_argv
	[ ! -f "$b/crio-ctr" ] || timeout -s KILL $((60 * SLOW)) "${CRICTL[@]}" rm -f "$(cat "$b/crio-ctr")" >/dev/null 2>&1 || true
	rm -f "$b/crio-ctr"
	if [ -f "$b/crio-pod" ]; then
		timeout -s KILL $((60 * SLOW)) "${CRICTL[@]}" stopp "$(cat "$b/crio-pod")" >/dev/null 2>&1 || true
		timeout -s KILL $((60 * SLOW)) "${CRICTL[@]}" rmp -f "$(cat "$b/crio-pod")" >/dev/null 2>&1 || true
		rm -f "$b/crio-pod"
	fi
}

cmd_image() {
	local name=$1 b img
	shift
	KIND=systemd
	parse_opts "$@"
	check_name "$name"
	command -v podman >/dev/null || die "podman is not installed (see provision.sh warnings)"
	b=$(bundle_of "$name")
	make_bundle "$name"
	img="localhost/$name:lab"
	# The image's command is the kind's init: CRI-O restores a container
	# with the command of its image, not the one it was created with.
	local cmd
	case $KIND in
	systemd) cmd='CMD=["/lib/systemd/systemd"]' ;;
	automount) cmd='CMD=["/bin/sh","/lab/init.sh"]' ;;
	*) die "image: kind $KIND (systemd or automount)" ;;
	esac
	if ! tar -C "$b/rootfs" -c . | timeout -s KILL $((120 * SLOW)) podman --events-backend=file import --change "$cmd" - "$img" >"$b/log/import.log" 2>&1; then
		cat "$b/log/import.log" >&2
		rm -rf "$b"
		die "podman import of $name's rootfs failed"
	fi
	rm -rf "$b"
	say "image $img made"
	took "image $name"
}

cmd_bundle() {
	local name=$1
	shift
	KIND=${1:-}
	shift || true
	parse_opts "$@"
	check_name "$name"
	make_bundle "$name"
	echo "$(bundle_of "$name")"
	took "bundle $name"
}

cmd_wire() {
	local name=$1 b
	shift
	parse_opts "$@"
	check_name "$name"
	b=$(bundle_of "$name")
	[ "$WIRING_GIVEN" = 1 ] || UNWIRE=1
	load_conf "$b"
	save_conf "$b"
	write_config "$name" "$b"
	say "$name wired: action-script='${ACTION_SCRIPT}' hook='${HOOK_PATH}' (${HOOK_STAGE})"
}

cmd_exec() {
	local name=$1 start rc
	shift
	parse_opts "$@"
	check_name "$name"
	[ ${#REST[@]} -gt 0 ] || die "exec: no command"
	start=$(now_ms)
	rc=0
	# --foreground: only runc exec is killed, not timeout itself (no "Killed"
	# noise); the process inside the container stays, see kill-waiters.
	exec_argv "$name"
	TIMEOUT=$((TIMEOUT * SLOW))
	timeout --foreground -s KILL "$TIMEOUT" "${EXEC[@]}" "${REST[@]}" </dev/null || rc=$?
	if [ $rc = 137 ] && [ $(($(now_ms) - start)) -ge $((TIMEOUT * 1000 - 100)) ]; then
		say "TIMEOUT: '${REST[*]}' in $name did not finish within ${TIMEOUT}s (runc exec killed)"
		print_waiters "$name"
		took "exec $name"
		exit 124
	fi
	took "exec $name"
	exit $rc
}

with_criu() { # with_criu NAME CMD...: CMD with the container's CRIU first in PATH
	local name=$1
	shift
	if [ -f "$(bundle_of "$name")/criu-stock" ]; then
		PATH="$CACHE/bin-stock:$PATH" "$@"
	elif [ "$(bundle_runtime "$name")" = crun-forky ]; then
		PATH="$CACHE/bin-forky:$PATH" "$@"
	else
		"$@"
	fi
}

cmd_checkpoint() {
	local name=$1 b
	shift
	parse_opts "$@"
	check_name "$name"
	b=$(bundle_of "$name")
	[ -d "$b" ] || die "no bundle $b"
	if is_crio "$name"; then
		crio_checkpoint "$name"
		took "checkpoint $name (CRI-O)"
		return 0
	fi
	if is_podman "$name"; then
		local extra_p=() PODMAN
		podman_argv "$name"
		[ "$LEAVE_RUNNING" = 0 ] || extra_p=(--leave-running)
		[ -z "$EXPORT" ] || extra_p+=(--export "$EXPORT")
		timeout -s KILL $((120 * SLOW)) "${PODMAN[@]}" container checkpoint "${extra_p[@]}" "$name" </dev/null >"$b/log/checkpoint.log" 2>&1 ||
			{ cat "$b/log/checkpoint.log" >&2; die "podman container checkpoint $name failed"; }
		if [ -n "$EXPORT" ]; then
			# A migration: the container is gone from this host; the
			# archive alone brings it back (restore --import).
			timeout -s KILL $((60 * SLOW)) "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || die "podman rm $name after the export failed"
			say "exported $name to $EXPORT ($(du -h "$EXPORT" | cut -f1)) and removed it"
		fi
		took "checkpoint $name (podman)"
		return 0
	fi
	IMAGE=$(abspath "${IMAGE:-$b/image}")
	rm -rf "$IMAGE"
	mkdir -p "$IMAGE" "$b/work"
	local extra=() RT
	rt_argv "$name"
	[ "$LEAVE_RUNNING" = 0 ] || extra+=(--leave-running)
	say "checkpoint $name with $(with_criu "$name" criu --version 2>&1 | head -1)"
	if ! with_criu "$name" timeout -s KILL $((120 * SLOW)) "${RT[@]}" checkpoint --image-path "$IMAGE" --work-path "$b/work" "${extra[@]}" "$name" </dev/null >"$b/log/checkpoint.log" 2>&1; then
		cat "$b/log/checkpoint.log" >&2
		say "last lines of $b/work/dump.log:"
		tail -15 "$b/work/dump.log" >&2 2>/dev/null || true
		die "${RT[*]: -1} checkpoint $name failed"
	fi
	say "checkpoint image: $IMAGE ($(du -sh "$IMAGE" | cut -f1)), CRIU log: $b/work/dump.log"
	took "checkpoint $name"
}

cmd_restore() {
	local name=$1 b
	shift
	parse_opts "$@"
	check_name "$name"
	b=$(bundle_of "$name")
	if is_crio "$name"; then
		[ "$WIRING_GIVEN" = 0 ] || die "CRI-O restores with the hooks of its hooks_dir"
		crio_restore "$name"
		took "restore $name (CRI-O)"
		return 0
	fi
	if is_podman "$name"; then
		[ "$WIRING_GIVEN" = 0 ] || die "podman restores with the hooks and annotations given at podman-up"
		local PODMAN
		podman_argv "$name"
		local what=("$name")
		[ -z "$IMPORT" ] || what=(--import "$IMPORT")
		rm -f "$b/log/criu-restore.log"
		# --keep: podman removes CRIU's log of a restore that worked
		# otherwise.
		timeout -s KILL $((120 * SLOW)) "${PODMAN[@]}" container restore --keep "${what[@]}" </dev/null >"$b/log/restore.log" 2>&1 ||
			{
				cat "$b/log/restore.log" >&2
				local clog
				clog=$(sed -n 's/^log file: //p' "$b/log/restore.log" | head -1)
				if [ -n "$clog" ] && [ -f "$clog" ]; then
					cp "$clog" "$b/log/criu-restore.log"
					say "last lines of CRIU's $clog (copied to $b/log/criu-restore.log):"
					tail -25 "$clog" >&2
				fi
				die "podman container restore ${what[*]} failed"
			}
		# CRIU's log of the restore, in the container's static dir.
		local sd
		sd=$(timeout -s KILL $((30 * SLOW)) "${PODMAN[@]}" container inspect -f '{{.StaticDir}}' "$name" 2>/dev/null) || sd=""
		[ -z "$sd" ] || [ ! -f "$sd/restore.log" ] || cp "$sd/restore.log" "$b/log/criu-restore.log"
		say "restored $name (podman): init pid $(init_pid "$name")"
		took "restore $name (podman)"
		return 0
	fi
	load_conf "$b"
	if [ "$WIRING_GIVEN" = 1 ] || [ "$UNWIRE" = 1 ]; then
		save_conf "$b"
		write_config "$name" "$b"
	fi
	IMAGE=$(abspath "${IMAGE:-$b/image}")
	[ -f "$IMAGE/inventory.img" ] || die "no checkpoint image in $IMAGE"
	if [ -n "$(runc_status "$name")" ]; then die "$name still exists in runc (status $(runc_status "$name")): down it or checkpoint it first"; fi
	mkdir -p "$b/work"
	local RT
	rt_argv "$name"
	say "restore $name: action-script='${ACTION_SCRIPT}' hook='${HOOK_PATH}'"
	say "restore $name with $(with_criu "$name" criu --version 2>&1 | head -1)"
	if ! (cd "$b" && with_criu "$name" timeout -s KILL $((120 * SLOW)) "${RT[@]}" restore --detach --image-path "$IMAGE" --work-path "$b/work" --bundle "$b" --pid-file "$b/init.pid" "$name" </dev/null >"$b/log/restore.log" 2>&1); then
		cat "$b/log/restore.log" >&2
		say "last lines of $b/work/restore.log:"
		tail -15 "$b/work/restore.log" >&2 2>/dev/null || true
		die "${RT[*]: -1} restore $name failed"
	fi
	say "restored $name: init pid $(init_pid "$name"), CRIU log: $b/work/restore.log"
	took "restore $name"
}

cgroup_cleanup() { # remove /sys/fs/cgroup/*/arh-lab/NAME trees (children first)
	local d
	for d in /sys/fs/cgroup/*/arh-lab/"$1" /sys/fs/cgroup/unified/arh-lab/"$1" /sys/fs/cgroup/arh-lab/"$1"; do
		[ -d "$d" ] || continue
		find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
}

stop_container() { # runc delete -f NAME and its cgroups; keeps the bundle
	local name=$1 i
	if is_crio "$name"; then
		crio_remove "$name"
		cgroup_cleanup "$name"
		return 0
	fi
	if is_podman "$name"; then
		local PODMAN
		podman_argv "$name"
		timeout -s KILL $((60 * SLOW)) "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true
		return 0
	fi
	local RT
	rt_argv "$name"
	if [ -n "$(runc_status "$name")" ]; then
		timeout -s KILL $((30 * SLOW)) "${RT[@]}" delete -f "$name" >/dev/null 2>&1 || true
		for i in $(seq 50); do [ -z "$(runc_status "$name")" ] && break; sleep 0.1; done
		if [ -n "$(runc_status "$name")" ]; then
			timeout -s KILL $((10 * SLOW)) "${RT[@]}" kill --all "$name" KILL >/dev/null 2>&1 || true
			sleep 0.5
			timeout -s KILL $((30 * SLOW)) "${RT[@]}" delete -f "$name" >/dev/null 2>&1 || true
		fi
		[ -z "$(runc_status "$name")" ] || say "warning: ${RT[*]: -1} still knows $name: $(runc_status "$name")"
	fi
	cgroup_cleanup "$name"
}

cmd_stop() {
	check_name "$1"
	stop_container "$1"
	took "stop $1"
}

cmd_down() {
	local name=$1 b pid
	check_name "$name"
	b=$(bundle_of "$name")
	pid=$(init_pid "$name" || true)
	stop_container "$name"
	# The hook keeps a record per container init under /run until its next
	# run finds the init gone: put the host back now.
	if [ -n "$pid" ]; then
		rm -f "$HOOK_STATE_DIR/$pid"-*.json "$HOOK_STATE_DIR/$pid"-*.lock
	fi
	# A restore killed midway leaves runc's state directory behind with
	# CRIU's root still mounted in it; runc then refuses the name forever.
	local rs RT
	rs=$(rt_state_dir "$name")
	rt_argv "$name"
	if [ -d "$rs" ] && ! "${RT[@]}" state "$name" >/dev/null 2>&1; then
		awk -v b="$rs" '$5 == b || index($5, b "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
		rm -rf --one-file-system "$rs"
	fi
	if [ -d "$b" ]; then
		# Never rm -rf across a mount point.
		if awk -v b="$b" '$5 == b || index($5, b "/") == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
			awk -v b="$b" '$5 == b || index($5, b "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
		fi
		rm -rf --one-file-system "$b"
	fi
	took "down $name"
}

cmd_reap() { # down bundles whose owner process (recorded by up) is gone
	local d n pid st
	for d in "$LAB_DIR"/arh-lab-*; do
		[ -f "$d/owner" ] || continue
		read -r pid st <"$d/owner" || continue
		[ -n "$pid" ] || continue
		if [ "$(proc_starttime "$pid")" != "$st" ]; then
			n=${d##*/}
			say "reaping $n (owner process $pid is gone)"
			cmd_down "$n"
		fi
	done
	return 0
}

cmd_list() {
	local d
	for d in "$LAB_DIR"/arh-lab-*; do
		[ -d "$d" ] || continue
		local n=${d##*/} k=""
		k=$(sed -n 's/^declare -g KIND="\(.*\)"$/\1/p' "$d/lab.conf" 2>/dev/null)
		printf '%-30s %-10s %s\n' "$n" "${k:-?}" "$(runc_status "$n")"
	done
	runc list 2>/dev/null | awk 'NR == 1 || $1 ~ /^arh-lab-/'
}

[ $# -ge 1 ] || usage
[ "$(id -u)" = 0 ] || die "must run as root"
cmd=$1
shift
case $cmd in
up) [ $# -ge 2 ] || usage; cmd_up "$@" ;;
bundle) [ $# -ge 2 ] || usage; cmd_bundle "$@" ;;
podman-up) [ $# -ge 1 ] || usage; cmd_podman_up "$@" ;;
crio-up) [ $# -ge 1 ] || usage; cmd_crio_up "$@" ;;
crio) cmd_crio "$@" ;;
image) [ $# -ge 1 ] || usage; cmd_image "$@" ;;
rmi)
	check_name "${1:-}"
	timeout -s KILL $((60 * SLOW)) podman --events-backend=file rmi -f "localhost/$1:lab" >/dev/null 2>&1 || true
	;;
wire) [ $# -ge 1 ] || usage; cmd_wire "$@" ;;
exec) [ $# -ge 2 ] || usage; cmd_exec "$@" ;;
checkpoint) [ $# -ge 1 ] || usage; cmd_checkpoint "$@" ;;
restore) [ $# -ge 1 ] || usage; cmd_restore "$@" ;;
down) [ $# -ge 1 ] || usage; cmd_down "$1" ;;
stop) [ $# -ge 1 ] || usage; cmd_stop "$1" ;;
pid) check_name "${1:-}"; p=$(init_pid "$1"); [ -n "$p" ] || die "$1 is not running"; echo "$p" ;;
pids) check_name "${1:-}"; container_pids "$1" ;;
ps) check_name "${1:-}"; for p in $(container_pids "$1"); do proc_line "$p"; done ;;
waiters) check_name "${1:-}"; autofs_waiters "$1" ;;
kill-waiters)
	check_name "${1:-}"
	for p in $(autofs_waiters "$1"); do proc_line "$p" >&2; kill -KILL "$p" 2>/dev/null || true; done
	took "kill-waiters $1"
	;;
mounts) check_name "${1:-}"; autofs_mounts "$1" ;;
status) check_name "${1:-}"; rt_argv "$1"; "${RT[@]}" state "$(rt_id "$1")" ;;
list) cmd_list ;;
reap) cmd_reap ;;
-h | --help | help) usage ;;
*) die "unknown command $cmd (lab.sh --help)" ;;
esac
