// Package proc holds the processes the hook acts on: pinned by pidfds,
// and what it reads of them from the host's /proc (stat, status,
// namespaces, open files' fdinfo), every read bounded.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
	"golang.org/x/sys/unix"
)

// Ref names a process as it was seen: its pid and its start time (field
// 22 of /proc/PID/stat, in clock ticks), which together name no process
// started later with the same pid. It is how a process travels (to a
// child, in a record); Open pins it again, or says it is gone.
type Ref struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// Open pins the process r names: ErrGone when it exited, or its pid now
// names another process.
func (r Ref) Open() (*Process, error) {
	p, err := OpenProcess(r.Pid)
	if err != nil {
		return nil, err
	}
	if p.StartTime != r.StartTime {
		p.Close()
		return nil, fmt.Errorf("pid %d: %w (started at tick %d, not %d: pid reused)", r.Pid, ErrGone, p.StartTime, r.StartTime)
	}
	return p, nil
}

// Process is a process pinned by a pidfd, so that a pid reused by an
// unrelated process after it was looked up is detected.
type Process struct {
	Ref
	pidfd int
}

// ErrGone is returned when a process exited (or its pid was reused).
var ErrGone = errors.New("process is gone")

// OpenProcess pins pid. It fails for pids that do not exist or are zombies.
func OpenProcess(pid int) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: not a valid pid", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	st, err := ReadStat(pid)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if st.Exited() {
		unix.Close(fd)
		return nil, fmt.Errorf("pid %d: %w (zombie)", pid, ErrGone)
	}
	return &Process{Ref: Ref{Pid: pid, StartTime: st.StartTime}, pidfd: fd}, nil
}

// PinnedBy pins the process a pidfd refers to (one from CLONE_PIDFD, handed
// over by the child that started it): the process actually started, never
// another that got its pid. The pidfd is duplicated; f stays the caller's.
// Its pid, in our pid namespace, is the Pid line of the pidfd's fdinfo.
func PinnedBy(f *os.File) (*Process, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup pidfd: %w", err)
	}
	p, err := pinnedBy(fd)
	if err != nil {
		unix.Close(fd)
	}
	return p, err
}

func pinnedBy(fd int) (*Process, error) {
	b, err := procfile.Head("/proc/self/fdinfo/"+strconv.Itoa(fd), procfile.FDInfoHead)
	if err != nil {
		return nil, fmt.Errorf("fdinfo of pidfd: %w", err)
	}
	pid := 0
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pid:"); ok {
			pid, err = strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return nil, fmt.Errorf("fdinfo of pidfd: Pid %q", v)
			}
		}
	}
	switch {
	case pid == -1:
		return nil, fmt.Errorf("pidfd: %w", ErrGone)
	case pid <= 0:
		return nil, fmt.Errorf("pidfd: a process of no pid namespace of ours (Pid %d)", pid)
	}
	st, err := ReadStat(pid)
	if err != nil {
		return nil, err
	}
	p := &Process{Ref: Ref{Pid: pid, StartTime: st.StartTime}, pidfd: fd}
	// Alive after the read: the stat read was of this very process.
	if !p.Alive() || st.Exited() {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	return p, nil
}

// Alive reports whether the pinned process still runs (not reused: the
// pidfd refers to the original process whatever the pid now names).
func (p *Process) Alive() bool {
	return unix.PidfdSendSignal(p.pidfd, 0, nil, 0) == nil
}

// Check returns ErrGone when the process exited (zombies included) or
// /proc/PID now describes another process. Call it after reading anything from /proc/PID.
func (p *Process) Check() error {
	if !p.Alive() {
		return fmt.Errorf("pid %d: %w", p.Pid, ErrGone)
	}
	st, err := ReadStat(p.Pid)
	if err != nil || st.StartTime != p.StartTime {
		return fmt.Errorf("pid %d: %w (pid reused)", p.Pid, ErrGone)
	}
	if st.Exited() {
		return fmt.Errorf("pid %d: %w (exited)", p.Pid, ErrGone)
	}
	return nil
}

// Kill sends SIGKILL through the pidfd and waits up to d for the process
// to be gone.
func (p *Process) Kill(d time.Duration) error {
	if err := unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d: %w", p.Pid, err)
	}
	return p.WaitGone(d)
}

// WaitGone waits up to d until the process has exited.
func (p *Process) WaitGone(d time.Duration) error {
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("pid %d still alive after %s", p.Pid, d)
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for pid %d: %w", p.Pid, err)
		}
		if n > 0 {
			return nil
		}
	}
}

// WaitReaped waits up to d until the process is gone and reaped by its
// parent: a zombie still holds its pid, and a program that checks for
// its own running instance with kill(pid, 0) sees it alive.
func (p *Process) WaitReaped(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		st, err := ReadStat(p.Pid)
		if err != nil || st.StartTime != p.StartTime {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d not reaped by its parent (pid %d) after %s", p.Pid, st.PPid, d)
		}
		time.Sleep(time.Millisecond)
	}
}

// Close releases the pidfd.
func (p *Process) Close() error { return unix.Close(p.pidfd) }

// Stat holds the fields of /proc/PID/stat the hook uses.
type Stat struct {
	Comm      string
	State     byte
	PPid      int
	PGrp      int
	Session   int
	StartTime uint64
}

// Exited reports whether the process has ended: a zombie not yet reaped
// by its parent, or one being reaped.
func (s Stat) Exited() bool { return s.State == 'Z' || s.State == 'X' }

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := procfile.Read("/proc/"+strconv.Itoa(pid)+"/stat", procfile.MaxStat)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return Stat{}, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return Stat{}, err
	}
	return ParseStat(b)
}

