package mounts

import (
	"os"
	"strconv"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// Procs is a snapshot of the processes of one pid namespace, used to find
// the master of each autofs mount. It reads each process's stat once and
// its fd table only when asked.
type Procs struct {
	Pids  []int
	stats map[int]proc.Stat
	pipes map[int]map[uint64]bool
}

// SnapshotProcs reads the stat of every pid in pids (host numbering).
// Processes that vanished meanwhile are left out.
func SnapshotProcs(pids []int) *Procs {
	p := &Procs{stats: make(map[int]proc.Stat, len(pids)), pipes: map[int]map[uint64]bool{}}
	for _, pid := range pids {
		st, err := proc.ReadStat(pid)
		if err != nil {
			continue
		}
		p.Pids = append(p.Pids, pid)
		p.stats[pid] = st
	}
	return p
}

// Stat returns the snapshot of pid.
func (p *Procs) Stat(pid int) (proc.Stat, bool) { s, ok := p.stats[pid]; return s, ok }

// ref names pid as the snapshot saw it.
func (p *Procs) ref(pid int) proc.Ref { return proc.Ref{Pid: pid, StartTime: p.stats[pid].StartTime} }

// pipesOf lists the pipe inodes pid holds open, read once per pid.
func (p *Procs) pipesOf(pid int) map[uint64]bool {
	if m, ok := p.pipes[pid]; ok {
		return m
	}
	m := map[uint64]bool{}
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		l, err := os.Readlink(dir + e.Name())
		if err != nil || !strings.HasPrefix(l, "pipe:[") {
			continue
		}
		if ino, err := strconv.ParseUint(strings.TrimSuffix(l[len("pipe:["):], "]"), 10, 64); err == nil {
			m[ino] = true
		}
	}
	p.pipes[pid] = m
	return m
}

// MasterOf returns the master of a mount with options o, as the snapshot
// saw it (pid in the host's numbering, start time): the process of group
// o.PGrp that holds the pipe o.PipeIno. Where the kernel does not print
// pipe_ino, the group leader counts. It returns the zero Ref when no such
// process exists (the master died). For a catatonic mount it returns the
// master that served it before, if that process still holds the pipe.
func (p *Procs) MasterOf(o Options) proc.Ref {
	if o.PGrp <= 0 {
		return proc.Ref{}
	}
	var group []int
	for _, pid := range p.Pids {
		if p.stats[pid].PGrp == o.PGrp {
			group = append(group, pid)
		}
	}
	if o.PipeIno == 0 {
		for _, pid := range group {
			if pid == o.PGrp {
				return p.ref(pid)
			}
		}
		return proc.Ref{}
	}
	// The group leader first: both systemd and automount lead their group.
	for _, pid := range group {
		if pid == o.PGrp && p.pipesOf(pid)[o.PipeIno] {
			return p.ref(pid)
		}
	}
	for _, pid := range group {
		if pid != o.PGrp && p.pipesOf(pid)[o.PipeIno] {
			return p.ref(pid)
		}
	}
	return proc.Ref{}
}
