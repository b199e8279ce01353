package cstart

// Two steps a multithreaded process cannot take, which the door's
// children that live in a container take here, in one constructor that
// runs before the Go runtime starts its threads (and so before any Go
// code of theirs):
//
//  1. Join the container's time namespace (the kernel lets only a
//     single-threaded process join one: EUSERS), for the spawner's
//     container stage, which forks the respawned daemon: CRIU gives a
//     restored container one. Only when door.EnvEnterTimeNS is set
//     (door.Entry.TimeNS).
//  2. Enter the container (door.Spec.Enter; only when door.EnvEnter is
//     set): die with the thread that started us, not dumpable, join the
//     container's cgroups, its mount namespace and root, then its pid
//     namespace, and fork. The child, in a session of its own, goes on to
//     the Go runtime and the role; the parent stays outside the container's pid namespace and
//     only waits for it, and exits as it did. So no process of ours is
//     ever seen in the container's pid namespace with the host's root,
//     mount namespace or an fd of the host's /proc: the child is born
//     inside, and nothing of the host is open in it but the door's
//     protocol fds. runc's nsexec takes the same way into a pid
//     namespace.
//
// Errors go to stderr as the door's final line would ({"error":...})
// with exit status 121. Success of step 2 is told to the Go side by
// overwriting the variable's value with "done" in place (Go reads the
// environment from the process's initial stack, not from the C library's
// copy: setenv would not reach it).

