package units

import (
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// CatatonicFDsChosen runs the copying child on a choice the test made
// (fd n of pid, on the mount mntID at where), which the process may have
// made stale since.
func CatatonicFDsChosen(pid int, start uint64, n, mntID int, where string, timeout time.Duration, logf door.Logf) error {
	_, err := catatonicFDs.RunOnHost(catatonicFDsRequest{Daemon: proc.Ref{Pid: pid, StartTime: start}, FDs: []daemonFD{{N: n, MntID: mntID, Where: where}}}, timeout, logf)
	return err
}
