package units

// Making a daemon's mounts catatonic through the ioctl fds it holds on
// them, copied in a child.

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// catatonicFDs is the host task that copies the daemon's ioctl fds.
var catatonicFDs = worker.NewHostTask("catatonic-fds", catatonicFDsTask)

// daemonFD is one fd of the daemon on a target, as FDs saw it.
type daemonFD struct {
	N     int    `json:"n"`
	MntID int    `json:"mnt_id"`
	Ino   uint64 `json:"ino"`
	Where string `json:"where"`
}

type catatonicFDsRequest struct {
	Daemon proc.Ref   `json:"daemon"`
	FDs    []daemonFD `json:"fds"`
}

// CatatonicThroughFDs makes each target catatonic through an fd that
// process p holds on it (the automount daemon keeps an ioctl fd on every
// direct and offset mount). This works even when a request is pending,
// when no path walk can reach the mount; the waiters are released at
// once. It returns the mount points released.
//
// The fds are chosen from fdinfo and the daemon's mount table, without
// touching any file: only fds on the targets' autofs mounts are copied
// (pidfd_getfd), and that in a child (RunOnHost), because the process
// may swap an fd for a file whose close never returns (a FUSE file whose
// server does not answer the FLUSH) between the choice and the copy.
func CatatonicThroughFDs(p *proc.Process, targets []mounts.Target, timeout time.Duration, logf door.Logf) ([]string, error) {
	t, err := mounts.ReadTable(p.Pid)
	if err != nil {
		return nil, err
	}
	where := map[uint64]string{}
	for _, tg := range targets {
		where[tg.Dev] = tg.Where
	}
	onTarget := map[int]string{} // mount id of a target's autofs mount → target
	for _, a := range t.Autofs {
		if w, ok := where[a.Dev()]; ok {
			onTarget[a.Info.ID] = w
		}
	}
	fds, err := p.FDs()
	if err != nil {
		return nil, err
	}
	req := catatonicFDsRequest{Daemon: p.Ref}
	taken := map[string]bool{}
	for _, fd := range fds {
		if w, ok := onTarget[fd.MntID]; ok && !taken[w] {
			taken[w] = true
			req.FDs = append(req.FDs, daemonFD{N: fd.N, MntID: fd.MntID, Ino: fd.Ino, Where: w})
		}
	}
	if len(req.FDs) == 0 {
		return nil, nil
	}
	released, err := catatonicFDs.RunOnHost(req, timeout, logf)
	if err != nil {
		return nil, fmt.Errorf("make catatonic through the daemon's fds: %w", err)
	}
	return released, nil
}

// catatonicFDsTask copies each chosen fd and, when the copy is still on
// the autofs mount the choice saw (read from our own fdinfo, which asks
// no file system), makes that mount catatonic. A copy that is not is
// never closed by us: its close might never return. The task ends
// then, and its exit closes it, in a process that can be left behind.
func catatonicFDsTask(env *worker.Env, req catatonicFDsRequest, logf door.Logf) ([]string, error) {
	p, err := req.Daemon.Open()
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var released []string
	var errs []error
	for _, d := range req.FDs {
		fd, err := p.GetFD(d.N)
		if err != nil {
			errs = append(errs, fmt.Errorf("copy fd %d of %d: %w", d.N, p.Pid, err))
			continue
		}
		unix.CloseOnExec(fd)
		// The same mount and inode: mount ids are reused, a swap for a
		// file of a new mount that got the old id would pass on the id.
		if got, err := proc.OwnFD(fd); err != nil || got.MntID != d.MntID || (d.Ino != 0 && got.Ino != d.Ino) {
			return released, fmt.Errorf("fd %d of %d is no longer on %s (the process swapped it): stopped, the copy left open", d.N, p.Pid, mounts.Escape(d.Where))
		}
		f := os.NewFile(uintptr(fd), "fd "+fmt.Sprint(d.N))
		if err := env.Ctl.Catatonic(f); err != nil {
			// Not closed: a file the kernel's autofs refuses may be one
			// whose close never returns.
			errs = append(errs, fmt.Errorf("%s: %w", mounts.Escape(d.Where), err))
			continue
		}
		released = append(released, d.Where)
		f.Close() // an autofs file: its close asks no one
	}
	if len(released) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		logf.Warn(err.Error())
	}
	return released, nil
}
