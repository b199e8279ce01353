package units

// The daemon's address-space and data limits, set on the new daemon
// between its exec and its first instruction rather than on the spawner's
// stage before the fork: a Go process reserves more address space (about
// 1.2 GB) than many such limits allow, so the stage, held to them, fails
// at its next new mapping (a new OS thread's stack, say) if it makes one
// before the exec, after the old daemon was killed.

import (
	"errors"
	"fmt"

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

// lateLimitsAllowed says why the syscalls of the late limits would not
// run under the daemon's seccomp filters, which the stage's thread (the
// tracer) and the new daemon (ptrace(PTRACE_TRACEME)) run under by then,
// or returns nil. Judged before the kill.
func lateLimitsAllowed(d *Daemon) error {
	if len(lateLimits(d)) == 0 || len(d.SeccompFilters) == 0 {
		return nil
	}
	if auditArchNative == 0 {
		return errors.New("its filters cannot be judged on this architecture")
	}
	for _, call := range []struct {
		name string
		nr   uint32
		args [6]uint64
	}{
		{"ptrace(PTRACE_TRACEME)", unix.SYS_PTRACE, [6]uint64{unix.PTRACE_TRACEME}},
		{"wait4", unix.SYS_WAIT4, [6]uint64{1}},
		{"prlimit64", unix.SYS_PRLIMIT64, [6]uint64{1, unix.RLIMIT_AS}},
		{"prlimit64", unix.SYS_PRLIMIT64, [6]uint64{1, unix.RLIMIT_DATA}},
		{"ptrace(PTRACE_DETACH)", unix.SYS_PTRACE, [6]uint64{unix.PTRACE_DETACH, 1}},
	} {
		if err := seccompAllows(d.SeccompFilters, seccompData{Nr: call.nr, Arch: auditArchNative, Args: call.args}); err != nil {
			return fmt.Errorf("%s: %w", call.name, err)
		}
	}
	return nil
}

// setLateLimits sets the late limits on the new daemon pid, started
// traced (PTRACE_TRACEME) by the calling thread: it waits for the stop
// at the daemon's exec, sets the limits and lets it go. The daemon runs
// no instruction of its own before.
func setLateLimits(pid int, late map[int]unix.Rlimit) error {
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		return fmt.Errorf("wait for the new daemon's exec: %w", err)
	}
	if !ws.Stopped() || ws.StopSignal() != unix.SIGTRAP {
		return fmt.Errorf("the new daemon did not stop at its exec (status %#x)", uint32(ws))
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
