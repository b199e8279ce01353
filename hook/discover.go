package hook

// What the hook sees of a container: its autofs mounts, their masters and
// states, nested copies, and the evidence that it was restored.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// MountState is what status reports for one autofs mount.
type MountState string

const (
	// StateOK: served by a live master that knows it.
	StateOK MountState = "ok"
	// StateStale: restored, and its master still caches the device of the
	// mount from before the checkpoint; the first access hangs.
	StateStale MountState = "stale after restore"
	// StateCatatonic: no master any more; accesses fail at once.
	StateCatatonic MountState = "catatonic"
	// StateOrphaned: the mount has a master pipe but nobody holds it.
	StateOrphaned MountState = "orphaned"
)

// Mount is one autofs mount of a container with its master.
type Mount struct {
	*mounts.Autofs
	// Master is the master as inspect saw it (its pid in the host's
	// numbering, its start time); the zero Ref if none.
	Master proc.Ref
	// Kind is what the master is.
	Kind units.Kind
	// Unit is the systemd .automount unit (systemd masters).
	Unit string
	// UnitConfirmed is set when the container's systemd said Where=.
	UnitConfirmed bool
	// State is the verdict of status.
	State MountState
	// NestedPids are processes of the container in other mount
	// namespaces that hold a copy of this mount.
	NestedPids []int
	// Fixed is set when the state file shows this mount needs no fix.
	Fixed bool
}

// Container is what the hook knows about one container.
type Container struct {
	Proc     *proc.Process
	Evidence Evidence
	Table    *mounts.Table
	Procs    *mounts.Procs
	Mounts   []*Mount
}

// inspect reads the container's mounts and processes from the host side.
func inspect(p *proc.Process, good func(dev uint64) bool) (*Container, error) {
	t, err := mounts.ReadTable(p.Pid)
	if err != nil {
		return nil, err
	}
	pids, err := proc.PidNamespaceMembers(p.Pid)
	if err != nil {
		return nil, fmt.Errorf("list processes of pid %d: %w", p.Pid, err)
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	c := &Container{Proc: p, Table: t, Procs: mounts.SnapshotProcs(pids)}
	c.Evidence, err = evidenceOf(p.Pid)
	if err != nil {
		return nil, err
	}
	byDev := map[uint64]*Mount{}
	for _, a := range t.Autofs {
		m := &Mount{Autofs: a, Fixed: good != nil && good(a.Dev())}
		m.Master, m.Kind = masterOf(c.Procs, a.Options)
		if m.Kind == units.Systemd {
			m.Unit = units.PathUnitName(a.Mountpoint(), "automount")
		}
		m.State = stateOf(m, c.Evidence.Restored())
		c.Mounts = append(c.Mounts, m)
		byDev[a.Dev()] = m
	}
	c.findNested(byDev)
	return c, nil
}

// masterOf finds the master of the autofs mount of options o among procs
// (the zero Ref if none) and says what it is: the one classification of inspect and
// of the follower's restoredEnough.
func masterOf(procs *mounts.Procs, o mounts.Options) (proc.Ref, units.Kind) {
	master := procs.MasterOf(o)
	pid := master.Pid
	nsPid := 0
	comm := ""
	if pid > 0 {
		if st, err := proc.ReadStatus(pid); err == nil {
			if ns := st.NSpid(); len(ns) > 0 {
				nsPid = ns[len(ns)-1]
			}
		}
		s, _ := procs.Stat(pid)
		comm = s.Comm
	}
	return master, units.Classify(pid, nsPid, comm)
}

// stateOf classifies one mount (the status column).
func stateOf(m *Mount, restored bool) MountState {
	switch {
	case m.Options.Catatonic():
		return StateCatatonic
	case m.Master.Pid == 0:
		return StateOrphaned
	case restored && !m.Fixed && m.Options.Mode.CachesDevice() && (m.Kind == units.Systemd || m.Kind == units.Automount):
		return StateStale
	}
	return StateOK
}

// findNested looks for processes of the container in other mount
// namespaces holding copies of its autofs mounts.
func (c *Container) findNested(byDev map[uint64]*Mount) {
	if len(byDev) == 0 {
		return
	}
	own, err := proc.Namespace(c.Proc.Pid, "mnt")
	if err != nil {
		return
	}
	seen := map[uint64]bool{own: true}
	for _, pid := range c.Procs.Pids {
		ns, err := proc.Namespace(pid, "mnt")
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		t, err := mounts.ReadTable(pid)
		if err != nil {
			continue
		}
		for _, a := range t.Autofs {
			if m := byDev[a.Dev()]; m != nil {
				m.NestedPids = append(m.NestedPids, pid)
			}
		}
	}
}

// evidenceOf gathers the signs of a restore for pid.
func evidenceOf(pid int) (Evidence, error) {
	var ev Evidence
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return ev, err
	}
	ev.Traced = isCRIU(st.TracerPid())
	theirs, err1 := proc.Namespace(pid, "time")
	ours, err2 := proc.Namespace(os.Getpid(), "time")
	if err1 == nil && err2 == nil {
		ev.OwnTimeNS = theirs != ours
	}
	return ev, nil
}

