package mounts

// What code that runs inside a container's mount namespace and root has
// of the container (InNS).

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// InNS is what code running inside a container's mount namespace and
// root (a task of internal/worker) has of the container: the container
// process's /proc directory, opened on the host, to read its mount table
// without walking the container's paths; the host's /dev/autofs (the
// container may have none); and a way to keep a record with the hook
// before a step that a run killed afterwards must know of.
type InNS struct {
	Proc *os.File
	Ctl  *ControlDevice
	// record sends an event to the hook and returns once it is kept;
	// nil refuses every record.
	record func(any) error
}

// NewInNS is the view of a container that proc (its /proc/PID directory)
// and ctl give; record keeps an event with the hook (nil: none can be
// kept).
func NewInNS(proc *os.File, ctl *ControlDevice, record func(any) error) *InNS {
	return &InNS{Proc: proc, Ctl: ctl, record: record}
}

// errNoContainer is what a host task gets when it asks for a container's
// mount table.
var errNoContainer = errors.New("not in a container: no mount table of one")

// NewControlDevice wraps an open /dev/autofs (one the hook opened on the
// host and handed to a child).
func NewControlDevice(f *os.File) *ControlDevice { return &ControlDevice{f: f} }

// Record sends ev to the hook, which keeps it in the container's state
// file on the host, and returns once it is kept: code calls it before a
// step that a run killed afterwards must know of, and does not take the
// step when it fails.
func (n *InNS) Record(ev any) error {
	if n.record == nil {
		return errors.New("no record can be kept: not a worker that keeps events")
	}
	return n.record(ev)
}

// Gone reports whether the container's process has exited (a zombie
// counts as exited): /proc/PID is read through the directory fd, so a
// new process that reused the pid is not mistaken for it.
func (n *InNS) Gone() bool {
	if n.Proc == nil {
		return false
	}
	fd, err := unix.Openat(int(n.Proc.Fd()), "stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
	}
	f := os.NewFile(uintptr(fd), "stat")
	defer f.Close()
	b := make([]byte, 4096)
	k, err := f.Read(b)
	if err != nil {
		return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
	}
	st, err := proc.ParseStat(b[:k])
	return err == nil && st.Exited()
}

// ReadTable reads the mount table of the container's process.
func (n *InNS) ReadTable() (*Table, error) {
	f, err := n.mountinfo()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseTable(f)
}

// mountinfo opens the container process's mount table through its /proc
// directory fd.
func (n *InNS) mountinfo() (*os.File, error) {
	if n.Proc == nil {
		return nil, errNoContainer
	}
	fd, err := unix.Openat(int(n.Proc.Fd()), "mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open mountinfo: %w", err)
	}
	return os.NewFile(uintptr(fd), "mountinfo"), nil
}
