package mounts

import (
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
)

// Catatonic is the worker task that makes autofs mounts catatonic.
var Catatonic = NewTask("catatonic", catatonicTask)

// Target names one autofs mount by mount point and device.
type Target struct {
	Where string `json:"where"`
	Dev   uint64 `json:"dev"`
}

// TargetResult is the outcome for one Target ("" when it worked).
type TargetResult struct {
	Where string `json:"where"`
	Error string `json:"error,omitempty"`
}

// catatonicTask makes each target catatonic. It runs inside the
// container's mount namespace and root, so the mount point is resolved as
// the container sees it, and from the host's pid namespace, so the walk
// never waits on the container's autofs mounts.
func catatonicTask(env *WorkerEnv, targets []Target, logf door.Logf) ([]TargetResult, error) {
	out := make([]TargetResult, len(targets))
	for i, t := range targets {
		out[i].Where = t.Where
		if err := env.Ctl.CatatonicAt(t.Where, t.Dev); err != nil {
			out[i].Error = err.Error()
		}
	}
	return out, nil
}
