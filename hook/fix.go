package hook

// The fix command: both phases back to back, for a container that
// already runs, on the operator's word.

import (
	"errors"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// fixMain is `fix --pid`: both phases back to back, for a container that
// already runs.
func fixMain(pid int, opts Options) int {
	// One state file and lock per container, whatever pid was given.
	if init, err := proc.InitOf(pid); err == nil && init != pid && refuseHost(pid) == nil {
		opts.Log.Infof("fix: pid %d is not the init of its pid namespace: acting on its init, pid %d", pid, init)
		pid = init
	}
	if !opts.Force && !opts.AssumeRestored {
		// A fix restarts masters: only for restored containers, unless the
		// operator insists.
		ev, err := evidenceOf(pid)
		if err == nil && !ev.Restored() {
			opts.Log.Warnf("fix: pid %d shows no sign of a restore (same time namespace as the host): only mounts found catatonic or orphaned are reported; use --assume-restored to fix stale mounts anyway", pid)
		}
	}
	err := fixPid(pid, []Phase{PreResume, PostResume}, opts)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, errRefused):
		opts.Log.Errorf("fix: %v", err)
		return ExitRefused
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		opts.Log.Errorf("fix: %s", line)
	}
	return ExitFailed
}