// ParseStat parses the content of /proc/PID/stat.
func ParseStat(b []byte) (Stat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return Stat{}, fmt.Errorf("malformed stat %q", b)
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("malformed stat %q", b)
	}
	s := Stat{Comm: string(b[open+1 : end]), State: f[0][0]}
	var err error
	ints := []*int{&s.PPid, &s.PGrp, &s.Session}
	for i, p := range ints {
		if *p, err = strconv.Atoi(f[1+i]); err != nil {
			return Stat{}, fmt.Errorf("malformed stat field %d: %q", 4+i, f[1+i])
		}
	}
	if s.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("malformed stat start time %q", f[19])
	}
	return s, nil
}

// Status holds the fields of /proc/PID/status the hook uses.
type Status map[string]string

// ReadStatus reads /proc/PID/status as a key-value map.
func ReadStatus(pid int) (Status, error) {
	b, err := procfile.Read("/proc/"+strconv.Itoa(pid)+"/status", procfile.MaxStatus)
	if err != nil {
		return nil, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	s := Status{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			s[k] = strings.TrimSpace(v)
		}
	}
	return s, nil
}

// StatusFile is the status file of one process, kept open: it answers
// for that process only (a pid reused after it exited reads as an error,
// never as another process), and reading it again costs one system call
// and no allocation. For polls.
type StatusFile struct {
	f    *os.File
	buf  []byte
	last []byte // what the last State read
}

// OpenStatus opens p's /proc/PID/status, and checks afterwards that p
// is still the process pinned, so that the file is on it.
func (p *Process) OpenStatus() (*StatusFile, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(p.Pid) + "/status")
	if err != nil {
		return nil, fmt.Errorf("open status of pid %d: %w", p.Pid, err)
	}
	if err := p.Check(); err != nil {
		f.Close()
		return nil, err
	}
	return &StatusFile{f: f, buf: make([]byte, 16<<10)}, nil
}

// Close closes the file.
func (s *StatusFile) Close() error { return s.f.Close() }

// State reads the process's state letter (R, S, D, t, Z ...) and its
// tracer's pid (0 when not traced). A process gone reads as ErrGone.
func (s *StatusFile) State() (state byte, tracerPid int, err error) {
	n, err := s.f.ReadAt(s.buf, 0)
	if n == 0 && err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrGone, err)
	}
	b := s.buf[:n]
	s.last = b
	if v := statusField(b, "State:"); len(v) > 0 {
		state = v[0]
	}
	tracerPid, _ = strconv.Atoi(string(statusField(b, "TracerPid:")))
	if state == 0 || state == 'Z' || state == 'X' {
		return state, tracerPid, ErrGone
	}
	return state, tracerPid, nil
}

// Name is the process's name (its comm, as the status file escapes it)
// in what the last State read; nil before any. It is valid until the next
// State: callers that keep it copy it.
func (s *StatusFile) Name() []byte { return statusField(s.last, "Name:") }

// statusField is the value of the line of b that starts with key,
// without the blanks around it.
func statusField(b []byte, key string) []byte {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
			return bytes.TrimSpace(v)
		}
	}
	return nil
}

// NSpid returns the pid of the process in each of its pid namespaces,
// outermost first.
func (s Status) NSpid() []int {
	var out []int
	for _, f := range strings.Fields(s["NSpid"]) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// TracerPid is the pid of the process tracing this one (CRIU during a
// restore), or 0.
func (s Status) TracerPid() int { n, _ := strconv.Atoi(s["TracerPid"]); return n }

// Namespace identifies one namespace of a process (inode of /proc/PID/ns/X).
func Namespace(pid int, kind string) (uint64, error) {
	var st unix.Stat_t
	p := "/proc/" + strconv.Itoa(pid) + "/ns/" + kind
	if err := unix.Stat(p, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", p, err)
	}
	return st.Ino, nil
}

// SameNamespaces reports which of the namespaces kinds pid shares with the
// calling process.
func SameNamespaces(pid int, kinds ...string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, k := range kinds {
		a, err := Namespace(pid, k)
		if err != nil {
			return nil, err
		}
		b, err := Namespace(os.Getpid(), k)
		if err != nil {
			return nil, err
		}
		out[k] = a == b
	}
	return out, nil
}

// PidNamespaceMembers lists the pids (in the caller's numbering) of all
// processes whose pid namespace is that of pid.
func PidNamespaceMembers(pid int) ([]int, error) {
	want, err := Namespace(pid, "pid")
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := Namespace(n, "pid"); err == nil && ns == want {
			out = append(out, n)
		}
	}
	return out, nil
}

// InitOf returns the host pid of the init (pid 1) of pid's pid namespace
// (the innermost one, for a process in nested pid namespaces).
func InitOf(pid int) (int, error) {
	members, err := PidNamespaceMembers(pid)
	if err != nil {
		return 0, err
	}
	for _, m := range members {
		st, err := ReadStatus(m)
		if err != nil {
			continue
		}
		if ns := st.NSpid(); len(ns) > 0 && ns[len(ns)-1] == 1 {
			return m, nil
		}
	}
	return 0, fmt.Errorf("the pid namespace of %d has no init (pid 1)", pid)
}

// Wchan returns the kernel function pid sleeps in.
func Wchan(pid int) string {
	b, _ := procfile.Read("/proc/"+strconv.Itoa(pid)+"/wchan", procfile.MaxSmall)
	return string(b)
}

// GetFD copies the process's fd n into ours (pidfd_getfd), close-on-exec
// unset: the caller marks and closes it.
func (p *Process) GetFD(n int) (int, error) { return unix.PidfdGetfd(p.pidfd, n, 0) }
