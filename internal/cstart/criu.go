package cstart

// CRIU runs an action script for every action of every dump and restore
// (about fifteen, each twice under runc). All but two are no-ops for the
// hook, and starting the Go runtime costs more than the rest of the
// program: this constructor answers them before the runtime starts, as a
// C program would. Kept in step with criuMain, which handles the same
// actions the same way if the constructor is ever compiled out
// (hook/criu.go).

/*
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void autofs_restore_hook_ignore_criu_action(void) {
	const char *a = getenv("CRTOOLS_SCRIPT_ACTION");
	if (a == NULL)
		return;
	if (strcmp(a, "pre-resume") != 0 && strcmp(a, "post-resume") != 0)
		_exit(0);
}
*/
import "C"
