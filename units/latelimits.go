package units

// The new daemon held at its exec, before its first instruction: the
// program the kernel loaded is checked there (atExec), and the daemon's
// address-space and data limits are set on it then rather than on the spawner's
// stage before the fork: a Go process reserves more address space (about
// 1.2 GB) than many such limits allow, so the stage, held to them, fails
// at its next new mapping (a new OS thread's stack, say) if it makes one
// before the exec, after the old daemon was killed.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"

	"golang.org/x/sys/unix"
)

// lateLimitResources are set after the exec.
var lateLimitResources = []int{unix.RLIMIT_AS, unix.RLIMIT_DATA}

// lateLimits are the daemon's limits among lateLimitResources that are
// not unlimited: those the stage does not take on.
func lateLimits(d *Daemon) map[int]unix.Rlimit {
	out := map[int]unix.Rlimit{}
	for _, r := range lateLimitResources {
		if r < len(d.Rlimits) && (d.Rlimits[r][0] != unix.RLIM_INFINITY || d.Rlimits[r][1] != unix.RLIM_INFINITY) {
			out[r] = unix.Rlimit{Cur: d.Rlimits[r][0], Max: d.Rlimits[r][1]}
		}
	}
	return out
}

// heldCall is a system call of the hold at the exec, as the daemon's
// seccomp filters judge it.
type heldCall struct {
	name string
	nr   uint32
	args [6]uint64
}

// The hold itself: ptrace(PTRACE_TRACEME) in the daemon, wait4 and
// ptrace(PTRACE_DETACH) on the stage's thread; the late limits add
// prlimit64.
var (
	holdCalls = []heldCall{
		{"ptrace(PTRACE_TRACEME)", unix.SYS_PTRACE, [6]uint64{unix.PTRACE_TRACEME}},
		{"wait4", unix.SYS_WAIT4, [6]uint64{1}},
		{"ptrace(PTRACE_DETACH)", unix.SYS_PTRACE, [6]uint64{unix.PTRACE_DETACH, 1}},
	}
	limitCalls = []heldCall{
		{"prlimit64", unix.SYS_PRLIMIT64, [6]uint64{1, unix.RLIMIT_AS}},
		{"prlimit64", unix.SYS_PRLIMIT64, [6]uint64{1, unix.RLIMIT_DATA}},
	}
)

// lateLimitsAllowed says why the syscalls of the late limits would not
// run under the daemon's seccomp filters, which the stage's thread (the
// tracer) and the new daemon (ptrace(PTRACE_TRACEME)) run under by then,
// or returns nil. Judged before the kill.
func lateLimitsAllowed(d *Daemon) error {
	if len(lateLimits(d)) == 0 {
		return nil
	}
	return filtersAllow(d, append(slices.Clip(holdCalls), limitCalls...))
}

// traceAllowed says why the new daemon could not be held at its exec
// under its seccomp filters, or returns nil.
func traceAllowed(d *Daemon) error { return filtersAllow(d, holdCalls) }

// filtersAllow says which of calls the daemon's seccomp filters would
// not let run, or returns nil.
func filtersAllow(d *Daemon, calls []heldCall) error {
	if len(d.SeccompFilters) == 0 {
		return nil
	}
	if auditArchNative == 0 {
		return errors.New("its filters cannot be judged on this architecture")
	}
	for _, call := range calls {
		if err := seccompAllows(d.SeccompFilters, seccompData{Nr: call.nr, Arch: auditArchNative, Args: call.args}); err != nil {
			return fmt.Errorf("%s: %w", call.name, err)
		}
	}
	return nil
}

// atExec holds the new daemon pid, started traced (PTRACE_TRACEME) by
// the calling thread, at the stop of its exec, before its first
// instruction: it checks that the program the kernel loaded is the
// daemon's binary, the file exe (the path was checked against it before
// the exec, and can have been swapped since), run with argv (a script
// whose interpreter is that binary has other arguments), sets the late
// limits, and lets it go.
func atExec(pid int, late map[int]unix.Rlimit, exe int, argv []string) error {
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		return fmt.Errorf("wait for the new daemon's exec: %w", err)
	}
	if !ws.Stopped() || ws.StopSignal() != unix.SIGTRAP {
		return fmt.Errorf("the new daemon did not stop at its exec (status %#x)", uint32(ws))
	}
	if err := sameProgram(pid, exe, argv); err != nil {
		return err
	}
	for r, l := range late {
		if err := unix.Prlimit(pid, r, &l, nil); err != nil {
			return fmt.Errorf("set limit %s to %d/%d: %w", limitNames[r], l.Cur, l.Max, err)
		}
	}
	if err := unix.PtraceDetach(pid); err != nil {
		return fmt.Errorf("let the new daemon go: %w", err)
	}
	return nil
}

// sameProgram checks that process pid (of our pid namespace) runs the
// file exe with the command line argv, through the procfs of our own
// that nothing of the container's can cover (door.OwnPidNSProc, made at
// the stage's start).
func sameProgram(pid int, exe int, argv []string) error {
	proc, err := door.OwnPidNSProc()
	if err != nil {
		return err
	}
	var want, got unix.Stat_t
	if err := unix.Fstat(exe, &want); err != nil {
		return fmt.Errorf("stat the daemon's binary: %w", err)
	}
	if err := unix.Fstatat(proc, strconv.Itoa(pid)+"/exe", &got, 0); err != nil {
		return fmt.Errorf("the new daemon's executable: %w", err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return fmt.Errorf("the program its exec loaded (device %d, inode %d) is not the daemon's binary that was checked (device %d, inode %d): the path was replaced between the check and the exec", got.Dev, got.Ino, want.Dev, want.Ino)
	}
	fd, err := unix.Openat(proc, strconv.Itoa(pid)+"/cmdline", unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("the new daemon's command line: %w", err)
	}
	defer unix.Close(fd)
	wantLine := strings.Join(argv, "\x00") + "\x00"
	buf := make([]byte, len(wantLine)+1)
	n := 0
	for n < len(buf) {
		k, err := unix.Read(fd, buf[n:])
		if err != nil {
			return fmt.Errorf("the new daemon's command line: %w", err)
		}
		if k == 0 {
			break
		}
		n += k
	}
	if string(buf[:n]) != wantLine {
		return fmt.Errorf("the new daemon runs with another command line than the daemon's (%s): the path was replaced by a script between the check and the exec", mounts.Escape(strings.ReplaceAll(string(buf[:n]), "\x00", " ")))
	}
	return nil
}
