package cstart

// CRIU runs an action script for every action of every dump and restore
// (about fifteen, each twice under runc). All but three are no-ops for the
// hook, and starting the Go runtime costs more than the rest of the
// program: this constructor answers them before the runtime starts, as a
// C program would. post-setup-namespaces matters only on a host whose
// /sys/fs/cgroup is the unified hierarchy (hook/cgroups.go); elsewhere it
// is answered here too, and so is every action but the one the CRIU plugin
// added the binary for (AUTOFS_RESTORE_HOOK_SCRIPT_ONLY). Kept in step
// with criuMain, which handles the same actions the same way if the
// constructor is ever compiled out (hook/criu.go).

/*
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/vfs.h>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

__attribute__((constructor)) static void autofs_restore_hook_ignore_criu_action(void) {
	const char *a = getenv("CRTOOLS_SCRIPT_ACTION");
	struct statfs st;
	const char *only = getenv("AUTOFS_RESTORE_HOOK_SCRIPT_ONLY");
	if (a == NULL)
		return;
	if (only != NULL && *only != '\0' && strcmp(only, a) != 0)
		_exit(0);
	if (strcmp(a, "pre-resume") == 0 || strcmp(a, "post-resume") == 0)
		return;
	if (strcmp(a, "post-setup-namespaces") == 0 && statfs("/sys/fs/cgroup", &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC)
		return;
	_exit(0);
}
*/
import "C"