/*
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define ARH_MAX_ENTER_FDS 40

static void arh_fail(const char *what) {
	dprintf(2, "{\"error\":\"%s: %s\"}\n", what, strerror(errno));
	_exit(121);
}

static void arh_join_timens(void) {
	const char *v = getenv("_AUTOFS_RESTORE_HOOK_TIMENS_FD");
	if (v == NULL)
		return;
	int fd = atoi(v);
	if (fd < 3 || setns(fd, CLONE_NEWTIME) != 0)
		arh_fail("join the container's time namespace");
	close(fd);
	unsetenv("_AUTOFS_RESTORE_HOOK_TIMENS_FD");
}

// arh_fds parses "A,B,C,..." (fds, each at least 3) into fds; it returns
// how many, or -1.
static int arh_fds(const char *v, int *fds, int max) {
	int n = 0;
	while (*v != '\0') {
		char *end;
		long fd = strtol(v, &end, 10);
		if (end == v || fd < 3 || fd > 1 << 20 || n == max || (*end != ',' && *end != '\0'))
			return -1;
		fds[n++] = (int)fd;
		v = *end == ',' ? end + 1 : end;
	}
	return n;
}

// arh_parent_gone tells whether the process at the other end of fd is
// gone (fd: the door's protocol socket, or the fork's liveness pipe).
static int arh_parent_gone(int fd) {
	struct pollfd p = {.fd = fd, .events = 0};
	return poll(&p, 1, 0) != 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// arh_drop_caps drops the capabilities of the mask in
// _AUTOFS_RESTORE_HOOK_ENTER_DROP (door.Entry.DropAfter) from every set
// of this process: those entering took that the child must not have.
static void arh_drop_caps(void) {
	const char *v = getenv("_AUTOFS_RESTORE_HOOK_ENTER_DROP");
	if (v == NULL)
		return;
	char *end;
	errno = 0;
	unsigned long long mask = strtoull(v, &end, 10);
	// Digits only, and only what entering takes: CAP_SETPCAP,
	// CAP_SYS_CHROOT, CAP_SYS_ADMIN.
	const unsigned long long entering = (1ULL << CAP_SETPCAP) | (1ULL << CAP_SYS_CHROOT) | (1ULL << CAP_SYS_ADMIN);
	if (errno != 0 || end == v || *end != '\0' || v[0] < '0' || v[0] > '9' || mask == 0 || (mask & ~entering) != 0) {
		errno = EINVAL;
		arh_fail("enter the container: bad capability mask");
	}
	for (int c = 0; c < 64; c++) {
		if (c == CAP_SETPCAP || (mask & (1ULL << c)) == 0)
			continue;
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL)
			arh_fail("drop the capabilities entering took from the bounding set");
	}
	if ((mask & (1ULL << CAP_SETPCAP)) != 0 && prctl(PR_CAPBSET_DROP, CAP_SETPCAP, 0, 0, 0) != 0)
		arh_fail("drop CAP_SETPCAP from the bounding set");
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data) != 0)
		arh_fail("capget");
	for (int i = 0; i < 2; i++) {
		__u32 keep = ~(__u32)(mask >> (32 * i));
		data[i].effective &= keep;
		data[i].permitted &= keep;
		data[i].inheritable &= keep;
	}
	if (syscall(SYS_capset, &hdr, data) != 0)
		arh_fail("drop the capabilities entering took");
}

static void arh_enter(void) {
	char *v = getenv("_AUTOFS_RESTORE_HOOK_ENTER");
	if (v == NULL)
		return;
	int fds[ARH_MAX_ENTER_FDS];
	int n = arh_fds(v, fds, ARH_MAX_ENTER_FDS);
	if (n < 3 || strlen(v) < 4) {
		errno = EINVAL;
		arh_fail("enter the container: bad fd list");
	}
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		arh_fail("set the parent-death signal");
	if (arh_parent_gone(1))
		_exit(122);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		arh_fail("make this process not dumpable");
	// fds: mount namespace, root, pid namespace, then one cgroup.procs
	// per hierarchy to join, opened on the host by the parent.
	for (int i = 3; i < n; i++) {
		if (write(fds[i], "0", 1) != 1)
			arh_fail("join the container's cgroups");
		close(fds[i]);
	}
	if (setns(fds[0], CLONE_NEWNS) != 0)
		arh_fail("join the container's mount namespace");
	if (fchdir(fds[1]) != 0 || chroot(".") != 0 || chdir("/") != 0)
		arh_fail("enter the container's root");
	close(fds[0]);
	close(fds[1]);
	if (setns(fds[2], CLONE_NEWPID) != 0)
		arh_fail("join the container's pid namespace");
	close(fds[2]);
	arh_drop_caps();
	int alive[2];
	if (pipe2(alive, O_CLOEXEC) != 0)
		arh_fail("pipe");
	pid_t child = fork();
	if (child < 0)
		arh_fail("fork into the container's pid namespace");
	if (child == 0) {
		close(alive[1]);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
			arh_fail("set the parent-death signal");
		// The parent died before the prctl: nothing would kill us.
		if (arh_parent_gone(alive[0]))
			_exit(122);
		close(alive[0]);
		// A session of its own: no controlling terminal of the host's.
		if (setsid() < 0)
			arh_fail("setsid");
		memcpy(v, "done", 5);
		return;
	}
	// The parent: nothing of the child's is ours to hold.
	if ((alive[1] > 0 && syscall(SYS_close_range, 0, alive[1] - 1, 0) != 0) ||
	    syscall(SYS_close_range, alive[1] + 1, ~0U, 0) != 0) {
		for (int fd = 0; fd < 1024; fd++)
			if (fd != alive[1])
				close(fd);
	}
	int st;
	for (;;) {
		pid_t r = waitpid(child, &st, 0);
		if (r == child)
			break;
		if (r < 0 && errno != EINTR)
			_exit(123);
	}
	if (WIFEXITED(st))
		_exit(WEXITSTATUS(st));
	// Killed: so is this one, by the same signal, as the parent sees it.
	signal(WTERMSIG(st), SIG_DFL);
	kill(getpid(), WTERMSIG(st));
	_exit(128 + WTERMSIG(st));
}

__attribute__((constructor)) static void autofs_restore_hook_enter(void) {
	arh_join_timens();
	arh_enter();
}
*/
import "C"
