package cstart

// A Go process is multithreaded before main runs, and the kernel lets
// only a single-threaded process join a time namespace (EUSERS). The
// respawned daemon must live in the container's time namespace (CRIU
// gives a restored container one), so the stage of the spawner that forks
// it joins that namespace here, in a constructor that runs before the Go
// runtime starts its threads. It does nothing unless the spawner set
// units.EnvTimeNSFD, and it removes that variable.

/*
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

__attribute__((constructor)) static void autofs_restore_hook_join_timens(void) {
	const char *v = getenv("_AUTOFS_RESTORE_HOOK_TIMENS_FD");
	if (v == NULL)
		return;
	int fd = atoi(v);
	if (fd < 3 || setns(fd, CLONE_NEWTIME) != 0) {
		dprintf(2, "{\"error\":\"join the container's time namespace: %s\"}\n", strerror(errno));
		_exit(121);
	}
	close(fd);
	unsetenv("_AUTOFS_RESTORE_HOOK_TIMENS_FD");
}
*/
import "C"
