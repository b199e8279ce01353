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

// EnvEnter names the variable that tells a child's C constructor the fds
// it joins (Spec.Enter): "MNT,ROOT,PID[,CGROUP.PROCS...]". The
// constructor overwrites the value with "done" once the child is in.
const EnvEnter = "_AUTOFS_RESTORE_HOOK_ENTER"

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
// first (the number of fds before them), and the value of EnvEnter.
func entryFiles(e *Entry, first int) ([]*os.File, string, error) {
	files := []*os.File{e.MountNS, e.Root, e.PidNS}
	for _, f := range files {
		if f == nil {
			return nil, "", errors.New("enter a container: its mount namespace, root and pid namespace are all needed")
		}
	}
	cg, err := openCgroupProcs(e.Cgroups)
	if err != nil {
		return nil, "", err
	}
	files = append(files, cg...)
	var fds []string
	for i := range files {
		fds = append(fds, strconv.Itoa(first+i))
	}
	return files, EnvEnter + "=" + strings.Join(fds, ","), nil
}

// childrenOf lists the children of pid (host numbering), read from the
// host's /proc: the process an entering child's constructor forked.
func childrenOf(pid int) []int {
	s, err := ReadHostProc(fmt.Sprintf("%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(s) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// goneWithin waits until pid has exited (gone, or a zombie: the
// container's init reaps it, or not), for d at most.
func goneWithin(pid int, d time.Duration) bool {
	end := time.Now().Add(d)
	for {
		st, err := ReadHostProc(fmt.Sprintf("%d/stat", pid))
		if err != nil {
			return true
		}
		if i := strings.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && (st[i+2] == 'Z' || st[i+2] == 'X') {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killAll sends SIGKILL to each of pids.
func killAll(pids []int) {
	for _, p := range pids {
		unix.Kill(p, unix.SIGKILL)
	}
}
