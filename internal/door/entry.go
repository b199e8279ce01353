package door

// A child that is born in its container: what the parent hands the C
// constructor (internal/cstart) that takes the child in, and what the
// child checks of it.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// doorEnvPrefix starts every variable the door sets for a child.
const doorEnvPrefix = "_AUTOFS_RESTORE_HOOK_"

// EnvEnter names the variable that tells a child's C constructor the fds
// it joins (Spec.Enter): "MNT,ROOT,PID[,CGROUP.PROCS...]". The
// constructor overwrites the value with "done" once the child is in.
const EnvEnter = "_AUTOFS_RESTORE_HOOK_ENTER"

// EnvEnterDrop names the variable that tells the constructor the
// capabilities (a decimal mask, Entry.DropAfter) it drops from every set
// of the child once it has joined the pid namespace, before it forks.
const EnvEnterDrop = "_AUTOFS_RESTORE_HOOK_ENTER_DROP"

// EnvEnterTimeNS names the variable that tells the constructor the fd of
// the time namespace it joins first (Entry.TimeNS): a multithreaded
// process cannot join one.
const EnvEnterTimeNS = "_AUTOFS_RESTORE_HOOK_TIMENS_FD"

// Entry is the container a child lives in (Spec.Enter). Its C
// constructor, before any Go code runs and while the child is still
// outside the container's pid namespace, joins the cgroups, then the
// mount namespace and root, then the pid namespace, and forks: the
// process that runs the role is born in the container's pid namespace
// with the container's root, and holds no fd of the host's /proc. The
// process the parent started stays outside, waits for it and exits as it
// did (Call kills and reports both).
type Entry struct {
	MountNS, Root, PidNS *os.File
	// Cgroups are the lines of a /proc/PID/cgroup read on the host: the
	// cgroup.procs files of those cgroups are opened by the parent, on
	// the thread that starts the child (in the host's mount namespace),
	// and the constructor joins them first. Nil: the child stays in the
	// cgroups of that thread.
	Cgroups []string
	// DropAfter are capabilities that entering takes and the child must
	// not keep (CAP_SYS_CHROOT, say, for a container that lacks it):
	// the constructor drops them from the bounding, effective, permitted
	// and inheritable sets once it has joined the mount namespace, root
	// and pid namespace, before it forks the child. CAP_SETPCAP among
	// them is dropped last (the others' bounding drop needs it).
	DropAfter uint64
	// TimeNS, when set, is a time namespace the constructor joins before
	// anything else: the process it forks, and so the child's own
	// children, live in it (a restored container has one of its own).
	TimeNS *os.File
}

// Entered tells whether this process is a child that its C constructor
// took into its container (Spec.Enter). It is an error when the child
// was to be taken in and was not: a binary built without
// internal/cstart, whose child would go on in the host's root.
func Entered() (bool, error) {
	switch v := os.Getenv(EnvEnter); v {
	case "":
		return false, nil
	case "done":
		return true, nil
	default:
		return false, errors.New("this child was to enter its container in its C constructor, which did not run (a binary built without internal/cstart): refused")
	}
}

// entryFiles are the fds the child's constructor gets for e, after
// first (the number of fds before them), and its variables (EnvEnter,
// EnvEnterDrop where e.DropAfter is set, EnvEnterTimeNS where e.TimeNS
// is). Of the files, those in opened are the door's, to close once the
// child has them.
func entryFiles(e *Entry, first int) (files, opened []*os.File, env []string, err error) {
	files = []*os.File{e.MountNS, e.Root, e.PidNS}
	for _, f := range files {
		if f == nil {
			return nil, nil, nil, errors.New("enter a container: its mount namespace, root and pid namespace are all needed")
		}
	}
	if opened, err = openCgroupProcs(e.Cgroups); err != nil {
		return nil, nil, nil, err
	}
	files = append(files, opened...)
	var fds []string
	for i := range files {
		fds = append(fds, strconv.Itoa(first+i))
	}
	env = []string{EnvEnter + "=" + strings.Join(fds, ",")}
	if e.DropAfter != 0 {
		env = append(env, EnvEnterDrop+"="+strconv.FormatUint(e.DropAfter, 10))
	}
	if e.TimeNS != nil {
		env = append(env, EnvEnterTimeNS+"="+strconv.Itoa(first+len(files)))
		files = append(files, e.TimeNS)
	}
	return files, opened, env, nil
}

// inner is a process an entering child's constructor forked, pinned by
// a pidfd from the moment it is found: signals and the wait for its end
// reach it and no process that got its pid later.
type inner struct {
	pid, fd int
}

// innerOf finds and pins the children of outer (host numbering): those
// whose parent is still outer once pinned.
func innerOf(outer int) []inner {
	s, err := ReadHostProc(fmt.Sprintf("%d/task/%d/children", outer, outer))
	if err != nil {
		return nil
	}
	var out []inner
	for _, f := range strings.Fields(s) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		if ppid(pid) != outer {
			unix.Close(fd)
			continue
		}
		out = append(out, inner{pid, fd})
	}
	return out
}

// ppid is the parent of pid, read from the host's /proc (0 if unknown).
func ppid(pid int) int {
	st, err := ReadHostProc(fmt.Sprintf("%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(st, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(st[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// kill sends SIGKILL to p through its pidfd.
func (p inner) kill() { unix.PidfdSendSignal(p.fd, unix.SIGKILL, nil, 0) }

// goneWithin waits until p has exited, for d at most.
func (p inner) goneWithin(d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	end := time.Now().Add(d)
	for {
		n, err := unix.Poll(fds, int(max(time.Until(end), 0).Milliseconds()))
		if n > 0 {
			return true
		}
		if err != unix.EINTR || !time.Now().Before(end) {
			return false
		}
	}
}

func closeInner(ps []inner) {
	for _, p := range ps {
		unix.Close(p.fd)
	}
}