// isCRIU reports whether process pid (a TracerPid, a runtime's child; 0
// for none) is CRIU: a process of the hook's own pid namespace whose
// executable is named criu (or the dynamic loader running a program named
// criu). Any other tracer, an operator's strace or gdb on the host or a
// debugger of the container's own, is no sign of a restore.
func isCRIU(pid int) bool {
	if pid <= 0 {
		return false
	}
	same, err := proc.SameNamespaces(pid, "pid")
	if err != nil || !same["pid"] {
		return false
	}
	dir := "/proc/" + strconv.Itoa(pid)
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		return false
	}
	base := filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
	if base == "criu" {
		return true
	}
	// criu started through the dynamic loader (ld.so PATH/criu ...), as
	// a CRIU built for another distribution's libraries is.
	if !strings.HasPrefix(base, "ld-") && !strings.HasPrefix(base, "ld.so") {
		return false
	}
	cmdline, err := procfile.Read(dir+"/cmdline", procfile.MaxCmdline)
	if err == nil && loadedProgram(strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")) == "criu" {
		return true
	}
	// CRIU rewrites its command line once it runs (its process title):
	// the program the loader mapped is still in its maps.
	return mapsHold(pid, "criu")
}

// loadedProgram is the base name of the program a dynamic loader's
// command line (ld.so [OPTION]... PROGRAM [ARG]...) runs, "" if none.
func loadedProgram(args []string) string {
	withValue := map[string]bool{"--library-path": true, "--preload": true, "--argv0": true, "--audit": true,
		"--inhibit-rpath": true, "--glibc-hwcaps-prepend": true, "--glibc-hwcaps-mask": true}
	for i := 1; i < len(args); i++ {
		switch a := args[i]; {
		case withValue[a]:
			i++
		case strings.HasPrefix(a, "--"):
		default:
			return filepath.Base(a)
		}
	}
	return ""
}

// refuseHost refuses a pid that shares the hook's own mount or pid
// namespace: it is not a container, and acting on it would act on the
// host.
func refuseHost(pid int) error {
	same, err := proc.SameNamespaces(pid, "mnt", "pid")
	if err != nil {
		return err
	}
	for _, k := range []string{"mnt", "pid"} {
		if same[k] {
			return fmt.Errorf("pid %d shares the host's %s namespace: not a container, refused", pid, k)
		}
	}
	return nil
}

func devString(dev uint64) string {
	return strconv.FormatUint(uint64(unix.Major(dev)), 10) + ":" + strconv.FormatUint(uint64(unix.Minor(dev)), 10)
}

// mountAt is the autofs mount at where (the topmost), or nil.
func (c *Container) mountAt(where string) *Mount {
	var found *Mount
	for _, m := range c.Mounts {
		if m.Mountpoint() == where {
			found = m
		}
	}
	return found
}

// automountPids lists the automount processes of the container.
func (c *Container) automountPids() []int {
	var out []int
	for _, pid := range c.Procs.Pids {
		if s, ok := c.Procs.Stat(pid); ok && s.Comm == "automount" && !s.Exited() {
			out = append(out, pid)
		}
	}
	return out
}
