package cstart

// CRIU runs an action script for every action of every dump and restore
// (about fifteen, each twice under runc). All but three are no-ops for the
// hook, and starting the Go runtime costs more than the rest of the
// program: this constructor answers them before the runtime starts, as a
// C program would. post-setup-namespaces matters only on a host whose
// /sys/fs/cgroup is the unified hierarchy (hook/cgroups.go); elsewhere it
// is answered here too, and so are pre-resume and post-resume where the
// CRIU plugin of the restore runs them (AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS,
// hook.EnvPluginActions). Kept in step
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

// Whether AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS, a list of words, holds a.
static int autofs_restore_hook_plugin_runs(const char *a) {
	const char *p = getenv("AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS");
	size_t n = strlen(a);
	while (p != NULL && *p != '\0') {
		while (*p == ' ')
			p++;
		size_t w = strcspn(p, " ");
		if (w == n && strncmp(p, a, n) == 0)
			return 1;
		p += w;
	}
	return 0;
}

__attribute__((constructor)) static void autofs_restore_hook_ignore_criu_action(void) {
	const char *a = getenv("CRTOOLS_SCRIPT_ACTION");
	struct statfs st;
	if (a == NULL)
		return;
	if (strcmp(a, "pre-resume") == 0 || strcmp(a, "post-resume") == 0) {
		if (autofs_restore_hook_plugin_runs(a))
			_exit(0);
		return;
	}
	if (strcmp(a, "post-setup-namespaces") == 0 && statfs("/sys/fs/cgroup", &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC)
		return;
	_exit(0);
}
*/
import "C"
